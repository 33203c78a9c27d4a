#!/usr/bin/env bash
# Exports of 1,000,000 usage records to CSV and XLSX ("Exports" in BENCHMARKS.md), against
# PostgreSQL writing the same rows as CSV itself (`\copy … to /dev/null`), in the same run.
#
# One database: RECORDS usage records of tenant `bench` in 2026-11 (written by one SQL
# statement, not measured; half of them of a model with a price). Then, RUNS times: the COPY
# of the same rows and columns in the same order; a server started and stopped without an
# export (its peak RSS is the baseline); and, for each format, a fresh server on the same
# database under `/usr/bin/time -v` that runs one export of the month, polled every 200 ms
# from the request to `done`. Results are appended to bench-results/export.jsonl.
#
#   tests/bench/export.sh          (release binaries are built first)
#   RUNS=5 RECORDS=1000000 tests/bench/export.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18091
URL=http://127.0.0.1:$PORT
DB=aipm_bench_export
OUT=bench-results
mkdir -p "$OUT"
JSON=$OUT/export.jsonl
WORK=$OUT/export-work
. tests/bench/common.sh
trap 'stop; rm -rf "$WORK"' EXIT
export RUST_LOG=error
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-1000000}
STAMP=$(date -u +%Y-%m-%dT%H:%M:%SZ)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
per_s() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%d", n / s }'; }
peak_kb() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }

# --- The records --------------------------------------------------------------------------
serve $DB $PORT
post() { curl -sf -o /dev/null -X POST "$URL$1" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$2"; }
post /v1/providers '{"name":"openai","kind":"openai","base_url":"https://api.openai.com/v1","credential_ref":"env:OPENAI_API_KEY"}'
post /v1/models '{"provider":"openai","model_id":"gpt-4o-mini"}'
post /v1/models/openai%2Fgpt-4o-mini/prices '{"effective_from":"2026-01-01T00:00:00Z","input_per_mtok":"0.15","output_per_mtok":"0.6","cached_input_per_mtok":"0.075","currency":"USD"}'
echo "== writing $RECORDS usage records"
started=$(now)
psql_do $DB "select usage_partition_for('2026-11-15T00:00:00Z')" >/dev/null
psql_do $DB "
insert into usage_record (tenant_id, record_id, ts, model, prompt_id, prompt_version, prompt_label,
    experiment_id, variant, feature, subject, input_tokens, output_tokens, cached_input_tokens,
    latency_ms, status, metrics, key_id)
select 'bench',
       'rec-' || lpad(g::text, 8, '0'),
       timestamptz '2026-11-01 00:00:00+00' + (g - 1) * (interval '30 days' / $RECORDS),
       (array['openai/gpt-4o-mini', 'openai/gpt-4o-mini', 'anthropic/claude-sonnet-4', 'mistral/mistral-large'])[1 + g % 4],
       case when g % 3 = 0 then null else md5('prompt' || g % 40)::uuid end,
       case when g % 3 = 0 then null else 1 + g % 9 end,
       case when g % 3 = 1 then 'production' end,
       case when g % 5 = 0 then md5('experiment' || g % 2)::uuid end,
       case when g % 5 = 0 then (array['a', 'b', 'c'])[1 + g % 3] end,
       'feature-' || g % 8,
       'user-' || g % 5000,
       200 + g % 3000, 20 + g % 800, g % 500,
       200 + g % 3000,
       case when g % 50 = 0 then 'rate_limited' else 'ok' end,
       jsonb_build_object('rating', g % 5),
       md5('key' || g % 4)::uuid
from generate_series(1, $RECORDS) g"
psql_do $DB "vacuum analyze usage_record"
echo "   $(since "$started") s"
stop

SELECT="select record_id, ts, model, prompt_id, prompt_version, prompt_label, experiment_id, variant,
  feature, subject, input_tokens, output_tokens, cached_input_tokens, latency_ms, status, key_id, ingested_at
  from usage_record where tenant_id = 'bench' and ts >= '2026-11-01T00:00:00Z' and ts < '2026-12-01T00:00:00Z'
  and ingested_at <= now() order by ts, record_id"

record() { echo "$1" >>"$JSON"; echo "$1"; }

for run in $(seq 1 "$RUNS"); do
  echo "== run $run"
  # PostgreSQL writing the same rows as CSV, through psql, to nowhere.
  started=$(now)
  psql -h 127.0.0.1 -U postgres -d $DB -qc "\\copy ($(echo $SELECT)) to '/dev/null' with csv header"
  secs=$(since "$started")
  record "{\"bench\":\"export\",\"at\":\"$STAMP\",\"run\":$run,\"what\":\"copy-csv\",\"rows\":$RECORDS,\"seconds\":$secs,\"rows_per_s\":$(per_s "$RECORDS" "$secs")}"

  # A server started and stopped without an export: the baseline of peak RSS.
  mkdir -p "$WORK"
  TIME_OUT=$WORK/time-idle serve_existing $DB $PORT AIPM_EXPORT_DIR="$WORK/files"
  sleep 2
  stop
  idle_kb=$(peak_kb "$WORK/time-idle")
  record "{\"bench\":\"export\",\"at\":\"$STAMP\",\"run\":$run,\"what\":\"idle-server\",\"peak_rss_kb\":$idle_kb}"

  for format in csv xlsx; do
    rm -rf "$WORK/files"
    TIME_OUT=$WORK/time-$format serve_existing $DB $PORT AIPM_EXPORT_DIR="$WORK/files"
    started=$(now)
    id=$(curl -sf -X POST "$URL/v1/exports" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
      -d "{\"report\":\"usage\",\"format\":\"$format\",\"params\":{\"from\":\"2026-11-01\",\"to\":\"2026-11-30\"}}" | jq -r .id)
    while :; do
      sleep 0.2
      view=$(curl -sf "$URL/v1/exports/$id" -H "Authorization: Bearer $KEY")
      status=$(echo "$view" | jq -r .status)
      case $status in
        done) break ;;
        queued | running) ;;
        *) echo "export $id: $status: $view" >&2; exit 1 ;;
      esac
    done
    secs=$(since "$started")
    stop
    rows=$(echo "$view" | jq -r .progress.rows)
    size=$(echo "$view" | jq -r .size_bytes)
    # The job's own time, from its acceptance to its end.
    job_s=$(echo "$view" | jq -r 'def t: (sub("\\.[0-9]+"; "") | fromdate) + (try ("0." + capture("\\.(?<f>[0-9]+)").f | tonumber) catch 0);
      (.finished_at | t) - (.created_at | t) | . * 1000 | round / 1000')
    peak=$(peak_kb "$WORK/time-$format")
    record "{\"bench\":\"export\",\"at\":\"$STAMP\",\"run\":$run,\"what\":\"$format\",\"rows\":$rows,\"seconds\":$secs,\"rows_per_s\":$(per_s "$rows" "$secs"),\"job_seconds\":$job_s,\"size_bytes\":$size,\"peak_rss_kb\":$peak,\"idle_peak_rss_kb\":$idle_kb}"
  done
  rm -rf "$WORK/files"
done

# --- Summary: medians (every run) ---------------------------------------------------------
echo
echo "== $RECORDS records, $RUNS runs; medians (every run)"
jq -rs --arg at "$STAMP" '
  def median: sort | .[(length - 1) / 2 | floor];
  def runs(f): map(f) | (median | tostring) + " (" + (map(tostring) | join(", ")) + ")";
  map(select(.at == $at)) as $all
  | ($all | map(select(.what == "idle-server"))) as $idle
  | ["what", "seconds", "job s", "rows/s", "MB", "peak RSS MiB"],
    (["copy-csv", "csv", "xlsx"][] as $w | $all | map(select(.what == $w)) | select(length > 0)
      | [$w, runs(.seconds * 100 | round / 100), (if .[0].job_seconds then runs(.job_seconds * 100 | round / 100) else "" end), runs(.rows_per_s), (if .[0].size_bytes then runs(.size_bytes / 1e5 | round / 10) else "" end),
         (if .[0].peak_rss_kb then runs(.peak_rss_kb / 102.4 | round / 10) else "" end)]),
    ["idle server", "", "", "", "", ($idle | runs(.peak_rss_kb / 102.4 | round / 10))]
  | @tsv' "$JSON" | column -t -s $'\t'
