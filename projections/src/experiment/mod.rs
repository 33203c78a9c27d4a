//! `experiment`: experiments as the API reads them. This module applies events to the
//! table; [`queries`] reads it, [`live`] holds what assignment needs in memory, and
//! [`results`] reads the observations an experiment's figures come from.
//!
//! Applied inline, in the transaction that appends the events.

pub mod live;
pub mod queries;
pub mod results;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::experiment::{Experiment, ExperimentEvent, ExperimentSpec};
use eventlog::{Projection, ProjectionError, StoredEvent};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct ExperimentProjection;

#[async_trait]
impl Projection for ExperimentProjection {
    fn name(&self) -> &'static str {
        "experiment"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["experiment"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Experiment::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != Experiment::TYPE {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let payload = event
                .decode::<ExperimentEvent>()
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
    payload: ExperimentEvent,
) -> Result<(), sqlx::Error> {
    let status = match &payload {
        ExperimentEvent::ExperimentCreated { tenant, spec, salt } => {
            sqlx::query(
                "insert into experiment (experiment_id, tenant_id, name, status, spec, salt, version, created_at,
                                         updated_at)
                 values ($1, $2, $3, 'draft', $4, $5, $6, $7, $7)",
            )
            .bind(id)
            .bind(tenant)
            .bind(&spec.name)
            .bind(json!(spec))
            .bind(salt)
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        ExperimentEvent::ExperimentAllocationChanged {
            weights,
            targeting,
            while_running,
            ..
        } => {
            let stored: sqlx::types::Json<ExperimentSpec> =
                sqlx::query_scalar("select spec from experiment where experiment_id = $1 for update")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            let mut spec = stored.0;
            spec.reallocate(weights, targeting.clone());
            sqlx::query(
                "update experiment set spec = $2, reallocated_while_running = reallocated_while_running or $3,
                                       version = $4, updated_at = $5
                 where experiment_id = $1",
            )
            .bind(id)
            .bind(json!(spec))
            .bind(while_running)
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        ExperimentEvent::ExperimentStarted | ExperimentEvent::ExperimentResumed => "running",
        ExperimentEvent::ExperimentPaused { .. } => "paused",
        ExperimentEvent::ExperimentStopped => "stopped",
        ExperimentEvent::ExperimentConcluded { .. } => "concluded",
    };
    let (winner, promotion) = match &payload {
        ExperimentEvent::ExperimentConcluded { winner, promotion } => {
            (Some(winner.clone()), promotion.as_ref().map(|p| json!(p)))
        }
        _ => (None, None),
    };
    let started = matches!(payload, ExperimentEvent::ExperimentStarted);
    sqlx::query(
        "update experiment set status = $2, winner = coalesce($3, winner), version = $4, updated_at = $5,
                               started_at = case when $6 then $5 else started_at end,
                               promotion = coalesce($7, promotion)
         where experiment_id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(winner)
    .bind(event.sequence)
    .bind(event.recorded_at)
    .bind(started)
    .bind(promotion)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
