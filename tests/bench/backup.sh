#!/usr/bin/env bash
# `aipm backup` of a seeded log against PostgreSQL's own COPY of the same rows to a file (the
# ceiling), measured in the same run, RUNS times each; then one `aipm restore` of the backup
# into a new database (append, rebuild every read model, verify the audit chain).
#
#   tests/bench/backup.sh [RUNS]      EVENTS=1000000 and JOBS="1 2 4" (the --jobs to time) by default;
#                                     RESTORE=no skips the restore
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
EVENTS=${EVENTS:-1000000}
JOBS=${JOBS:-1 2 4}
source tests/bench/common.sh

DB=aipm_bench_backup
RESTORED=aipm_bench_restored
DIR=$(mktemp -d)
cleanup() {
  rm -rf "$DIR"
  for db in $DB $RESTORED; do psql_do postgres "drop database if exists $db with (force)"; done
}
trap cleanup EXIT

psql_do postgres "drop database if exists $DB with (force)"
"$LOAD" seed-events --database-url "$PG/$DB" --events "$EVENTS" >/dev/null
DATABASE_URL="$PG/$DB" NATS_URL= "$AIPM" replay rebuild >/dev/null 2>&1
COUNT=$(psql_do $DB "select count(*) from events")

seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: >"$DIR/copy"
for jobs in $JOBS; do : >"$DIR/backup-$jobs"; done
for run in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  psql -h 127.0.0.1 -U postgres -d $DB -qc \
    "\\copy (select * from events order by transaction_id, position) to '$DIR/copy.csv' (format csv)"
  copy=$(seconds "$start" "$(date +%s.%N)")
  echo "$copy" >>"$DIR/copy"
  line="run $run ($COUNT events): COPY to a file ${copy}s"
  for jobs in $JOBS; do
    start=$(date +%s.%N)
    DATABASE_URL="$PG/$DB" NATS_URL= "$AIPM" backup --out "$DIR/log.ndjson" --jobs "$jobs" >/dev/null
    backup=$(seconds "$start" "$(date +%s.%N)")
    echo "$backup" >>"$DIR/backup-$jobs"
    line="$line, aipm backup --jobs $jobs ${backup}s"
  done
  echo "$line"
done
copy=$(median <"$DIR/copy")
for jobs in $JOBS; do
  backup=$(median <"$DIR/backup-$jobs")
  awk -v n="$COUNT" -v c="$copy" -v b="$backup" -v j="$jobs" 'BEGIN {
    printf "median of '"$RUNS"' runs, %d events: COPY %.0f events/s, aipm backup --jobs %d %.0f events/s (%.0f%% of COPY)\n",
      n, n / c, j, n / b, 100 * c / b }'
done
ls -l "$DIR/log.ndjson" "$DIR/copy.csv" | awk '{ print $5, $9 }'

if [ "${RESTORE:-yes}" = yes ]; then
  psql_do postgres "drop database if exists $RESTORED with (force)"
  start=$(date +%s.%N)
  DATABASE_URL="$PG/$RESTORED" NATS_URL= "$AIPM" restore --in "$DIR/log.ndjson"
  echo "aipm restore: $(seconds "$start" "$(date +%s.%N)")s wall"
fi
