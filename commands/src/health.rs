//! Storing probe results: telemetry, not events (a probe every minute per provider would
//! drown the log). Only a change of a provider's state is an event, on its
//! `ProviderHealth` aggregate.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How long probes are kept.
pub const PROBES_KEPT_DAYS: i64 = 7;

/// One probe of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    pub provider_id: Uuid,
    pub tenant_id: String,
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub latency_ms: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

pub async fn record_probe(pool: &PgPool, probe: &ProbeRecord) -> sqlx::Result<()> {
    sqlx::query(
        "insert into provider_probe (provider_id, tenant_id, at, ok, latency_ms, status_code, error)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(probe.provider_id)
    .bind(&probe.tenant_id)
    .bind(probe.at)
    .bind(probe.ok)
    .bind(i32::try_from(probe.latency_ms).unwrap_or(i32::MAX))
    .bind(probe.status_code.map(i32::from))
    .bind(&probe.error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes the probes older than [`PROBES_KEPT_DAYS`] before `now`.
pub async fn forget_old_probes(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query("delete from provider_probe where at < $1")
        .bind(now - chrono::Duration::days(PROBES_KEPT_DAYS))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
