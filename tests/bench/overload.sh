#!/usr/bin/env bash
# Runs the overload and auth-cost measurements in BENCHMARKS.md ("Overload" and "What
# authentication and rate limiting cost"). Results are appended to bench-results/overload.jsonl.
#
#   tests/bench/overload.sh                 (release binaries are built first)
#   RATES=4000,8000 tests/bench/overload.sh (offered rates; default: 2x and 4x the capacity measured first)
#   PARTS=auth tests/bench/overload.sh      (only one part: overload or auth)
set -euo pipefail
cd "$(dirname "$0")/../.."
PG=postgres://postgres@127.0.0.1:5432
PORT=18081
URL=http://127.0.0.1:$PORT
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/overload.jsonl

cargo build --release -p api -p integration-tests --bin aipm --bin aipm-load
AIPM=target/release/aipm
LOAD=target/release/aipm-load
psql_do() { psql -h 127.0.0.1 -U postgres -d "$1" -qAtc "$2"; }

# serve <database> [VAR=value ...]: a server on a fresh database, with an admin key KEY
# whose own rate limit is out of reach unless LIMIT_KEY=no.
serve() {
  local db=$1; shift
  psql_do postgres "drop database if exists $db with (force)"
  env DATABASE_URL=$PG/$db AIPM_LISTEN=127.0.0.1:$PORT RUST_LOG=error "$@" $AIPM serve 2>>"$OUT/server.log" &
  SERVER=$!
  for _ in $(seq 1 100); do curl -sf $URL/healthz >/dev/null && break; sleep 0.1; done
  local created
  created=$(DATABASE_URL=$PG/$db $AIPM keys create --tenant bench --role admin --name load)
  KEY=$(echo "$created" | tail -n 1)
  KEY_ID=$(echo "$created" | sed -n 's/^key id: //p')
  if [ "${LIMIT_KEY:-yes}" = yes ]; then
    curl -sf -X PUT "$URL/v1/keys/$KEY_ID/rate-limit" -H "Authorization: Bearer $KEY" \
      -H 'Content-Type: application/json' -d '{"requests_per_second":1000000,"burst":1000000}' >/dev/null
  fi
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }

PARTS=${PARTS:-overload auth}
if [[ " $PARTS " == *" overload "* ]]; then
echo "== capacity: create-prompts, 64 closed-loop clients"
serve aipm_bench_overload
capacity=$($LOAD http --url $URL --key "$KEY" --scenario create-prompts --clients 64 --duration 10 --warmup 2 \
  --json "$JSON" | awk '$1 == 64 { print $3 }')
stop
echo "capacity: $capacity req/s"
RATES=${RATES:-$(awk -v c="$capacity" 'BEGIN { printf "%d,%d", 2 * c, 4 * c }')}

for in_flight in ${IN_FLIGHT:-256 128 64 0}; do
  echo "== overload at $RATES req/s, AIPM_MAX_IN_FLIGHT=$in_flight (0: no shedding)"
  serve aipm_bench_overload AIPM_MAX_IN_FLIGHT=$in_flight
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
    serve aipm_bench_overload
  else
    LIMIT_KEY=no serve aipm_bench_overload AIPM_RATE_LIMIT_RPS=0
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
