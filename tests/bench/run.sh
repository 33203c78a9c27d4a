#!/usr/bin/env bash
# Runs the benchmarks in BENCHMARKS.md: the raw PostgreSQL insert ceiling (pgbench) and aipm
# over HTTP at the same client counts, in the same run, several times; then publishing to
# a prompt with a long history, rebuilding a projection from a 1,000,000-event log, and the
# NATS feed (relay throughput and latency against raw JetStream, commands with it on and off),
# and the HTTP live feed's reading rate.
#
#   tests/bench/run.sh [runs]        (default 3 runs; results in bench-results/)
#   AIPM_BIN=… LOAD_BIN=… tests/bench/run.sh    (another build's binaries; see common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
CLIENTS=${CLIENTS:-1,8,64}
DURATION=${DURATION:-10}
OUT=bench-results
mkdir -p "$OUT"
: > "$OUT/http.jsonl"; : > "$OUT/pgbench.txt"; : > "$OUT/other.jsonl"
. tests/bench/common.sh
trap stop EXIT
# A fresh database for each server start, so runs do not inherit each other's data. The
# NATS feed is off here; tests/bench/relay.sh measures it and its cost.

for run in $(seq 1 "$RUNS"); do
  echo "== run $run of $RUNS"
  # Raw ceiling: pgbench with the same client counts, against a table shaped like events.
  psql_do postgres "drop database if exists aipm_bench_pg with (force)"
  psql_do postgres "create database aipm_bench_pg"
  psql_do aipm_bench_pg "create table bench_event (
      aggregate_type text not null, aggregate_id text not null, sequence bigint not null,
      event_type text not null, event_version text not null, payload jsonb not null, metadata jsonb not null,
      tenant_id text not null, position bigint generated always as identity,
      transaction_id xid8 not null default pg_current_xact_id(), recorded_at timestamptz not null default now(),
      primary key (aggregate_type, aggregate_id, sequence));
    create unique index on bench_event (transaction_id, position);"
  for c in ${CLIENTS//,/ }; do
    tps=$(pgbench -n -h 127.0.0.1 -U postgres -c "$c" -j 2 -T "$DURATION" -f tests/bench/pgbench-event-insert.sql aipm_bench_pg 2>/dev/null |
      sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    echo "run=$run clients=$c tps=$tps" | tee -a "$OUT/pgbench.txt"
  done

  for scenario in create-prompts publish-versions; do
    serve aipm_bench_http 18080
    $LOAD http --url http://127.0.0.1:18080 --key "$KEY" --scenario $scenario --clients "$CLIENTS" \
      --duration "$DURATION" --warmup 2 --json "$OUT/http.jsonl"
    stop
  done
  # The same creates, each with a fresh Idempotency-Key.
  serve aipm_bench_http 18080
  $LOAD http --url http://127.0.0.1:18080 --key "$KEY" --scenario create-prompts --idempotency-keys \
    --clients "$CLIENTS" --duration "$DURATION" --warmup 2 --json "$OUT/http.jsonl"
  stop
done

echo "== publishing to a prompt with 1,000 versions"
serve aipm_bench_hot 18080
$LOAD hot-prompt --url http://127.0.0.1:18080 --key "$KEY" --versions 1000 --samples 300 --database-url $PG/aipm_bench_hot --json "$OUT/other.jsonl"
stop

echo "== rebuilding 1,000,000 events"
psql_do postgres "drop database if exists aipm_bench_rebuild with (force)"
$LOAD seed-events --database-url $PG/aipm_bench_rebuild --events 1000000
$LOAD rebuild --database-url $PG/aipm_bench_rebuild --runs 3 --json "$OUT/other.jsonl"

stop
tests/bench/relay.sh "$RUNS"
tests/bench/feed.sh "$RUNS"

for db in aipm_bench_pg aipm_bench_http aipm_bench_hot aipm_bench_rebuild; do psql_do postgres "drop database if exists $db with (force)"; done
