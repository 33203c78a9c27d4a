#!/usr/bin/env bash
# A bulk job of 10,000 items and what it does to ordinary commands meanwhile ("Bulk jobs"
# in BENCHMARKS.md): each run creates 10,000 prompts, measures POST /v1/prompts with 8
# closed-loop clients alone (the baseline), then again while a job tags all 10,000 prompts,
# and reports the job's items/s. RUNS runs on one server; results are appended to
# bench-results/bulk.jsonl.
#
#   tests/bench/bulk.sh          (release binaries are built first)
#   RUNS=5 PROMPTS=10000 DURATION=10 tests/bench/bulk.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18085
URL=http://127.0.0.1:$PORT
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/bulk.jsonl
. tests/bench/common.sh
trap stop EXIT
export RUST_LOG=error
RUNS=${RUNS:-3}
PROMPTS=${PROMPTS:-10000}
DURATION=${DURATION:-10}

serve aipm_bench_bulk $PORT
for run in $(seq 1 "$RUNS"); do
  echo "== run $run"
  $LOAD bulk --url $URL --key "$KEY" --prompts "$PROMPTS" --clients 8 --duration "$DURATION" --json "$JSON"
done
