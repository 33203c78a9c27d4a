#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document with schemathesis: starts `aipm` on a fresh
# database with a seeded tenant (admin key, a category, a prompt with versions and a label, a
# provider with a priced model, a configuration key with a schema and a value, a flag) and
# runs every check against every operation with a bounded number of examples and a fixed
# seed. Fails on any 5xx and on any response the document does not describe.
#
#   tests/fuzz/run.sh                 # defaults below
#   FUZZ_MAX_EXAMPLES=200 FUZZ_SEED=7 tests/fuzz/run.sh
#
# Needs python3 (with venv), PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-30}"
SEED="${FUZZ_SEED:-20261127}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="$TARGET_DIR/fuzz-venv"
POSTGRES="${AIPM_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
DATABASE="aipm_fuzz_$$"
REPORT_DIR="$TARGET_DIR/fuzz-report"

log() { printf '== %s\n' "$*"; }

# The virtual environment is kept under target/ and reused while it has the pinned version.
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

log "building aipm"
cargo build --quiet --bin aipm --bin aipm-load
AIPM="$TARGET_DIR/debug/aipm"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
export DATABASE_URL="$POSTGRES/$DATABASE"
SERVER_LOG="$TARGET_DIR/fuzz-server.log"

SERVER_PID=""
PROVIDER_PID=""
cleanup() {
  for pid in $SERVER_PID $PROVIDER_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  psql "$POSTGRES/postgres" -qc "drop database if exists \"$DATABASE\" with (force)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting aipm on $BASE (database $DATABASE)"
# One client sends thousands of requests, many of them without a valid key on purpose: the
# per-key rate limit and the per-address brute-force limit would answer them 429 (which the
# document allows) instead of exercising the API. Their own tests cover those limits.
# Nor does it probe providers in the background: the fuzzer registers providers at URLs it
# makes up, which must not be called.
AIPM_RATE_LIMIT_RPS=0 AIPM_AUTH_FAILURE_BURST=0 AIPM_HEALTH_PROBER=false AIPM_EXPORT_DIR="$TARGET_DIR/fuzz-exports" \
  AIPM_LISTEN="127.0.0.1:$PORT" RUST_LOG="${RUST_LOG:-warn}" "$AIPM" serve >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
  curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG"; echo "aipm exited" >&2; exit 1; }
  sleep 0.5
done
curl -sf "$BASE/readyz" >/dev/null || { cat "$SERVER_LOG"; echo "aipm did not become ready" >&2; exit 1; }

# Runs and conversations call the seeded model: a fake provider (OpenAI's protocol) that
# answers at once, so that they reach their answers rather than the network.
log "starting a fake model provider"
LLM_SECRET_FILE="$TARGET_DIR/fuzz-llm.key"
echo "fuzz-llm-secret" >"$LLM_SECRET_FILE"
rm -f "$TARGET_DIR/fuzz-provider.url"
"$TARGET_DIR/debug/aipm-load" fake-provider --api-key fuzz-llm-secret >"$TARGET_DIR/fuzz-provider.url" &
PROVIDER_PID=$!
for _ in $(seq 1 100); do [ -s "$TARGET_DIR/fuzz-provider.url" ] && break; sleep 0.1; done
LLM_URL="$(head -n 1 "$TARGET_DIR/fuzz-provider.url")/v1"

log "seeding tenant 'fuzz'"
ISSUED=$("$AIPM" keys create --tenant fuzz --role admin --name fuzz)
KEY=$(tail -n 1 <<<"$ISSUED")
AIPM_FUZZ_KEY_ID=$(sed -n 's/^key id: //p' <<<"$ISSUED")
api() { # method path [json body] -> response body; fails on a non-2xx answer
  curl -sS --fail-with-body -X "$1" "$BASE$2" -H "Authorization: Bearer $KEY" \
    -H "Content-Type: application/json" ${3:+-d "$3"}
}
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
CATEGORY_ID=$(api POST /v1/categories '{"name":"support"}' | field id)
PROMPT_ID=$(api POST /v1/prompts "{\"name\":\"support-reply\",\"category\":\"$CATEGORY_ID\",\"tags\":[\"support\"]}" | field id)
api POST "/v1/prompts/$PROMPT_ID/versions" '{"template":"Answer {{customer}}.","model":"openai/gpt-4o-mini","params":{"temperature":0.2}}' >/dev/null
api POST "/v1/prompts/$PROMPT_ID/versions" '{"template":"Answer {{customer}} about {{topic}}."}' >/dev/null
api PUT "/v1/prompts/$PROMPT_ID/labels/production" '{"version":2}' >/dev/null
AIPM_FUZZ_PROVIDER_ID=$(api POST /v1/providers "{\"name\":\"openai\",\"kind\":\"openai\",\"base_url\":\"$LLM_URL\",\"credential_ref\":\"file:$LLM_SECRET_FILE\"}" | field id)
AIPM_FUZZ_MODEL_ID=$(api POST /v1/models '{"provider":"openai","model_id":"gpt-4o-mini","capabilities":["chat"]}' | field id)
api POST "/v1/models/$AIPM_FUZZ_MODEL_ID/prices" '{"effective_from":"2026-01-01T00:00:00Z","input_per_mtok":"0.15","output_per_mtok":"0.60","currency":"USD"}' >/dev/null
AIPM_FUZZ_CONFIG_KEY=limits.max_output_tokens
api PUT "/v1/config-schemas/$AIPM_FUZZ_CONFIG_KEY" '{"schema":{"type":"integer","minimum":1},"reason":"seed"}' >/dev/null
api PUT "/v1/config/$AIPM_FUZZ_CONFIG_KEY" '{"value":4000,"reason":"seed"}' >/dev/null
AIPM_FUZZ_FLAG_KEY=checkout.new_flow
api PUT "/v1/flags/$AIPM_FUZZ_FLAG_KEY" '{"enabled":true,"rollout_percent":25,"reason":"seed"}' >/dev/null
export AIPM_FUZZ_KEY_ID AIPM_FUZZ_PROVIDER_ID AIPM_FUZZ_MODEL_ID AIPM_FUZZ_CONFIG_KEY AIPM_FUZZ_FLAG_KEY

log "fuzzing $BASE/openapi.json: $MAX_EXAMPLES examples per operation, seed $SEED"
SCHEMATHESIS_HOOKS=tests/fuzz/hooks.py "$VENV/bin/schemathesis" --config-file tests/fuzz/schemathesis.toml run "$BASE/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 2 \
  --no-color \
  --report junit --report-dir "$REPORT_DIR"
