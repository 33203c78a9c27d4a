//! `export_job`: export jobs as the API reads them. This module applies events to the
//! table; [`queries`] reads it.
//!
//! Applied inline, in the transaction that appends the events.

pub mod queries;
pub mod sources;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::export::{ExportEvent, ExportJob};
use eventlog::{Projection, ProjectionError, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct ExportProjection;

#[async_trait]
impl Projection for ExportProjection {
    fn name(&self) -> &'static str {
        "export"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["export_job"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[ExportJob::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != ExportJob::TYPE {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let payload = event
                .decode::<ExportEvent>()
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            apply(tx, event, id, payload).await?;
        }
        Ok(())
    }
}

async fn apply(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    payload: ExportEvent,
) -> Result<(), sqlx::Error> {
    let update = |sql: &'static str| {
        sqlx::query(sql)
            .bind(id)
            .bind(event.sequence)
            .bind(event.recorded_at)
    };
    match payload {
        ExportEvent::ExportRequested {
            tenant,
            report,
            format,
            params,
            as_of,
            requester,
        } => {
            sqlx::query(
                "insert into export_job (export_id, tenant_id, report, format, params, requested_as_of, status,
                                         requester_key_id, requester_name, version, created_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $10)",
            )
            .bind(id)
            .bind(tenant)
            .bind(report)
            .bind(format)
            .bind(params)
            .bind(as_of)
            .bind(requester.key_id)
            .bind(requester.name)
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ExportEvent::ExportStarted { snapshot, attempt } => {
            update(
                "update export_job set status = 'running', data_cursor = $4, data_instant = $5, attempts = $6,
                        rows_written = 0, percent = null, version = $2, updated_at = $3
                 where export_id = $1",
            )
            .bind(snapshot.cursor)
            .bind(snapshot.instant)
            .bind(attempt as i32)
            .execute(&mut *tx)
            .await?;
        }
        ExportEvent::ExportProgressed { rows, percent } => {
            update(
                "update export_job set rows_written = $4, percent = $5, version = $2, updated_at = $3
                 where export_id = $1",
            )
            .bind(rows as i64)
            .bind(percent.map(i16::from))
            .execute(&mut *tx)
            .await?;
        }
        ExportEvent::ExportCompleted { file } => {
            update(
                "update export_job set status = 'done', rows_written = $4, percent = 100, file_name = $5,
                        size_bytes = $6, content_sha256 = $7, data_sha256 = $8, expires_at = $9,
                        version = $2, updated_at = $3, finished_at = $3
                 where export_id = $1",
            )
            .bind(file.rows as i64)
            .bind(file.file_name)
            .bind(file.size_bytes as i64)
            .bind(file.content_sha256)
            .bind(file.data_sha256)
            .bind(file.expires_at)
            .execute(&mut *tx)
            .await?;
        }
        ExportEvent::ExportFailed { reason } => {
            update(
                "update export_job set status = 'failed', failure = $4, version = $2, updated_at = $3,
                        finished_at = $3
                 where export_id = $1",
            )
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        ExportEvent::ExportCancelled => {
            update(
                "update export_job set status = 'cancelled', version = $2, updated_at = $3, finished_at = $3
                 where export_id = $1",
            )
            .execute(&mut *tx)
            .await?;
        }
        ExportEvent::ExportExpired => {
            update("update export_job set status = 'expired', version = $2, updated_at = $3 where export_id = $1")
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}
