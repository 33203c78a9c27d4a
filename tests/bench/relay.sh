#!/usr/bin/env bash
# The NATS feed's benchmarks in BENCHMARKS.md, each with a same-run baseline:
# - relay throughput: a 200,000-event log published by the relay, against raw JetStream
#   publishing of the same messages from the load generator;
# - commands over HTTP (publish-versions, 64 clients) with the feed off, then on;
# - commit→subscriber latency at a steady command rate, against raw JetStream
#   publish→subscriber latency at the same rate.
#
#   tests/bench/relay.sh [runs]      (default 3 runs; results in bench-results/relay.jsonl)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
DURATION=${DURATION:-10}
EVENTS=${EVENTS:-200000}
FEED_RATE=${FEED_RATE:-500}
NATS=${NATS:-nats://127.0.0.1:4222}
PORT=18080
OUT=bench-results
mkdir -p "$OUT"
: > "$OUT/relay.jsonl"
. tests/bench/common.sh

# Each server gets a stream of this invocation's own: a stream left by an earlier run that
# failed holds another database's events, which a relay refuses to extend.
STREAMS=()
cleanup() {
  stop
  for stream in "${STREAMS[@]}"; do "$LOAD" delete-stream --nats-url "$NATS" --stream "$stream" || true; done
  for db in aipm_bench_relay aipm_bench_feed; do psql_do postgres "drop database if exists $db with (force)"; done
}
trap cleanup EXIT

echo "== relay throughput"
psql_do postgres "drop database if exists aipm_bench_relay with (force)"
"$LOAD" relay --nats-url "$NATS" --database-url "$PG/aipm_bench_relay" --events "$EVENTS" --runs "$RUNS" \
  --json "$OUT/relay.jsonl"

for run in $(seq 1 "$RUNS"); do
  echo "== commands with the feed off and on, then latency: run $run of $RUNS"
  serve aipm_bench_feed $PORT
  "$LOAD" http --url http://127.0.0.1:$PORT --key "$KEY" --scenario publish-versions --clients 64 \
    --duration "$DURATION" --warmup 2 --json "$OUT/relay.jsonl"
  stop
  stream=AIPM_BENCH_FEED_$$_$run
  STREAMS+=("$stream")
  # No shedding: the latency run offers FEED_RATE commands a second open-loop, which a slow
  # machine may answer more slowly than they arrive; they must queue, not fail.
  serve aipm_bench_feed $PORT NATS_URL="$NATS" AIPM_NATS_STREAM="$stream" AIPM_NATS_SUBJECT_PREFIX="aipmbench.feed$$.$run" \
    AIPM_MAX_IN_FLIGHT=0
  "$LOAD" http --url http://127.0.0.1:$PORT --key "$KEY" --scenario publish-versions --clients 64 \
    --duration "$DURATION" --warmup 2 --json "$OUT/relay.jsonl"
  "$LOAD" relay --nats-url "$NATS" --url http://127.0.0.1:$PORT --key "$KEY" --stream "$stream" \
    --rate "$FEED_RATE" --duration "$DURATION" --runs 1 --json "$OUT/relay.jsonl"
  stop
done
