//! Writing usage records: telemetry, not events. One request's records go in one
//! transaction of two statements whatever their number: their ids are claimed (a re-sent
//! id counts once per tenant, across batches and restarts), then the records whose ids were
//! new are inserted as arrays, and added to the spend roll-ups, in one statement. The
//! months' partitions are created first, once per process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use domain::call_summary::CallSummary;
use domain::usage::{Cost, UsageRecord};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A valid record ready to store: its cost (`None`: uncosted) and the prompt version its
/// label resolved to, when it named a label.
pub struct CostedRecord {
    pub record: UsageRecord,
    pub cost: Option<Cost>,
    pub prompt_version: Option<u32>,
    /// For a call the gateway made: each attempt (model, outcome, latency), as JSON.
    pub attempts: Option<serde_json::Value>,
}

/// What storing a request's records did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub accepted: usize,
    /// Records whose id this tenant had sent before (in this request or an earlier one).
    pub duplicates: usize,
    /// Accepted records without a cost.
    pub uncosted: usize,
}

/// Stores usage records; remembers which monthly partitions exist.
#[derive(Default)]
pub struct UsageStore {
    months: Mutex<HashSet<(i32, u32)>>,
}

impl UsageStore {
    /// Stores `records` of `tenant`, sent with the key `key_id`.
    pub async fn store(
        &self,
        pool: &PgPool,
        tenant: &str,
        key_id: Uuid,
        records: Vec<CostedRecord>,
    ) -> sqlx::Result<Stored> {
        if records.is_empty() {
            return Ok(Stored {
                accepted: 0,
                duplicates: 0,
                uncosted: 0,
            });
        }
        self.ensure_partitions(pool, records.iter().map(|r| r.record.timestamp))
            .await?;
        let mut tx = eventlog::begin(pool).await?;
        let ids: Vec<&str> = records.iter().map(|r| r.record.id.as_str()).collect();
        let claimed: Vec<String> = sqlx::query_scalar(
            "insert into usage_record_id (tenant_id, record_id)
             select $1, id from unnest($2::text[]) as ids(id)
             on conflict do nothing
             returning record_id",
        )
        .bind(tenant)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        // A new id sent twice in one request: its first record counts.
        let mut new: HashMap<String, bool> = claimed.into_iter().map(|id| (id, false)).collect();
        let fresh: Vec<&CostedRecord> = records
            .iter()
            .filter(|r| match new.get_mut(&r.record.id) {
                Some(taken @ false) => {
                    *taken = true;
                    true
                }
                _ => false,
            })
            .collect();
        let columns = Columns::of(&fresh);
        // The records, and the roll-ups they add to, in one statement. Roll-up rows are
        // updated in key order, so that concurrent requests never deadlock.
        sqlx::query(
            "with stored as (
                 insert into usage_record (tenant_id, record_id, ts, model, prompt_id, prompt_version, prompt_label,
                                           experiment_id, variant, feature, subject, input_tokens, output_tokens,
                                           cached_input_tokens, latency_ms, status, metrics, cost, currency, attempts,
                                           key_id)
                 select $1, * , $19 from unnest($2::text[], $3::timestamptz[], $4::text[], $5::uuid[], $6::int[],
                                                $7::text[], $8::uuid[], $9::text[], $10::text[], $11::text[],
                                                $12::bigint[], $13::bigint[], $14::bigint[], $15::int[], $16::text[],
                                                $17::jsonb[], $18::numeric[], $20::text[], $21::jsonb[])
                 returning ts, model, prompt_id, prompt_version, prompt_label, feature, currency, input_tokens,
                           output_tokens, cached_input_tokens, cost, status
             )
             insert into usage_rollup as r (tenant_id, day, model, prompt_id, prompt_version, prompt_label, feature,
                                            key_id, currency, calls, input_tokens, output_tokens, cached_input_tokens,
                                            cost, uncosted, original_cost, errors, last_used)
             select $1, (ts at time zone 'UTC')::date, model, prompt_id, prompt_version, prompt_label, feature, $19,
                    currency, count(*), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
                    coalesce(sum(cost), 0), count(*) filter (where cost is null), coalesce(sum(cost), 0),
                    count(*) filter (where status <> 'ok'), max(ts)
             from stored
             group by 2, 3, 4, 5, 6, 7, 9
             order by 2, 3, 4, 5, 6, 7, 9
             on conflict (tenant_id, day, model, prompt_id, prompt_version, prompt_label, feature, key_id, currency)
             do update set
                 calls = r.calls + excluded.calls,
                 input_tokens = r.input_tokens + excluded.input_tokens,
                 output_tokens = r.output_tokens + excluded.output_tokens,
                 cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
                 cost = r.cost + excluded.cost,
                 uncosted = r.uncosted + excluded.uncosted,
                 original_cost = r.original_cost + excluded.original_cost,
                 errors = r.errors + excluded.errors,
                 last_used = greatest(r.last_used, excluded.last_used)",
        )
        .bind(tenant)
        .bind(columns.ids)
        .bind(columns.timestamps)
        .bind(columns.models)
        .bind(columns.prompt_ids)
        .bind(columns.prompt_versions)
        .bind(columns.prompt_labels)
        .bind(columns.experiment_ids)
        .bind(columns.variants)
        .bind(columns.features)
        .bind(columns.subjects)
        .bind(columns.input_tokens)
        .bind(columns.output_tokens)
        .bind(columns.cached_input_tokens)
        .bind(columns.latencies)
        .bind(columns.statuses)
        .bind(columns.metrics)
        .bind(columns.costs)
        .bind(key_id)
        .bind(columns.currencies)
        .bind(columns.attempts)
        .execute(&mut *tx)
        .await?;
        add_to_analytics(&mut tx, tenant, &fresh).await?;
        tx.commit().await?;
        Ok(Stored {
            accepted: fresh.len(),
            duplicates: records.len() - fresh.len(),
            uncosted: fresh.iter().filter(|r| r.cost.is_none()).count(),
        })
    }

    async fn ensure_partitions(
        &self,
        pool: &PgPool,
        timestamps: impl Iterator<Item = DateTime<Utc>>,
    ) -> sqlx::Result<()> {
        let mut missing: Vec<DateTime<Utc>> = Vec::new();
        {
            let known = self
                .months
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut seen = HashSet::new();
            for at in timestamps {
                let month = (at.year(), at.month());
                if !known.contains(&month) && seen.insert(month) {
                    missing.push(at);
                }
            }
        }
        for at in missing {
            sqlx::query("select usage_partition_for($1)")
                .bind(at)
                .execute(pool)
                .await?;
            self.months
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((at.year(), at.month()));
        }
        Ok(())
    }
}

