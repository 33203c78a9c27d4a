//! `flag`: feature flags as the API lists and reads them. This module applies events to the
//! table; [`queries`] reads it; [`live`] keeps every flag in memory, current with the log,
//! for evaluation.
//!
//! Applied inline, in the transaction that appends the events.

pub mod live;
pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::flag::{Flag, FlagEvent};
use eventlog::{Projection, ProjectionError, StoredEvent};
use serde_json::json;
use sqlx::PgConnection;

pub struct FlagProjection;

#[async_trait]
impl Projection for FlagProjection {
    fn name(&self) -> &'static str {
        "flag"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["flag"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Flag::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != Flag::TYPE {
                continue;
            }
            let FlagEvent::FlagSet {
                tenant,
                key,
                salt,
                settings,
                ..
            } = event
                .decode::<FlagEvent>()
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            sqlx::query(
                "insert into flag (tenant_id, key, salt, enabled, rollout, variants, version, updated_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8)
                 on conflict (tenant_id, key) do update
                 set enabled = excluded.enabled, rollout = excluded.rollout, variants = excluded.variants,
                     version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(key)
            .bind(salt)
            .bind(settings.enabled)
            .bind(settings.rollout as i32)
            .bind(json!(settings.variants))
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
