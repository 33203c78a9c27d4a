//! Reads of export jobs, each scoped to a tenant. The table is [`super::ExportProjection`]'s.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::page::Page;

/// An export job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportView {
    #[sqlx(rename = "export_id")]
    pub id: Uuid,
    #[cfg_attr(feature = "openapi", schema(example = "spend"))]
    pub report: String,
    #[cfg_attr(feature = "openapi", schema(example = "csv"))]
    pub format: String,
    pub params: Value,
    /// The past instant asked for, when one was.
    #[sqlx(rename = "requested_as_of")]
    pub as_of: Option<DateTime<Utc>>,
    /// `queued`, `running`, `done`, `failed`, `cancelled` or `expired`.
    pub status: String,
    /// The global cursor of the last event the file reflects (fixed when the job starts).
    #[sqlx(rename = "data_cursor")]
    pub cursor: Option<String>,
    /// The instant the file reflects.
    #[sqlx(rename = "data_instant")]
    pub instant: Option<DateTime<Utc>>,
    pub attempts: i32,
    #[sqlx(flatten)]
    pub progress: ExportProgress,
    /// The name the download is offered under.
    pub file_name: Option<String>,
    pub size_bytes: Option<i64>,
    /// SHA-256 (hex) of the file's bytes.
    pub content_sha256: Option<String>,
    /// SHA-256 (hex) of the report's NDJSON form: the same for every format of the same
    /// report, parameters and cursor.
    pub data_sha256: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Why the job failed.
    pub failure: Option<String>,
    pub requester_key_id: String,
    pub requester_name: String,
    /// The job's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How far a job has come.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportProgress {
    /// Rows written so far (all of them, once done).
    #[sqlx(rename = "rows_written")]
    pub rows: i64,
    /// How much of the report is written, when its size was known in advance.
    pub percent: Option<i16>,
}

const COLUMNS: &str = "export_id, report, format, params, requested_as_of, status, data_cursor, data_instant,
    attempts, rows_written, percent, file_name, size_bytes, content_sha256, data_sha256, expires_at, failure,
    requester_key_id, requester_name, version, created_at, updated_at, finished_at";

/// A job of `tenant`.
pub async fn export(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<ExportView>> {
    let sql = format!("select {COLUMNS} from export_job where export_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// A page of `tenant`'s jobs, newest first, after the job `after`.
pub async fn exports(
    pool: &PgPool,
    tenant: &str,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Page<ExportView, Uuid>> {
    let sql = format!(
        "select {COLUMNS} from export_job where tenant_id = $1 and ($2::uuid is null or export_id < $2)
         order by export_id desc limit $3"
    );
    let rows = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(after)
        .bind(Page::<ExportView, Uuid>::fetch_size(limit))
        .fetch_all(pool)
        .await?;
    Ok(Page::from_rows(rows, limit, |job: &ExportView| job.id))
}

/// Jobs of every tenant to run or resume, oldest first: what export runners take up.
pub async fn unfinished(pool: &PgPool) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select export_id from export_job where status in ('queued', 'running') order by created_at",
    )
    .fetch_all(pool)
    .await
}

/// Finished jobs whose files are due for deletion at `now`: `(job, tenant, format)`.
pub async fn expired(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<Vec<(Uuid, String, String)>> {
    sqlx::query_as(
        "select export_id, tenant_id, format from export_job where status = 'done' and expires_at <= $1",
    )
    .bind(now)
    .fetch_all(pool)
    .await
}
