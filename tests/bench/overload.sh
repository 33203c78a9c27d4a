#!/usr/bin/env bash
# Runs the overload and auth-cost measurements in BENCHMARKS.md ("Overload" and "What
# authentication and rate limiting cost"). Results are appended to bench-results/overload.jsonl.
#
#   tests/bench/overload.sh                 (release binaries are built first)
#   RATES=4000,8000 tests/bench/overload.sh (offered rates; default: 2x and 4x the capacity measured first)
#   PARTS=auth tests/bench/overload.sh      (only one part: overload or auth)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18081
URL=http://127.0.0.1:$PORT
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/overload.jsonl
. tests/bench/common.sh
trap stop EXIT
export RUST_LOG=error

PARTS=${PARTS:-overload auth}
if [[ " $PARTS " == *" overload "* ]]; then
echo "== capacity: create-prompts, 64 closed-loop clients"
serve aipm_bench_overload $PORT
capacity=$($LOAD http --url $URL --key "$KEY" --scenario create-prompts --clients 64 --duration 10 --warmup 2 \
  --json "$JSON" | awk '$1 == 64 { print $3 }')
stop
echo "capacity: $capacity req/s"
RATES=${RATES:-$(awk -v c="$capacity" 'BEGIN { printf "%d,%d", 2 * c, 4 * c }')}

for in_flight in ${IN_FLIGHT:-256 128 64 0}; do
  echo "== overload at $RATES req/s, AIPM_MAX_IN_FLIGHT=$in_flight (0: no shedding)"
  serve aipm_bench_overload $PORT AIPM_MAX_IN_FLIGHT=$in_flight
  echo "{\"kind\":\"overload-config\",\"max_in_flight\":$in_flight}" >> "$JSON"
  $LOAD overload --url $URL --key "$KEY" --scenario create-prompts --rates "$RATES" --duration 10 \
    --server-pid "$SERVER" --json "$JSON"
  stop
done

fi

# The read with the limiter on (the key's own, unreachable limit) and off (no default
# and no limit of its own), on fresh servers, in alternating order.
read_with_limiter() {
  if [ "$1" = on ]; then
    serve aipm_bench_overload $PORT
  else
    LIMIT_KEY=no serve aipm_bench_overload $PORT AIPM_RATE_LIMIT_RPS=0
  fi
  echo "{\"kind\":\"auth-config\",\"run\":$run,\"limiter\":\"$1\"}" >> "$JSON"
  $LOAD http --url $URL --key "$KEY" --scenario read-prompt --clients 16 --duration 10 --warmup 2 --json "$JSON"
  if [ "$1" = on ]; then
    $LOAD http --url $URL --key "$KEY" --scenario healthz --clients 16 --duration 10 --warmup 2 --json "$JSON"
    $LOAD auth-cost --database-url $PG/aipm_bench_overload --key "$KEY" --json "$JSON"
  fi
  stop
}
if [[ " $PARTS " == *" auth "* ]]; then
  echo "== the cost of authentication and rate limiting: 16 clients, 3 pairs in alternating order"
  for run in 1 2 3; do
    if [ $((run % 2)) = 1 ]; then order="on off"; else order="off on"; fi
    for limiter in $order; do read_with_limiter $limiter; done
  done
fi
psql_do postgres "drop database if exists aipm_bench_overload with (force)"
