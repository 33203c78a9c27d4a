#!/usr/bin/env bash
# Rebuilding the catalog from a 1,000,000-event log: the old rebuild (one transaction over
# the emptied live tables, `--in-place`) and the rebuild beside the live tables with its
# swap, in the same run, alternating, so that both meet the same machine. Each run also
# reports how long the live tables were locked, the slowest read of them made meanwhile, and
# the longest time the settled end of the log (what every other projection and feed reads up
# to) stood still. Each run first times, with psql, what PostgreSQL alone needs to read the
# log as the rebuild reads it (its select, copied to /dev/null): no rebuild can beat that.
#
#   tests/bench/rebuild.sh [runs]     (default 3 runs each; results in bench-results/rebuild.jsonl)
#   LOAD_BIN=… tests/bench/rebuild.sh (another build's load generator)
#   BASE_LOAD_BIN=… tests/bench/rebuild.sh
#                                     (instead of the in-place rebuild, the rebuild beside the
#                                      live tables of an earlier build's load generator, so
#                                      that two builds meet the same machine)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
OUT=bench-results
mkdir -p "$OUT"
: > "$OUT/rebuild.jsonl"
PG=${PG:-postgres://postgres@127.0.0.1:5432}
if [ -n "${LOAD_BIN:-}" ]; then
  LOAD=$LOAD_BIN
else
  cargo build --release -p integration-tests --bin aipm-load
  LOAD=${CARGO_TARGET_DIR:-target}/release/aipm-load
fi
psql_do() { psql -h 127.0.0.1 -U postgres -d "$1" -qAtc "$2"; }
trap 'psql_do postgres "drop database if exists aipm_bench_rebuild with (force)"' EXIT
seconds() { local start=$(date +%s.%N); "$@" > /dev/null; echo "$(date +%s.%N) - $start" | bc; }
# The rebuild's own select (projections::global_order, the catalogue's one metadata key).
READ_LOG="select aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text,
    jsonb_strip_nulls(jsonb_build_object('actor_name', metadata -> 'actor_name'))::text, tenant_id,
    transaction_id::text::bigint, position, recorded_at
  from events order by transaction_id, position"
# psql takes a backslash command to the end of its line.
one_line() { tr '\n' ' ' <<< "$1"; }
ceiling() {
  local read
  read=$(seconds psql_do aipm_bench_rebuild "$(one_line "\\copy ($READ_LOG) to '/dev/null'")")
  echo "ceiling: PostgreSQL reads the log in ${read}s ($(echo "1000000 / $read" | bc) events/s)"
}

psql_do postgres "drop database if exists aipm_bench_rebuild with (force)"
$LOAD seed-events --database-url "$PG/aipm_bench_rebuild" --events 1000000
for run in $(seq 1 "$RUNS"); do
  if [ -n "${BASE_LOAD_BIN:-}" ]; then
    echo "== run $run of $RUNS: the earlier build ($BASE_LOAD_BIN), then this one"
    ceiling
    $BASE_LOAD_BIN rebuild --database-url "$PG/aipm_bench_rebuild" --runs 1 --json "$OUT/rebuild.jsonl"
  else
    echo "== run $run of $RUNS: in place, then beside the live tables"
    ceiling
    $LOAD rebuild --database-url "$PG/aipm_bench_rebuild" --runs 1 --in-place --json "$OUT/rebuild.jsonl"
  fi
  $LOAD rebuild --database-url "$PG/aipm_bench_rebuild" --runs 1 --json "$OUT/rebuild.jsonl"
done
