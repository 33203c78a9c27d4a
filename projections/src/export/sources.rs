//! What reports are made from, read at one point of the log and of time: the state of
//! every aggregate of a kind folded from the log up to a cursor and an instant, and the
//! telemetry recorded by that instant. Reading the log itself (not the read models) lets a
//! report of a past instant and one of now take the same path, and a report asked again
//! with the same cursor read exactly the same events.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::position::GlobalCursor;
use domain::upcast::{self, Schema};
use futures::{Stream, StreamExt};
use sqlx::PgPool;
use uuid::Uuid;

/// The point a report reflects: events at or before `cursor` recorded by `instant`, and
/// telemetry received by `instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportPoint {
    pub cursor: GlobalCursor,
    pub instant: DateTime<Utc>,
}

/// The point of now: this moment, once every write begun before it has ended — so that
/// nothing later commits with an earlier time (a usage record's `ingested_at` and an event's
/// `recorded_at` are their transaction's start) and a report of this point read again
/// finds the same rows. Waits at most `patience` for such writes; past it, the point is the
/// start of the oldest write still running.
pub async fn now(pool: &PgPool, patience: std::time::Duration) -> sqlx::Result<ReportPoint> {
    let instant: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        // Writers: transactions of this database holding a transaction id.
        let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(
            "select min(xact_start) from pg_stat_activity
             where datname = current_database() and backend_xid is not null and pid <> pg_backend_pid()",
        )
        .fetch_one(pool)
        .await?;
        match oldest {
            Some(oldest) if oldest <= instant => {
                if tokio::time::Instant::now() >= deadline {
                    return at(pool, oldest - chrono::Duration::microseconds(1)).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            _ => return at(pool, instant).await,
        }
    }
}

/// The point of a past `instant`: the last settled event recorded by then.
pub async fn at(pool: &PgPool, instant: DateTime<Utc>) -> sqlx::Result<ReportPoint> {
    let last: Option<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, position from events
         where transaction_id < (select events_horizon()) and recorded_at <= $1
         order by events.transaction_id desc, events.position desc
         limit 1",
    )
    .bind(instant)
    .fetch_optional(pool)
    .await?;
    let cursor = last.map_or(GlobalCursor::START, |(t, p)| GlobalCursor::new(t, p));
    Ok(ReportPoint { cursor, instant })
}

/// Every aggregate of type `A` of `tenant` as it stood at `point`, by id, in id order;
/// aggregates with no event by then are absent. An event this build cannot read is an
/// error, not skipped: a report must not silently leave things out.
pub async fn fold_all<A: Aggregate>(
    pool: &PgPool,
    tenant: &str,
    point: ReportPoint,
) -> sqlx::Result<Vec<(String, A)>> {
    let mut rows = sqlx::query_as::<_, (String, String, String, serde_json::Value)>(
        "select aggregate_id, event_type, event_version, payload from events
         where aggregate_type = $1 and tenant_id = $2 and recorded_at <= $3
           and (transaction_id, position) <= ($4::bigint::text::xid8, $5)
         order by aggregate_id, sequence",
    )
    .bind(A::TYPE)
    .bind(tenant)
    .bind(point.instant)
    .bind(point.cursor.transaction_id)
    .bind(point.cursor.position)
    .fetch(pool);
    let mut folded: Vec<(String, A)> = Vec::new();
    while let Some(row) = rows.next().await {
        let (id, event_type, event_version, payload) = row?;
        let schema = Schema {
            aggregate_type: A::TYPE,
            event_type: &event_type,
            event_version: &event_version,
        };
        let event: A::Event = upcast::decode_value(schema, payload).map_err(|error| {
            sqlx::Error::Decode(format!("unreadable {} event of {id}: {error}", A::TYPE).into())
        })?;
        match folded.last_mut() {
            Some((last, aggregate)) if *last == id => aggregate.apply(event),
            _ => {
                let mut aggregate = A::default();
                aggregate.apply(event);
                folded.push((id, aggregate));
            }
        }
    }
    Ok(folded)
}

/// A usage record as reports read it: its cost is not read, as a report prices records
/// with the prices known at its point.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UsageRow {
    pub record_id: String,
    pub ts: DateTime<Utc>,
    pub model: String,
    pub prompt_id: Option<Uuid>,
    pub prompt_version: Option<i32>,
    pub prompt_label: Option<String>,
    pub experiment_id: Option<Uuid>,
    pub variant: Option<String>,
    pub feature: Option<String>,
    pub subject: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub latency_ms: Option<i32>,
    pub status: String,
    pub key_id: Uuid,
    pub ingested_at: DateTime<Utc>,
}

