//! Reads of the configuration, each scoped to a tenant: now from [`super::ConfigProjection`]'s
//! table, at a past instant from the log.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::config::{ConfigEntry, ConfigEvent, ConfigKey};
use domain::upcast::{self, Schema};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A configuration key as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigView {
    #[cfg_attr(feature = "openapi", schema(example = "limits.max_output_tokens"))]
    pub key: String,
    /// The value (any JSON); `null` when the key has none.
    pub value: Option<Value>,
    /// The JSON Schema values must match (an object or a boolean), when one was declared.
    pub schema: Option<Value>,
    /// The key's version, also sent as `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl ConfigView {
    /// The view of a key's state: a point-in-time read.
    pub fn from_state(entry: ConfigEntry, version: u64, updated_at: DateTime<Utc>) -> Self {
        Self {
            key: entry.key,
            value: entry.value,
            schema: entry.schema.map(|s| s.as_value().clone()),
            version: version as i64,
            updated_at,
        }
    }
}

/// One key's value in a listing of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigValue {
    pub key: String,
    /// Any JSON.
    pub value: Value,
    /// When the value was set.
    pub updated_at: DateTime<Utc>,
}

/// The key `key` of `tenant`, with or without a value.
pub async fn entry(pool: &PgPool, tenant: &str, key: &str) -> sqlx::Result<Option<ConfigView>> {
    sqlx::query_as(
        "select key, value, schema, version, updated_at from config_entry where tenant_id = $1 and key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// The keys of `tenant` starting with `prefix` that have a value, by key.
pub async fn values(pool: &PgPool, tenant: &str, prefix: &str) -> sqlx::Result<Vec<ConfigValue>> {
    let rows: Vec<(String, Value, DateTime<Utc>)> = sqlx::query_as(
        "select key, value, updated_at from config_entry
         where tenant_id = $1 and value is not null and left(key, length($2)) = $2
         order by key",
    )
    .bind(tenant)
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, value, updated_at)| ConfigValue {
            key,
            value,
            updated_at,
        })
        .collect())
}

/// The keys of `tenant` starting with `prefix` that had a value at `at`, with that value,
/// by key: the last value event of each key recorded by then.
pub async fn values_as_of(
    pool: &PgPool,
    tenant: &str,
    prefix: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<Vec<ConfigValue>> {
    let rows: Vec<(String, String, String, Value, DateTime<Utc>)> = sqlx::query_as(
        "select distinct on (aggregate_id) aggregate_id, event_type, event_version, payload, recorded_at
         from events
         where tenant_id = $1 and aggregate_type = $2 and recorded_at <= $3
           and event_type in ('ConfigValueSet', 'ConfigValueCleared', 'ConfigScheduleApplied')
         order by aggregate_id, sequence desc",
    )
    .bind(tenant)
    .bind(ConfigEntry::TYPE)
    .bind(at)
    .fetch_all(pool)
    .await?;
    let mut values = Vec::new();
    for (aggregate_id, event_type, event_version, payload, updated_at) in rows {
        let key = ConfigKey::in_aggregate_id(&aggregate_id);
        if !key.starts_with(prefix) {
            continue;
        }
        let schema = Schema {
            aggregate_type: ConfigEntry::TYPE,
            event_type: &event_type,
            event_version: &event_version,
        };
        let event: ConfigEvent =
            upcast::decode_value(schema, payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if let ConfigEvent::ConfigValueSet { value, .. } | ConfigEvent::ConfigScheduleApplied { value, .. } =
            event
        {
            values.push(ConfigValue {
                key: key.to_string(),
                value,
                updated_at,
            });
        }
    }
    values.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(values)
}

/// A scheduled change as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    pub id: Uuid,
    pub key: String,
    /// The value it sets (any JSON).
    pub value: Value,
    /// When it applies.
    pub at: DateTime<Utc>,
    /// `pending`, `applied` or `cancelled`.
    #[cfg_attr(feature = "openapi", schema(example = "pending"))]
    pub state: String,
    /// For a cancelled one: `cancelled`, `conflict` (the value changed after it was
    /// scheduled) or `schema_changed`.
    pub cancelled_because: Option<String>,
    /// For a conflict: the key's version whose change cancelled it.
    pub conflicting_version: Option<i64>,
    /// The name of the key that scheduled it.
    pub scheduled_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it was applied or cancelled.
    pub resolved_at: Option<DateTime<Utc>>,
}

const SCHEDULE_COLUMNS: &str =
    "schedule_id as id, key, value, at, state, cancelled_because, conflicting_version, \
     scheduled_by, reason, created_at, resolved_at";

/// A scheduled change of `tenant`.
pub async fn schedule(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<ScheduleView>> {
    let sql =
        format!("select {SCHEDULE_COLUMNS} from config_schedule where schedule_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The scheduled changes of `tenant`, in `state` when given, by time.
pub async fn schedules(pool: &PgPool, tenant: &str, state: Option<&str>) -> sqlx::Result<Vec<ScheduleView>> {
    let sql = format!(
        "select {SCHEDULE_COLUMNS} from config_schedule
         where tenant_id = $1 and ($2::text is null or state = $2)
         order by at, schedule_id"
    );
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(state)
        .fetch_all(pool)
        .await
}

/// A pending schedule of any tenant: what the scheduler applies.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueSchedule {
    pub id: Uuid,
    pub tenant: String,
    pub key: String,
}

/// Up to `limit` pending schedules of every tenant due at `now`, oldest first.
pub async fn due_schedules(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<DueSchedule>> {
    sqlx::query_as(
        "select schedule_id as id, tenant_id as tenant, key from config_schedule
         where state = 'pending' and at <= $1 order by at limit $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// When the next pending schedule of any tenant is due.
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("select min(at) from config_schedule where state = 'pending'")
        .fetch_one(pool)
        .await
}