/// Stores usage records one at a time for many concurrent callers (the gateway's calls), in
/// groups: what arrives while a write runs goes in the next one, one transaction per tenant
/// and key (group commit). Concurrent calls of one prompt add to the same roll-up and
/// analytics rows, which a transaction each would take in turn, one commit each.
#[derive(Clone)]
pub struct UsageBatcher {
    waiting: mpsc::UnboundedSender<Pending>,
}

/// Where a waiting caller learns that its record is stored (or why not).
type StoredSender = oneshot::Sender<Result<(), String>>;

struct Pending {
    tenant: String,
    key_id: Uuid,
    record: CostedRecord,
    stored: StoredSender,
}

/// Most records one group write takes.
const MAX_GROUP: usize = 1_000;

impl UsageBatcher {
    /// Starts the writer task on `pool`.
    pub fn start(pool: PgPool) -> Self {
        let (waiting, mut queue) = mpsc::unbounded_channel::<Pending>();
        let store = UsageStore::default();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(pending) => group.push(pending),
                        Err(_) => break,
                    }
                }
                write_group(&store, &pool, group).await;
            }
        });
        Self { waiting }
    }

    /// Stores `record` of `tenant`, sent with the key `key_id`, with whatever else is
    /// waiting; answers once it is committed. It is written even if the caller stops waiting.
    pub async fn store(&self, tenant: &str, key_id: Uuid, record: CostedRecord) -> Result<(), String> {
        let (stored, answer) = oneshot::channel();
        self.waiting
            .send(Pending {
                tenant: tenant.to_string(),
                key_id,
                record,
                stored,
            })
            .map_err(|_| "the usage writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the usage writer has stopped".to_string())?
    }
}

/// Writes a group: one transaction per tenant and key.
async fn write_group(store: &UsageStore, pool: &PgPool, group: Vec<Pending>) {
    let mut by_caller: BTreeMap<(String, Uuid), (Vec<CostedRecord>, Vec<StoredSender>)> = BTreeMap::new();
    for pending in group {
        let entry = by_caller.entry((pending.tenant, pending.key_id)).or_default();
        entry.0.push(pending.record);
        entry.1.push(pending.stored);
    }
    for ((tenant, key_id), (records, waiting)) in by_caller {
        let outcome = store
            .store(pool, &tenant, key_id, records)
            .await
            .map(|_| ())
            .map_err(|error| error.to_string());
        for stored in waiting {
            let _ = stored.send(outcome.clone());
        }
    }
}

/// A row of `usage_analytics`: day, prompt, prompt version, label and feature.
type AnalyticsKey = (
    NaiveDate,
    Option<Uuid>,
    Option<i32>,
    Option<String>,
    Option<String>,
);

