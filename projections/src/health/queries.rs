//! Reads of provider health: what the prober probes, the latest probes the state rule
//! reads, and the overview `GET /v1/health` answers. The tables are
//! [`super::HealthProjection`]'s, the registry's `provider` and the probes.

use chrono::{DateTime, Utc};
use domain::health::{HealthCheck, Probe};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Probes shown per provider in the overview.
const RECENT_PROBES: i64 = 10;

/// A provider to probe, with how.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProbeTarget {
    pub provider_id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    #[sqlx(json)]
    pub health_check: HealthCheck,
}

const TARGET_COLUMNS: &str = "p.provider_id, p.tenant_id, p.name, p.kind, p.base_url, p.health_check";

/// Every enabled provider, of any tenant, whose last probe is older than its interval at
/// `now` (or that was never probed).
pub async fn due(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<Vec<ProbeTarget>> {
    let sql = format!(
        "select {TARGET_COLUMNS} from provider p
         where p.enabled
           and not exists (
               select 1 from provider_probe pp
               where pp.provider_id = p.provider_id
                 and pp.at > $1 - make_interval(secs => coalesce((p.health_check ->> 'interval_seconds')::int, 60)))
         order by p.tenant_id, p.name"
    );
    sqlx::query_as(&sql).bind(now).fetch_all(pool).await
}

/// The enabled providers of `tenant`, by name.
pub async fn targets(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<ProbeTarget>> {
    let sql = format!(
        "select {TARGET_COLUMNS} from provider p where p.tenant_id = $1 and p.enabled order by p.name"
    );
    sqlx::query_as(&sql).bind(tenant).fetch_all(pool).await
}

/// The latest `limit` probes of a provider, newest first.
pub async fn latest_probes(pool: &PgPool, provider: Uuid, limit: i64) -> sqlx::Result<Vec<Probe>> {
    let rows: Vec<(bool, i32)> = sqlx::query_as(
        "select ok, latency_ms from provider_probe where provider_id = $1 order by at desc limit $2",
    )
    .bind(provider)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(ok, latency_ms)| Probe {
            ok,
            latency_ms: u32::try_from(latency_ms).unwrap_or(0),
        })
        .collect())
}

/// One probe as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProbeView {
    pub at: DateTime<Utc>,
    /// An answer below 500 came within the timeout.
    pub ok: bool,
    pub latency_ms: i32,
    /// The HTTP status, when an answer came.
    pub status_code: Option<i32>,
    /// What failed.
    pub error: Option<String>,
}

/// A provider's health as `GET /v1/health` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderHealthView {
    pub provider_id: Uuid,
    /// The provider's name.
    pub provider: String,
    #[cfg_attr(feature = "openapi", schema(example = "openai"))]
    pub kind: String,
    /// Disabled providers are not probed.
    pub enabled: bool,
    /// `unknown` (not probed yet), `healthy`, `degraded` or `down`.
    #[cfg_attr(feature = "openapi", schema(example = "healthy"))]
    pub state: String,
    /// When the provider entered its state.
    pub since: Option<DateTime<Utc>>,
    #[sqlx(json)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::registry::queries::HealthCheckView))]
    pub health_check: HealthCheck,
    /// Share of the last 24 hours' probes that succeeded, 0 to 1; null without probes.
    pub uptime_24h: Option<f64>,
    /// Probes in the last 24 hours.
    pub probes_24h: i64,
    /// The latest probes, newest first.
    #[sqlx(skip)]
    pub recent_probes: Vec<ProbeView>,
}

type ProbeRow = (Uuid, DateTime<Utc>, bool, i32, Option<i32>, Option<String>);

/// Every provider of `tenant` with its state, its uptime over the 24 hours before `now`
/// and its latest probes, by name.
pub async fn overview(
    pool: &PgPool,
    tenant: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<ProviderHealthView>> {
    let mut views: Vec<ProviderHealthView> = sqlx::query_as(
        "select p.provider_id, p.name as provider, p.kind, p.enabled, coalesce(h.state, 'unknown') as state,
                h.since, p.health_check, s.probes_24h,
                case when s.probes_24h > 0 then s.ok_24h::float8 / s.probes_24h end as uptime_24h
         from provider p
         left join provider_health h on h.provider_id = p.provider_id
         cross join lateral (
             select count(*) as probes_24h, count(*) filter (where pp.ok) as ok_24h
             from provider_probe pp
             where pp.provider_id = p.provider_id and pp.at > $2 - interval '24 hours'
         ) s
         where p.tenant_id = $1
         order by p.name",
    )
    .bind(tenant)
    .bind(now)
    .fetch_all(pool)
    .await?;
    let probes: Vec<ProbeRow> = sqlx::query_as(
        "select p.provider_id, r.at, r.ok, r.latency_ms, r.status_code, r.error
         from provider p
         cross join lateral (
             select pp.at, pp.ok, pp.latency_ms, pp.status_code, pp.error from provider_probe pp
             where pp.provider_id = p.provider_id order by pp.at desc limit $2
         ) r
         where p.tenant_id = $1
         order by p.provider_id, r.at desc",
    )
    .bind(tenant)
    .bind(RECENT_PROBES)
    .fetch_all(pool)
    .await?;
    for (provider, at, ok, latency_ms, status_code, error) in probes {
        if let Some(view) = views.iter_mut().find(|v| v.provider_id == provider) {
            view.recent_probes.push(ProbeView {
                at,
                ok,
                latency_ms,
                status_code,
                error,
            });
        }
    }
    Ok(views)
}

/// Every tenant's providers with their recorded state (`unknown` before the first), for
/// operators' metrics; not scoped to a tenant.
pub async fn every_state(pool: &PgPool) -> sqlx::Result<Vec<(String, String, String)>> {
    sqlx::query_as(
        "select p.tenant_id, p.name, coalesce(h.state, 'unknown')
         from provider p left join provider_health h on h.provider_id = p.provider_id
         order by p.tenant_id, p.name",
    )
    .fetch_all(pool)
    .await
}
