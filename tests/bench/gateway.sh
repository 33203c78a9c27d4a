#!/usr/bin/env bash
# The model gateway's overhead over the provider ("The model gateway" in BENCHMARKS.md):
# prompt runs through aipm (`POST /v1/prompts/{id}/run`) against the same chat completion sent
# straight to a fake provider that answers after LATENCY_MS, CLIENTS closed-loop clients on
# each side, RUNS runs of DURATION seconds per side, both sides in every run. Results are
# appended to bench-results/gateway.jsonl; the load generator fails when a request failed.
#
#   tests/bench/gateway.sh                        (release binaries are built first)
#   RUNS=5 CLIENTS=64 DURATION=10 LATENCY_MS=50 tests/bench/gateway.sh
#   FEATURES=64 tests/bench/gateway.sh            (client i runs for feature-<i mod 64>)
#   AIPM_BIN=… LOAD_BIN=… tests/bench/gateway.sh  (another build's binaries; see common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18087
URL=http://127.0.0.1:$PORT
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-10}
LATENCY_MS=${LATENCY_MS:-50}
FEATURES=${FEATURES:-0}
DB=aipm_bench_gateway
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/gateway.jsonl
. tests/bench/common.sh
export RUST_LOG=error

WORK=$(mktemp -d)
PROVIDER=""
cleanup() {
  stop
  if [ -n "$PROVIDER" ]; then
    kill "$PROVIDER" 2>/dev/null || true
    wait "$PROVIDER" 2>/dev/null || true
  fi
  psql_do postgres "drop database if exists $DB with (force)" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if pgrep -x rustc >/dev/null; then
  echo "warning: a compiler is running; its load makes these figures meaningless" >&2
fi

# The provider's key exists only for this run, in a file aipm reads it from (credential_ref).
PROVIDER_KEY=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
echo "$PROVIDER_KEY" > "$WORK/provider.key"
"$LOAD" fake-provider --port 0 --latency-ms "$LATENCY_MS" --api-key "$PROVIDER_KEY" > "$WORK/provider.url" &
PROVIDER=$!
for _ in $(seq 1 100); do [ -s "$WORK/provider.url" ] && break; sleep 0.1; done
PROVIDER_URL=$(head -n 1 "$WORK/provider.url")/v1
[ "$PROVIDER_URL" != /v1 ] || { echo "the fake provider did not start" >&2; exit 1; }

# No shedding: a client sends its next run the moment the last one answered, so 64 clients
# can meet the default limit of 64 requests in flight, and a shed request would end the
# measurement. No retries: a failed provider call must show as an error, not as a slow run.
# No health prober: it would probe the fake provider, which has no model list, mid-run.
serve $DB "$PORT" AIPM_MAX_IN_FLIGHT=0 AIPM_GATEWAY_RETRIES=0 AIPM_HEALTH_PROBER=false

AUTH="Authorization: Bearer $KEY"
JSON_TYPE="Content-Type: application/json"
post() { curl -sSf -X "$1" "$URL$2" -H "$AUTH" -H "$JSON_TYPE" -d "$3"; }
post POST /v1/providers "{\"name\":\"fake\",\"kind\":\"openai\",\"base_url\":\"$PROVIDER_URL\",
  \"credential_ref\":\"file:$WORK/provider.key\"}" > /dev/null
post POST /v1/models '{"provider":"fake","model_id":"echo-1","context_window":8192}' > /dev/null
post POST /v1/models/fake%2Fecho-1/prices '{"effective_from":"2026-01-01T00:00:00Z",
  "input_per_mtok":"0.20","output_per_mtok":"0.80","currency":"USD"}' > /dev/null
PROMPT=$(post POST /v1/prompts '{"name":"gateway-bench"}' | jq -r .id)
post POST "/v1/prompts/$PROMPT/versions" \
  '{"template":"In one sentence, why visit {{city}}?","model":"fake/echo-1"}' > /dev/null
post PUT "/v1/prompts/$PROMPT/labels/production" '{"version":1}' > /dev/null

echo "== $RUNS runs, $CLIENTS clients, ${DURATION}s per side, provider latency ${LATENCY_MS} ms, $FEATURES features"
"$LOAD" gateway --url "$URL" --key "$KEY" --prompt "$PROMPT" --variables '{"city":"Lisbon"}' \
  --provider-url "$PROVIDER_URL" --provider-key "$PROVIDER_KEY" --model-id echo-1 \
  --message "In one sentence, why visit Lisbon?" --features "$FEATURES" --clients "$CLIENTS" \
  --duration "$DURATION" --warmup 2 --runs "$RUNS" --json "$JSON"
