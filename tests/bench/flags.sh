#!/usr/bin/env bash
# Reads from memory against their baselines, in the same run ("Reads from memory" in
# BENCHMARKS.md): evaluate-flag, resolve-label, check-budget and assign-experiment (memory),
# read-prompt (one primary-key read in PostgreSQL) and healthz (the HTTP round trip alone,
# no key), each at 1, 8 and 64 clients, RUNS times in rotating order on one server. Results
# are appended to bench-results/flags.jsonl.
#
#   tests/bench/flags.sh          (release binaries are built first)
#   RUNS=5 DURATION=10 tests/bench/flags.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18084
URL=http://127.0.0.1:$PORT
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/flags.jsonl
. tests/bench/common.sh
trap stop EXIT
export RUST_LOG=error
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}

serve aipm_bench_flags $PORT
scenarios=(evaluate-flag resolve-label check-budget assign-experiment read-prompt healthz)
for run in $(seq 1 "$RUNS"); do
  for i in 0 1 2 3 4 5; do
    scenario=${scenarios[$(((i + run) % 6))]}
    echo "== run $run: $scenario"
    echo "{\"kind\":\"flags-run\",\"run\":$run,\"scenario\":\"$scenario\"}" >> "$JSON"
    $LOAD http --url $URL --key "$KEY" --scenario "$scenario" --clients 1,8,64 --duration "$DURATION" \
      --warmup 2 --json "$JSON"
  done
done
