# Sourced by the benchmark scripts: the binaries, psql, and a server on a fresh database.
#
# The binaries are built from this tree (into CARGO_TARGET_DIR when set) unless AIPM_BIN and
# LOAD_BIN name others (to measure another build in the same run, e.g. before and after a
# change).

PG=${PG:-postgres://postgres@127.0.0.1:5432}
if [ -n "${AIPM_BIN:-}" ] && [ -n "${LOAD_BIN:-}" ]; then
  AIPM=$AIPM_BIN
  LOAD=$LOAD_BIN
else
  cargo build --release -p api -p integration-tests --bin aipm --bin aipm-load
  AIPM=${CARGO_TARGET_DIR:-target}/release/aipm
  LOAD=${CARGO_TARGET_DIR:-target}/release/aipm-load
fi

psql_do() { psql -h 127.0.0.1 -U postgres -d "$1" -qAtc "$2"; }

# serve <database> <port> [VAR=value ...]: a server on a fresh database with the given
# environment, and an admin key KEY (id KEY_ID) of tenant `bench`. The benchmarks measure
# the server, not one key's budget: the key gets a limit it never reaches (the limiter still
# runs on every request) unless LIMIT_KEY=no. The NATS feed is off unless NATS_URL is
# among the variables. Sets SERVER to the server's pid.
serve() {
  local db=$1 port=$2
  shift 2
  psql_do postgres "drop database if exists $db with (force)"
  env NATS_URL= DATABASE_URL="$PG/$db" AIPM_LISTEN="127.0.0.1:$port" RUST_LOG=${RUST_LOG:-warn} "$@" \
    "$AIPM" serve &
  SERVER=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local created
  created=$(DATABASE_URL="$PG/$db" "$AIPM" keys create --tenant bench --role admin --name load)
  KEY=$(echo "$created" | tail -n 1)
  KEY_ID=$(echo "$created" | sed -n 's/^key id: //p')
  if [ "${LIMIT_KEY:-yes}" = yes ]; then
    curl -sf -X PUT "http://127.0.0.1:$port/v1/keys/$KEY_ID/rate-limit" -H "Authorization: Bearer $KEY" \
      -H 'Content-Type: application/json' -d '{"requests_per_second":1000000,"burst":1000000}' >/dev/null
  fi
}

stop() {
  if [ -n "${SERVER:-}" ]; then
    kill "${SERVER_PROC:-$SERVER}" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
    SERVER_PROC=""
  fi
}

# serve_existing <database> <port> [VAR=value ...]: a server on a database that `serve` set up
# earlier (not dropped; KEY from then still holds), under `/usr/bin/time -v -o $TIME_OUT` when
# TIME_OUT is set, so that its peak resident memory can be read once it has stopped. SERVER is
# the pid to wait for; SERVER_PROC the server's own, which `stop` signals.
serve_existing() {
  local db=$1 port=$2
  shift 2
  local timed=()
  [ -n "${TIME_OUT:-}" ] && timed=(/usr/bin/time -v -o "$TIME_OUT")
  env NATS_URL= DATABASE_URL="$PG/$db" AIPM_LISTEN="127.0.0.1:$port" RUST_LOG=${RUST_LOG:-warn} "$@" \
    "${timed[@]}" "$AIPM" serve &
  SERVER=$!
  SERVER_PROC=$SERVER
  if [ -n "${TIME_OUT:-}" ]; then
    for _ in $(seq 1 50); do SERVER_PROC=$(pgrep -P "$SERVER" || true); [ -n "$SERVER_PROC" ] && break; sleep 0.02; done
  fi
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
}
