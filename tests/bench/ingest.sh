#!/usr/bin/env bash
# Usage ingestion against PostgreSQL's own COPY of the same rows, in the same run ("Usage
# ingestion" in BENCHMARKS.md): 4 clients, 10,000-record batches, 10 s each side, RUNS runs
# on one server. Results are appended to bench-results/ingest.jsonl.
#
#   tests/bench/ingest.sh          (release binaries are built first)
#   RUNS=5 CLIENTS=4 BATCH=10000 DURATION=10 tests/bench/ingest.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18086
URL=http://127.0.0.1:$PORT
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/ingest.jsonl
. tests/bench/common.sh
trap stop EXIT
export RUST_LOG=error
RUNS=${RUNS:-3}

serve aipm_bench_ingest $PORT
for run in $(seq 1 "$RUNS"); do
  echo "== run $run"
  $LOAD ingest --url $URL --key "$KEY" --database-url "$PG/aipm_bench_ingest" --clients "${CLIENTS:-4}" \
    --batch "${BATCH:-10000}" --duration "${DURATION:-10}" --json "$JSON"
done
