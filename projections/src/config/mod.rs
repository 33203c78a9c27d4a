//! `config_entry`: each configuration key with its schema and value, as the API reads them.
//! This module applies events to the table; [`queries`] reads it (and, for the whole
//! configuration at a past instant, the log).
//!
//! Applied inline, in the transaction that appends the events: a key's next read must see
//! the value just set, and each event touches its own key's row only.

pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::config::{ConfigEntry, ConfigEvent, ConfigKey};
use eventlog::{Projection, ProjectionError, StoredEvent};
use sqlx::PgConnection;

pub struct ConfigProjection;

#[async_trait]
impl Projection for ConfigProjection {
    fn name(&self) -> &'static str {
        "config"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["config_entry", "config_schedule"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[ConfigEntry::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&["actor_name", "reason"])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != ConfigEntry::TYPE {
                continue;
            }
            let payload = event
                .decode::<ConfigEvent>()
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            let key = ConfigKey::in_aggregate_id(&event.aggregate_id);
            // What the event changes in the key's row: its schema, its value, or neither;
            // every event moves its version.
            let (schema, value) = match &payload {
                ConfigEvent::ConfigSchemaDeclared { schema, .. } => (Some(Some(schema.clone())), None),
                ConfigEvent::ConfigValueSet { value, .. }
                | ConfigEvent::ConfigScheduleApplied { value, .. } => (None, Some(Some(value.clone()))),
                ConfigEvent::ConfigValueCleared { .. } => (None, Some(None)),
                ConfigEvent::ConfigChangeScheduled { .. } | ConfigEvent::ConfigScheduleCancelled { .. } => {
                    (None, None)
                }
            };
            sqlx::query(
                "insert into config_entry (tenant_id, key, schema, value, version, updated_at)
                 values ($1, $2, $3, $4, $5, $6)
                 on conflict (tenant_id, key) do update
                 set schema = case when $7 then excluded.schema else config_entry.schema end,
                     value = case when $8 then excluded.value else config_entry.value end,
                     version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(&event.tenant_id)
            .bind(key)
            .bind(schema.clone().flatten())
            .bind(value.clone().flatten())
            .bind(event.sequence)
            .bind(event.recorded_at)
            .bind(schema.is_some())
            .bind(value.is_some())
            .execute(&mut *tx)
            .await?;
            apply_schedule(tx, event, key, payload).await?;
        }
        Ok(())
    }
}

/// The schedule rows a configuration event creates or resolves.
async fn apply_schedule(
    tx: &mut PgConnection,
    event: &StoredEvent,
    key: &str,
    payload: ConfigEvent,
) -> Result<(), sqlx::Error> {
    match payload {
        ConfigEvent::ConfigChangeScheduled {
            schedule, value, at, ..
        } => {
            sqlx::query(
                "insert into config_schedule (schedule_id, tenant_id, key, value, at, state, scheduled_by, reason,
                                              created_at)
                 values ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)",
            )
            .bind(schedule)
            .bind(&event.tenant_id)
            .bind(key)
            .bind(value)
            .bind(at)
            .bind(event.meta("actor_name"))
            .bind(event.meta("reason"))
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ConfigEvent::ConfigScheduleApplied { schedule, .. } => {
            sqlx::query(
                "update config_schedule set state = 'applied', resolved_at = $2 where schedule_id = $1",
            )
            .bind(schedule)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ConfigEvent::ConfigScheduleCancelled {
            schedule,
            because,
            conflicting_version,
        } => {
            let because = serde_json::to_value(because).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query(
                "update config_schedule set state = 'cancelled', cancelled_because = $2 #>> '{}',
                        conflicting_version = $3, resolved_at = $4
                 where schedule_id = $1",
            )
            .bind(schedule)
            .bind(because)
            .bind(conflicting_version.map(|v| v as i64))
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ConfigEvent::ConfigSchemaDeclared { .. }
        | ConfigEvent::ConfigValueSet { .. }
        | ConfigEvent::ConfigValueCleared { .. } => {}
    }
    Ok(())
}
