//! Reads of bulk jobs, each scoped to a tenant. The tables are [`super::BulkProjection`]'s.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::page::Page;

/// A bulk job and its counts, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkJobView {
    #[sqlx(rename = "job_id")]
    pub id: Uuid,
    #[cfg_attr(feature = "openapi", schema(example = "prompt.tag"))]
    pub operation: String,
    pub params: Value,
    /// `best_effort` or `atomic`.
    pub mode: String,
    /// The filter the targets were resolved from, when they were.
    pub filter: Option<Value>,
    /// `queued`, `running`, `done`, `failed`, `cancelled`, `compensating` or `compensated`.
    pub status: String,
    pub cancel_requested: bool,
    /// Why an atomic job undid its items: `{"kind": "item_failed", "index": 3}` or
    /// `{"kind": "cancelled"}`.
    pub compensation_cause: Option<Value>,
    pub total: i32,
    /// Items applied (including those later undone).
    pub done: i32,
    pub failed: i32,
    pub skipped: i32,
    pub compensated: i32,
    pub compensation_failed: i32,
    pub submitter_key_id: String,
    pub submitter_name: String,
    /// The job's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str =
    "job_id, operation, params, mode, filter, status, cancel_requested, compensation_cause,
    total, done, failed, skipped, compensated, compensation_failed, submitter_key_id, submitter_name, version,
    created_at, updated_at, finished_at";

/// One item of a job.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkItemView {
    /// The item's place in the job, from 0.
    #[sqlx(rename = "item_index")]
    pub index: i32,
    /// The target's id (or, for configuration, its key).
    pub target: String,
    /// `pending`, `applied`, `failed`, `skipped`, `compensated` or `compensation_failed`.
    pub status: String,
    /// Why the item failed, was skipped, or could not be undone.
    pub error: Option<String>,
    /// The target's version after the item (after its undo, once compensated).
    pub target_version: Option<i64>,
}

/// A job of `tenant`.
pub async fn job(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<BulkJobView>> {
    let sql = format!("select {JOB_COLUMNS} from bulk_job where job_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// A page of `tenant`'s jobs, newest first, after the job `after`.
pub async fn jobs(
    pool: &PgPool,
    tenant: &str,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Page<BulkJobView, Uuid>> {
    let sql = format!(
        "select {JOB_COLUMNS} from bulk_job where tenant_id = $1 and ($2::uuid is null or job_id < $2)
         order by job_id desc limit $3"
    );
    let rows = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(after)
        .bind(Page::<BulkJobView, Uuid>::fetch_size(limit))
        .fetch_all(pool)
        .await?;
    Ok(Page::from_rows(rows, limit, |job: &BulkJobView| job.id))
}

/// A page of a job's items in order, after the item `after`, only those with `status` when
/// given. The caller has checked the job is the tenant's.
pub async fn items(
    pool: &PgPool,
    job: Uuid,
    status: Option<&str>,
    after: Option<i32>,
    limit: i64,
) -> sqlx::Result<Page<BulkItemView, i32>> {
    let rows = sqlx::query_as(
        "select item_index, target, status, error, target_version from bulk_item
         where job_id = $1 and ($2::text is null or status = $2) and item_index > $3
         order by item_index limit $4",
    )
    .bind(job)
    .bind(status)
    .bind(after.unwrap_or(-1))
    .bind(Page::<BulkItemView, i32>::fetch_size(limit))
    .fetch_all(pool)
    .await?;
    Ok(Page::from_rows(rows, limit, |item: &BulkItemView| item.index))
}

/// Jobs of every tenant that have not finished, oldest first: what job runners take up.
pub async fn unfinished(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "select job_id, tenant_id from bulk_job where status in ('queued', 'running', 'compensating')
         order by created_at",
    )
    .fetch_all(pool)
    .await
}
