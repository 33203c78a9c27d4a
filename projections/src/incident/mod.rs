//! `incident`: incidents with their timelines as the API reads them. This module applies
//! events to the table; [`queries`] reads it, and finds the changes an incident relates to.
//!
//! Applied inline, in the transaction that appends the events.

pub mod queries;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::incident::{Incident, IncidentEvent, IncidentStatus};
use eventlog::{Projection, ProjectionError, StoredEvent};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct IncidentProjection;

/// One entry of an incident's timeline: its opening, an update or its resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    /// `opened`, `updated` or `resolved`.
    #[cfg_attr(feature = "openapi", schema(example = "updated"))]
    pub kind: String,
    /// The title, the update's message or the resolution's summary.
    pub message: String,
    /// The status from this entry on.
    #[cfg_attr(feature = "openapi", schema(example = "investigating"))]
    pub status: String,
    /// The name of the key that made the entry.
    pub by: Option<String>,
}

/// The timeline entry `event` adds to an incident that was in `status`.
pub fn timeline_entry(
    event: &IncidentEvent,
    status: IncidentStatus,
    at: DateTime<Utc>,
    by: Option<String>,
) -> TimelineEntry {
    let (kind, message, status) = match event {
        IncidentEvent::IncidentOpened { title, .. } => {
            ("opened", title.clone(), IncidentStatus::Investigating)
        }
        IncidentEvent::IncidentUpdated { message, status: new } => {
            ("updated", message.clone(), new.unwrap_or(status))
        }
        IncidentEvent::IncidentResolved { summary } => {
            ("resolved", summary.clone(), IncidentStatus::Resolved)
        }
    };
    TimelineEntry {
        at,
        kind: kind.to_string(),
        message,
        status: status.as_str().to_string(),
        by,
    }
}

#[async_trait]
impl Projection for IncidentProjection {
    fn name(&self) -> &'static str {
        "incident"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["incident"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Incident::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&["actor_name"])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != Incident::TYPE {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let payload = event
                .decode::<IncidentEvent>()
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
    payload: IncidentEvent,
) -> Result<(), sqlx::Error> {
    let by = event.meta("actor_name");
    if let IncidentEvent::IncidentOpened {
        tenant,
        severity,
        title,
        affected,
        opened_by,
        related_changes,
    } = &payload
    {
        let entry = timeline_entry(&payload, IncidentStatus::Investigating, event.recorded_at, by);
        sqlx::query(
            "insert into incident (incident_id, tenant_id, severity, title, status, opened_by, affected,
                                   related_changes, timeline, version, created_at, updated_at)
             values ($1, $2, $3, $4, 'investigating', $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(id)
        .bind(tenant)
        .bind(severity.as_str())
        .bind(title)
        .bind(opened_by.as_str())
        .bind(Json(affected))
        .bind(Json(related_changes))
        .bind(Json(vec![entry]))
        .bind(event.sequence)
        .bind(event.recorded_at)
        .execute(&mut *tx)
        .await?;
        return Ok(());
    }
    let current: Option<String> =
        sqlx::query_scalar("select status from incident where incident_id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let status = current
        .and_then(|s| IncidentStatus::parse("status", &s).ok())
        .unwrap_or_default();
    let entry = timeline_entry(&payload, status, event.recorded_at, by);
    let resolved = matches!(payload, IncidentEvent::IncidentResolved { .. });
    sqlx::query(
        "update incident set status = $2, timeline = timeline || $3, version = $4, updated_at = $5,
                             summary = case when $6 then $7 else summary end,
                             resolved_at = case when $6 then $5 else resolved_at end
         where incident_id = $1",
    )
    .bind(id)
    .bind(&entry.status)
    .bind(Json(vec![&entry]))
    .bind(event.sequence)
    .bind(event.recorded_at)
    .bind(resolved)
    .bind(&entry.message)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
