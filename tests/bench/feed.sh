#!/usr/bin/env bash
# How fast one subscriber of the HTTP live feed reads the log from the event table: the
# rate of its first history, and of a subscriber catching up after it fell behind the live
# buffer (the same reads). A log of EVENTS seeded events of one tenant, then one SSE client
# (curl) reading all of them, several times.
#
#   tests/bench/feed.sh [runs]       (default 3 runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
EVENTS=${EVENTS:-200000}
DB=aipm_bench_sse
PORT=18084
. tests/bench/common.sh
cleanup() {
  stop
  psql_do postgres "drop database if exists $DB with (force)"
}
trap cleanup EXIT

# The server is started on the seeded log (not a fresh database).
psql_do postgres "drop database if exists $DB with (force)"
"$LOAD" seed-events --database-url "$PG/$DB" --events "$EVENTS" --tenant bench 2>/dev/null
NATS_URL= DATABASE_URL="$PG/$DB" AIPM_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn "$AIPM" serve &
SERVER=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
KEY=$(DATABASE_URL="$PG/$DB" "$AIPM" keys create --tenant bench --role admin --name feed | tail -n 1)
TOTAL=$(psql_do "$DB" "select count(*) from events where tenant_id = 'bench'")

for run in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  # grep stops reading after the last event; curl then ends on the closed pipe.
  got=$(curl -s -N -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/events/stream" |
    grep -m "$TOTAL" -c '^id: ' || true)
  end=$(date +%s.%N)
  echo "run $run: $got of $TOTAL events in $(echo "$end - $start" | bc) s, $(echo "$got / ($end - $start)" | bc) events/s"
done
