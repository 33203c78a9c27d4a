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
PG=postgres://postgres@127.0.0.1:5432
NATS=${NATS:-nats://127.0.0.1:4222}
OUT=bench-results
mkdir -p "$OUT"
: > "$OUT/relay.jsonl"

cargo build --release -p api -p integration-tests --bin aipm --bin aipm-load
AIPM=target/release/aipm
LOAD=target/release/aipm-load
psql_do() { psql -h 127.0.0.1 -U postgres -d "$1" -qAtc "$2"; }

# A server on a fresh database; its feed goes to stream $1 (empty: feed off).
serve() {
  local stream=$1 db=aipm_bench_feed
  psql_do postgres "drop database if exists $db with (force)"
  NATS_URL=${stream:+$NATS} AIPM_NATS_STREAM=${stream:-AIPM_EVENTS} AIPM_NATS_SUBJECT_PREFIX=aipmbench.feed \
    DATABASE_URL=$PG/$db AIPM_LISTEN=127.0.0.1:18080 RUST_LOG=warn $AIPM serve &
  SERVER=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
  KEY=$(DATABASE_URL=$PG/$db $AIPM keys create --tenant bench --role admin --name load | tail -n 1)
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }

echo "== relay throughput"
psql_do postgres "drop database if exists aipm_bench_relay with (force)"
$LOAD relay --nats-url "$NATS" --database-url $PG/aipm_bench_relay --events "$EVENTS" --runs "$RUNS" \
  --json "$OUT/relay.jsonl"

for run in $(seq 1 "$RUNS"); do
  echo "== commands with the feed off and on, then latency: run $run of $RUNS"
  serve ""
  $LOAD http --url http://127.0.0.1:18080 --key "$KEY" --scenario publish-versions --clients 64 \
    --duration "$DURATION" --warmup 2 --json "$OUT/relay.jsonl"
  stop
  stream=AIPM_BENCH_FEED_$run
  serve "$stream"
  $LOAD http --url http://127.0.0.1:18080 --key "$KEY" --scenario publish-versions --clients 64 \
    --duration "$DURATION" --warmup 2 --json "$OUT/relay.jsonl"
  $LOAD relay --nats-url "$NATS" --url http://127.0.0.1:18080 --key "$KEY" --stream "$stream" \
    --rate "$FEED_RATE" --duration "$DURATION" --runs 1 --delete-stream --json "$OUT/relay.jsonl"
  stop
done

for db in aipm_bench_relay aipm_bench_feed; do psql_do postgres "drop database if exists $db with (force)"; done
