//! `bulk_job` and `bulk_item`: bulk jobs and their items as the API reads them. This module
//! applies events to the tables; [`queries`] reads them.
//!
//! Applied inline, in the transaction that appends the events.

pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::bulk::{BulkEvent, BulkJob, CompensationResult, ItemResult, Progress};
use eventlog::{Projection, ProjectionError, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct BulkProjection;

#[async_trait]
impl Projection for BulkProjection {
    fn name(&self) -> &'static str {
        "bulk"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["bulk_item", "bulk_job"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[BulkJob::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != BulkJob::TYPE {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let payload = event
                .decode::<BulkEvent>()
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            apply(tx, event, id, payload).await?;
        }
        Ok(())
    }
}

/// One item's new row values: `(index, status, error, target version)`.
type ItemRow = (i32, &'static str, Option<String>, Option<i64>);

async fn apply(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    payload: BulkEvent,
) -> Result<(), sqlx::Error> {
    match payload {
        BulkEvent::BulkJobSubmitted {
            tenant,
            operation,
            params,
            mode,
            targets,
            filter,
            submitter,
        } => {
            sqlx::query(
                "insert into bulk_job (job_id, tenant_id, operation, params, mode, filter, status, total,
                                       submitter_key_id, submitter_name, version, created_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $11)",
            )
            .bind(id)
            .bind(tenant)
            .bind(operation)
            .bind(params)
            .bind(mode.as_str())
            .bind(filter)
            .bind(targets.len() as i32)
            .bind(submitter.key_id)
            .bind(submitter.name)
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "insert into bulk_item (job_id, item_index, target, status)
                 select $1, (n - 1)::integer, target, 'pending'
                 from unnest($2::text[]) with ordinality as t(target, n)",
            )
            .bind(id)
            .bind(targets)
            .execute(&mut *tx)
            .await?;
        }
        BulkEvent::BulkJobStarted => set_status(tx, event, id, "running").await?,
        // Planned items are still pending to a reader: nothing is known to have changed.
        BulkEvent::BulkItemsPlanned { .. } => touch(tx, event, id).await?,
        BulkEvent::BulkItemsProcessed { outcomes, progress } => {
            let rows: Vec<ItemRow> = outcomes
                .into_iter()
                .map(|outcome| {
                    let index = outcome.index as i32;
                    match outcome.result {
                        ItemResult::Applied { version } => (index, "applied", None, Some(version as i64)),
                        ItemResult::Failed { error } => (index, "failed", Some(error), None),
                        ItemResult::Skipped { reason } => (index, "skipped", Some(reason), None),
                        ItemResult::Released => (index, "pending", None, None),
                    }
                })
                .collect();
            update_items(tx, id, rows).await?;
            set_progress(tx, event, id, progress).await?;
        }
        BulkEvent::BulkJobCancelRequested => {
            sqlx::query("update bulk_job set cancel_requested = true, version = $2, updated_at = $3 where job_id = $1")
                .bind(id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(&mut *tx)
                .await?;
        }
        BulkEvent::BulkJobCompensating { because } => {
            sqlx::query(
                "update bulk_job set status = 'compensating', compensation_cause = $2, version = $3, updated_at = $4
                 where job_id = $1",
            )
            .bind(id)
            .bind(serde_json::to_value(because).unwrap_or_default())
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        BulkEvent::BulkItemsCompensated { outcomes, progress } => {
            let rows: Vec<ItemRow> = outcomes
                .into_iter()
                .map(|outcome| {
                    let index = outcome.index as i32;
                    match outcome.result {
                        CompensationResult::Compensated { version } => {
                            (index, "compensated", None, Some(version as i64))
                        }
                        CompensationResult::Failed { error } => {
                            (index, "compensation_failed", Some(error), None)
                        }
                    }
                })
                .collect();
            update_items(tx, id, rows).await?;
            set_progress(tx, event, id, progress).await?;
        }
        BulkEvent::BulkJobFinished { status, progress } => {
            sqlx::query("update bulk_item set status = 'skipped', error = $2 where job_id = $1 and status = 'pending'")
                .bind(id)
                .bind(status.never_started_reason())
                .execute(&mut *tx)
                .await?;
            set_progress(tx, event, id, progress).await?;
            sqlx::query("update bulk_job set status = $2, finished_at = $3 where job_id = $1")
                .bind(id)
                .bind(status.as_str())
                .bind(event.recorded_at)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

async fn update_items(tx: &mut PgConnection, id: Uuid, rows: Vec<ItemRow>) -> Result<(), sqlx::Error> {
    let mut indexes = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut errors = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    for (index, status, error, version) in rows {
        indexes.push(index);
        statuses.push(status);
        errors.push(error);
        versions.push(version);
    }
    sqlx::query(
        "update bulk_item set status = u.status, error = u.error,
                              target_version = coalesce(u.target_version, bulk_item.target_version)
         from unnest($2::integer[], $3::text[], $4::text[], $5::bigint[]) as u(item_index, status, error, target_version)
         where bulk_item.job_id = $1 and bulk_item.item_index = u.item_index",
    )
    .bind(id)
    .bind(indexes)
    .bind(statuses)
    .bind(errors)
    .bind(versions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn set_progress(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    progress: Progress,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update bulk_job set done = $2, failed = $3, skipped = $4, compensated = $5, compensation_failed = $6,
                             version = $7, updated_at = $8
         where job_id = $1",
    )
    .bind(id)
    .bind(progress.done as i32)
    .bind(progress.failed as i32)
    .bind(progress.skipped as i32)
    .bind(progress.compensated as i32)
    .bind(progress.compensation_failed as i32)
    .bind(event.sequence)
    .bind(event.recorded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn set_status(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update bulk_job set status = $2, version = $3, updated_at = $4 where job_id = $1")
        .bind(id)
        .bind(status)
        .bind(event.sequence)
        .bind(event.recorded_at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn touch(tx: &mut PgConnection, event: &StoredEvent, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update bulk_job set version = $2, updated_at = $3 where job_id = $1")
        .bind(id)
        .bind(event.sequence)
        .bind(event.recorded_at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