/// Adds the latencies and metrics of `records` to their rows of `usage_analytics`: rows are
/// made if new, then read, merged and written back, locked in one order by every writer.
async fn add_to_analytics(
    tx: &mut PgConnection,
    tenant: &str,
    records: &[&CostedRecord],
) -> sqlx::Result<()> {
    let mut groups: BTreeMap<AnalyticsKey, CallSummary> = BTreeMap::new();
    for costed in records {
        let record = &costed.record;
        if record.latency_ms.is_none() && record.metrics.is_empty() {
            continue;
        }
        let key = (
            record.timestamp.date_naive(),
            record.prompt_id,
            costed.prompt_version.or(record.prompt_version).map(|v| v as i32),
            record.prompt_label.clone(),
            record.feature.clone(),
        );
        groups.entry(key).or_default().add(record);
    }
    if groups.is_empty() {
        return Ok(());
    }
    let (mut days, mut prompts, mut versions, mut labels, mut features) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (day, prompt, version, label, feature) in groups.keys() {
        days.push(*day);
        prompts.push(*prompt);
        versions.push(*version);
        labels.push(label.clone());
        features.push(feature.clone());
    }
    let keys = "unnest($2::date[], $3::uuid[], $4::int[], $5::text[], $6::text[])
                with ordinality as k(day, prompt_id, prompt_version, prompt_label, feature, ord)";
    let matching = "a.tenant_id = $1 and a.day = k.day and a.prompt_id is not distinct from k.prompt_id
                    and a.prompt_version is not distinct from k.prompt_version
                    and a.prompt_label is not distinct from k.prompt_label
                    and a.feature is not distinct from k.feature";
    sqlx::query(&format!(
        "insert into usage_analytics (tenant_id, day, prompt_id, prompt_version, prompt_label, feature, summary)
         select $1, day, prompt_id, prompt_version, prompt_label, feature, '{{}}' from {keys} order by ord
         on conflict do nothing"
    ))
    .bind(tenant)
    .bind(&days)
    .bind(&prompts)
    .bind(&versions)
    .bind(&labels)
    .bind(&features)
    .execute(&mut *tx)
    .await?;
    let stored: Vec<(i64, serde_json::Value)> = sqlx::query_as(&format!(
        "select k.ord, a.summary from usage_analytics a join {keys} on {matching} order by k.ord for update of a"
    ))
    .bind(tenant)
    .bind(&days)
    .bind(&prompts)
    .bind(&versions)
    .bind(&labels)
    .bind(&features)
    .fetch_all(&mut *tx)
    .await?;
    let mut merged: Vec<serde_json::Value> = Vec::with_capacity(groups.len());
    for ((_, added), (_, summary)) in groups.iter().zip(stored) {
        // A row just made holds `{}`, which reads as an empty summary.
        let mut summary: CallSummary = serde_json::from_value(summary).unwrap_or_default();
        summary.merge(added);
        merged.push(serde_json::to_value(&summary).unwrap_or_default());
    }
    sqlx::query(&format!(
        "update usage_analytics a set summary = s.summary
         from {keys} join unnest($7::jsonb[]) with ordinality as s(summary, ord) on s.ord = k.ord
         where {matching}"
    ))
    .bind(tenant)
    .bind(&days)
    .bind(&prompts)
    .bind(&versions)
    .bind(&labels)
    .bind(&features)
    .bind(&merged)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The records as one array per column, for one `unnest` insert.
#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    timestamps: Vec<DateTime<Utc>>,
    models: Vec<String>,
    prompt_ids: Vec<Option<Uuid>>,
    prompt_versions: Vec<Option<i32>>,
    prompt_labels: Vec<Option<String>>,
    experiment_ids: Vec<Option<Uuid>>,
    variants: Vec<Option<String>>,
    features: Vec<Option<String>>,
    subjects: Vec<Option<String>>,
    input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    latencies: Vec<Option<i32>>,
    statuses: Vec<String>,
    metrics: Vec<Option<serde_json::Value>>,
    costs: Vec<Option<Decimal>>,
    currencies: Vec<Option<String>>,
    attempts: Vec<Option<serde_json::Value>>,
}

impl Columns {
    fn of(records: &[&CostedRecord]) -> Self {
        let mut columns = Columns::default();
        for costed in records {
            let record = &costed.record;
            columns.ids.push(record.id.clone());
            columns.timestamps.push(record.timestamp);
            columns.models.push(record.model.clone());
            columns.prompt_ids.push(record.prompt_id);
            columns
                .prompt_versions
                .push(costed.prompt_version.or(record.prompt_version).map(|v| v as i32));
            columns.prompt_labels.push(record.prompt_label.clone());
            columns.experiment_ids.push(record.experiment_id);
            columns.variants.push(record.variant.clone());
            columns.features.push(record.feature.clone());
            columns.subjects.push(record.subject.clone());
            // Parsing bounds tokens to a trillion: they fit.
            columns.input_tokens.push(record.input_tokens as i64);
            columns.output_tokens.push(record.output_tokens as i64);
            columns
                .cached_input_tokens
                .push(record.cached_input_tokens as i64);
            columns.latencies.push(record.latency_ms.map(|ms| ms as i32));
            columns.statuses.push(record.status.clone());
            columns.metrics.push(
                (!record.metrics.is_empty())
                    .then(|| serde_json::to_value(&record.metrics).unwrap_or_default()),
            );
            columns.costs.push(costed.cost.as_ref().map(|cost| cost.amount));
            columns
                .currencies
                .push(costed.cost.as_ref().map(|cost| cost.currency.clone()));
            columns.attempts.push(costed.attempts.clone());
        }
        columns
    }
}