/// How many of `tenant`'s usage records made between `from` and `to` (exclusive) were
/// received by `instant`: what a report of them will hold.
pub async fn count_usage(
    pool: &PgPool,
    tenant: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    instant: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select count(*) from usage_record
         where tenant_id = $1 and ts >= $2 and ts < $3 and ingested_at <= $4",
    )
    .bind(tenant)
    .bind(from)
    .bind(to)
    .bind(instant)
    .fetch_one(pool)
    .await
}

/// `tenant`'s usage records made between `from` and `to` (exclusive) and received by
/// `instant`, in the order they were made (ties by id), streamed.
pub fn usage<'a>(
    pool: &'a PgPool,
    tenant: &'a str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    instant: DateTime<Utc>,
) -> impl Stream<Item = sqlx::Result<UsageRow>> + Send + 'a {
    sqlx::query_as::<_, UsageRow>(
        "select record_id, ts, model, prompt_id, prompt_version, prompt_label, experiment_id, variant, feature,
                subject, input_tokens, output_tokens, cached_input_tokens, latency_ms, status, key_id, ingested_at
         from usage_record
         where tenant_id = $1 and ts >= $2 and ts < $3 and ingested_at <= $4
         order by ts, record_id",
    )
    .bind(tenant)
    .bind(from)
    .bind(to)
    .bind(instant)
    .fetch(pool)
}

/// One event of the log as a report reads it: where it stands in its aggregate's history
/// and when it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent<E> {
    pub aggregate_id: String,
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: E,
}

/// The events of `tenant`'s aggregates of type `A` (only `id`'s when given) at `point`, by
/// aggregate id and then in their order: what [`fold_all`] folds, with the moment of each,
/// for reports that show when things changed. An event this build cannot read is an error,
/// as in [`fold_all`].
pub async fn events_of<A: Aggregate>(
    pool: &PgPool,
    tenant: &str,
    point: ReportPoint,
    id: Option<&str>,
) -> sqlx::Result<Vec<LoggedEvent<A::Event>>> {
    let mut rows = sqlx::query_as::<_, (String, i64, DateTime<Utc>, String, String, serde_json::Value)>(
        "select aggregate_id, sequence, recorded_at, event_type, event_version, payload from events
         where aggregate_type = $1 and tenant_id = $2 and recorded_at <= $3
           and (transaction_id, position) <= ($4::bigint::text::xid8, $5)
           and ($6::text is null or aggregate_id = $6)
         order by aggregate_id, sequence",
    )
    .bind(A::TYPE)
    .bind(tenant)
    .bind(point.instant)
    .bind(point.cursor.transaction_id)
    .bind(point.cursor.position)
    .bind(id)
    .fetch(pool);
    let mut events = Vec::new();
    while let Some(row) = rows.next().await {
        let (aggregate_id, sequence, recorded_at, event_type, event_version, payload) = row?;
        let schema = Schema {
            aggregate_type: A::TYPE,
            event_type: &event_type,
            event_version: &event_version,
        };
        let event = upcast::decode_value(schema, payload).map_err(|error| {
            sqlx::Error::Decode(format!("unreadable {} event of {aggregate_id}: {error}", A::TYPE).into())
        })?;
        events.push(LoggedEvent {
            aggregate_id,
            sequence,
            recorded_at,
            event,
        });
    }
    Ok(events)
}

/// Whether the audit log holds every event up to `cursor` (its projection runs behind the
/// log; a report of its entries waits for it so that none is missing).
pub async fn audit_reached(pool: &PgPool, cursor: GlobalCursor) -> sqlx::Result<bool> {
    let mut conn = pool.acquire().await?;
    let checkpoint = crate::runner::checkpoint(&mut conn, crate::audit::NAME).await?;
    Ok(checkpoint >= cursor)
}

/// Which audit entries a report holds; absent filters are no condition.
#[derive(Debug, Clone, Default)]
pub struct AuditRange {
    /// Recorded at or after.
    pub from: Option<DateTime<Utc>>,
    /// Recorded before.
    pub to: Option<DateTime<Utc>>,
    /// An actor's key id or name.
    pub actor: Option<String>,
    pub aggregate_type: Option<String>,
    pub event_type: Option<String>,
}

