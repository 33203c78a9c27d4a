//! Reads of the configuration, each scoped to a tenant: now from [`super::ConfigProjection`]'s
//! table, at a past instant from the log.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::config::{ConfigEntry, ConfigEvent, ConfigKey};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

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
    let rows: Vec<(String, Value, DateTime<Utc>)> = sqlx::query_as(
        "select distinct on (aggregate_id) aggregate_id, payload, recorded_at
         from events
         where tenant_id = $1 and aggregate_type = $2 and recorded_at <= $3
           and event_type in ('ConfigValueSet', 'ConfigValueCleared')
         order by aggregate_id, sequence desc",
    )
    .bind(tenant)
    .bind(ConfigEntry::TYPE)
    .bind(at)
    .fetch_all(pool)
    .await?;
    let mut values = Vec::new();
    for (aggregate_id, payload, updated_at) in rows {
        let key = ConfigKey::in_aggregate_id(&aggregate_id);
        if !key.starts_with(prefix) {
            continue;
        }
        let event: ConfigEvent =
            serde_json::from_value(payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if let ConfigEvent::ConfigValueSet { value, .. } = event {
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
