"""schemathesis hooks for tests/fuzz/run.sh.

They make the fuzzer act as a correct client where the API's contract rests on state that
a schema cannot describe; everything else it generates is sent as generated.
"""

import json
import os
import re
import uuid

import schemathesis
from hypothesis.internal import lambda_sources

# Hypothesis names a filtered strategy by parsing the source of the module that defines the
# filter. Deep in the stack, CPython 3.11's parser fails on schemathesis's coverage module
# ("AST constructor recursion depth mismatch") and the run reports an error of the tool's own.
# The name only labels the strategy; the values drawn are the same without it.
lambda_sources.lambda_description = lambda f: "lambda: <filter>"

VALID_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
FUZZ_KEY_ID = os.environ["AIPM_FUZZ_KEY_ID"]
FUZZ_MODEL_ID = os.environ["AIPM_FUZZ_MODEL_ID"]
FUZZ_PROVIDER_ID = os.environ["AIPM_FUZZ_PROVIDER_ID"]
FUZZ_CONFIG_KEY = os.environ["AIPM_FUZZ_CONFIG_KEY"]
FUZZ_FLAG_KEY = os.environ["AIPM_FUZZ_FLAG_KEY"]


@schemathesis.hook
def before_call(context, case, kwargs):
    # Negative cases are sent as generated: a change here would make schemathesis judge the
    # case anew (and, say, send a header the case is about leaving out). A 422 for a reused
    # key is a rejection, which is what a negative case expects anyway.
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    # An Idempotency-Key names one request: the same key on a different request is a 422
    # (`idempotency-key-reused`), as it must be. The generator draws keys from a small space
    # and would reuse them across requests, so a key gets a unique suffix and stays valid.
    for name, value in list((case.headers or {}).items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and VALID_IDEMPOTENCY_KEY.fullmatch(value):
            case.headers[name] = f"{value}-{uuid.uuid4().hex}"[-255:]
    # Stateful tests find every key of the tenant in GET /v1/keys, the fuzzer's own among
    # them; revoking that one would leave the rest of the run with 401s.
    if (
        case.method.upper() == "DELETE"
        and case.path == "/v1/keys/{key_id}"
        and (case.path_parameters or {}).get("key_id") == FUZZ_KEY_ID
    ):
        case.path_parameters["key_id"] = str(uuid.uuid4())
    # A model, provider, configuration key or flag named in a path is one of the seeded tenant's:
    # a generated name only ever meets a 404 (which the tests cover), never the rules behind it.
    parameters = case.path_parameters or {}
    if "model" in parameters:
        parameters["model"] = FUZZ_MODEL_ID
    if "provider_id" in parameters:
        parameters["provider_id"] = FUZZ_PROVIDER_ID
    if "key" in parameters:
        parameters["key"] = FUZZ_FLAG_KEY if case.path.startswith("/v1/flags/") else FUZZ_CONFIG_KEY


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    # Usage records as NDJSON: each generated record on a line of its own.
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()