/// `tenant`'s audit entries of events at or before `point`'s cursor and recorded by its
/// instant, within `range`, in chain order, streamed. Entries are written once and never
/// change, so the same point reads the same entries once the audit log has reached it
/// ([`audit_reached`]).
pub fn audit_entries<'a>(
    pool: &'a PgPool,
    tenant: &'a str,
    point: ReportPoint,
    range: &'a AuditRange,
) -> impl Stream<Item = sqlx::Result<crate::audit::ChainedEntry>> + Send + 'a {
    sqlx::query_as::<_, crate::audit::ChainedEntry>(AUDIT_ENTRIES.as_str())
        .bind(tenant)
        .bind(point.instant)
        .bind(point.cursor.transaction_id)
        .bind(point.cursor.position)
        .bind(range.from)
        .bind(range.to)
        .bind(range.actor.clone())
        .bind(range.aggregate_type.clone())
        .bind(range.event_type.clone())
        .fetch(pool)
}

static AUDIT_ENTRIES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "select {} from audit_entry
         where tenant_id = $1 and recorded_at <= $2 and (transaction_id, position) <= ($3, $4)
           and ($5::timestamptz is null or recorded_at >= $5)
           and ($6::timestamptz is null or recorded_at < $6)
           and ($7::text is null or actor_key_id = $7 or actor_name = $7)
           and ($8::text is null or aggregate_type = $8)
           and ($9::text is null or event_type = $9)
         order by chain_seq",
        crate::audit::ENTRY_COLUMNS
    )
});

/// A usage record of a prompt with its metrics, for the prompt's analytics.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PromptUsageRow {
    #[sqlx(flatten)]
    pub record: UsageRow,
    /// The record's `metrics` object, as stored.
    pub metrics: Option<serde_json::Value>,
}

/// `tenant`'s usage records of `prompt` made between `from` and `to` (exclusive) and
/// received by `instant`, in the order they were made (ties by id), streamed.
pub fn prompt_usage<'a>(
    pool: &'a PgPool,
    tenant: &'a str,
    prompt: Uuid,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    instant: DateTime<Utc>,
) -> impl Stream<Item = sqlx::Result<PromptUsageRow>> + Send + 'a {
    sqlx::query_as::<_, PromptUsageRow>(
        "select record_id, ts, model, prompt_id, prompt_version, prompt_label, experiment_id, variant, feature,
                subject, input_tokens, output_tokens, cached_input_tokens, latency_ms, status, key_id, ingested_at,
                metrics
         from usage_record
         where tenant_id = $1 and prompt_id = $2 and ts >= $3 and ts < $4 and ingested_at <= $5
         order by ts, record_id",
    )
    .bind(tenant)
    .bind(prompt)
    .bind(from)
    .bind(to)
    .bind(instant)
    .fetch(pool)
}

/// One provider's probes on one day (UTC).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProbeDay {
    pub provider_id: Uuid,
    pub day: chrono::NaiveDate,
    pub probes: i64,
    pub ok: i64,
}

/// `tenant`'s probes made between `from` and `to` (exclusive) and by `instant` (a probe is
/// written when it is made), counted per provider and day, by day and provider.
pub async fn probe_days(
    pool: &PgPool,
    tenant: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    instant: DateTime<Utc>,
) -> sqlx::Result<Vec<ProbeDay>> {
    sqlx::query_as(
        "select provider_id, (at at time zone 'UTC')::date as day, count(*) as probes,
                count(*) filter (where ok) as ok
         from provider_probe
         where tenant_id = $1 and at >= $2 and at < $3 and at <= $4
         group by provider_id, day
         order by day, provider_id",
    )
    .bind(tenant)
    .bind(from)
    .bind(to)
    .bind(instant)
    .fetch_all(pool)
    .await
}

/// Whether `tenant` had an aggregate `id` of type `A` at `point`.
pub async fn exists<A: Aggregate>(
    pool: &PgPool,
    tenant: &str,
    point: ReportPoint,
    id: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from events
         where aggregate_type = $1 and tenant_id = $2 and aggregate_id = $3 and recorded_at <= $4
           and (transaction_id, position) <= ($5::bigint::text::xid8, $6))",
    )
    .bind(A::TYPE)
    .bind(tenant)
    .bind(id)
    .bind(point.instant)
    .bind(point.cursor.transaction_id)
    .bind(point.cursor.position)
    .fetch_one(pool)
    .await
}

/// `tenant`'s aggregate `id` of type `A` as it stood at `point`; `None` before its first
/// event.
pub async fn fold_one<A: Aggregate>(
    pool: &PgPool,
    tenant: &str,
    point: ReportPoint,
    id: &str,
) -> sqlx::Result<Option<A>> {
    let events = events_of::<A>(pool, tenant, point, Some(id)).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut aggregate = A::default();
    for logged in events {
        aggregate.apply(logged.event);
    }
    Ok(Some(aggregate))
}
