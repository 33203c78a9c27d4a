//! Reads of experiments, each scoped to a tenant (but [`every_experiment`], which loads
//! the process's memory). The table is [`super::ExperimentProjection`]'s.

use chrono::{DateTime, Utc};
use domain::experiment::{ExperimentSpec, ExperimentStatus, Promotion};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// An experiment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExperiment {
    pub id: Uuid,
    pub tenant: String,
    pub spec: ExperimentSpec,
    pub salt: String,
    pub status: ExperimentStatus,
    pub winner: Option<String>,
    pub promotion: Option<Promotion>,
    pub reallocated_while_running: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
}

/// An experiment as the API shows it: its definition, status and winner.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentView {
    pub id: Uuid,
    /// `draft`, `running`, `paused`, `stopped` or `concluded`.
    pub status: String,
    /// The definition: name, hypothesis, prompt, variants, metrics, targeting.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: ExperimentSpec,
    pub winner: Option<String>,
    /// What concluding did to promote the winner: the change, the version it produced, or
    /// the change request awaiting approval.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub promotion: Option<Promotion>,
    /// Its weights or targeting changed after it started: units before and after the change
    /// were split differently, so read the sample ratio check and the comparisons with care.
    pub reallocated_while_running: bool,
    /// The experiment's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
}

impl StoredExperiment {
    pub fn view(&self) -> ExperimentView {
        ExperimentView {
            id: self.id,
            status: self.status.as_str().to_string(),
            spec: self.spec.clone(),
            winner: self.winner.clone(),
            promotion: self.promotion.clone(),
            reallocated_while_running: self.reallocated_while_running,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    experiment_id: Uuid,
    tenant_id: String,
    spec: Json<ExperimentSpec>,
    salt: String,
    status: String,
    winner: Option<String>,
    promotion: Option<Json<Promotion>>,
    reallocated_while_running: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
}

impl From<Row> for StoredExperiment {
    fn from(row: Row) -> Self {
        use ExperimentStatus::*;
        let status = [Draft, Running, Paused, Stopped, Concluded]
            .into_iter()
            .find(|status| status.as_str() == row.status)
            .unwrap_or(Draft);
        Self {
            id: row.experiment_id,
            tenant: row.tenant_id,
            spec: row.spec.0,
            salt: row.salt,
            status,
            winner: row.winner,
            promotion: row.promotion.map(|p| p.0),
            reallocated_while_running: row.reallocated_while_running,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
        }
    }
}

const COLUMNS: &str =
    "experiment_id, tenant_id, spec, salt, status, winner, promotion, reallocated_while_running, version, created_at, \
     updated_at, started_at";

/// An experiment of `tenant`.
pub async fn experiment(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<StoredExperiment>> {
    let sql = format!("select {COLUMNS} from experiment where experiment_id = $1 and tenant_id = $2");
    let row: Option<Row> = sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(StoredExperiment::from))
}

/// The experiments of `tenant`, newest first; only those with `status` when given.
pub async fn experiments(
    pool: &PgPool,
    tenant: &str,
    status: Option<&str>,
) -> sqlx::Result<Vec<StoredExperiment>> {
    let sql = format!(
        "select {COLUMNS} from experiment where tenant_id = $1 and ($2::text is null or status = $2)
         order by created_at desc, experiment_id desc limit 1000"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(status)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(StoredExperiment::from).collect())
}

/// Every tenant's experiments, to load the process's memory.
pub async fn every_experiment(executor: impl PgExecutor<'_>) -> sqlx::Result<Vec<StoredExperiment>> {
    let sql = format!("select {COLUMNS} from experiment");
    let rows: Vec<Row> = sqlx::query_as(&sql).fetch_all(executor).await?;
    Ok(rows.into_iter().map(StoredExperiment::from).collect())
}
