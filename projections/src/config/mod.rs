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
        &["config_entry"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[ConfigEntry::TYPE])
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
            // Each statement takes: tenant, key, the schema or value, version, instant.
            let (sql, document) = match payload {
                ConfigEvent::ConfigSchemaDeclared { schema, .. } => (
                    "insert into config_entry (tenant_id, key, schema, value, version, updated_at)
                     values ($1, $2, $3, null, $4, $5)
                     on conflict (tenant_id, key) do update
                     set schema = excluded.schema, version = excluded.version, updated_at = excluded.updated_at",
                    Some(schema),
                ),
                ConfigEvent::ConfigValueSet { value, .. } => (
                    "insert into config_entry (tenant_id, key, schema, value, version, updated_at)
                     values ($1, $2, null, $3, $4, $5)
                     on conflict (tenant_id, key) do update
                     set value = excluded.value, version = excluded.version, updated_at = excluded.updated_at",
                    Some(value),
                ),
                ConfigEvent::ConfigValueCleared { .. } => (
                    "update config_entry set value = $3, version = $4, updated_at = $5
                     where tenant_id = $1 and key = $2",
                    None,
                ),
            };
            sqlx::query(sql)
                .bind(&event.tenant_id)
                .bind(key)
                .bind(document)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}
