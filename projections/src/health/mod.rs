//! `provider_health`: each provider's health state as its `ProviderHealth` aggregate last
//! recorded it. This module applies events to the table; [`queries`] reads it, with the
//! probes (`provider_probe`, telemetry the prober writes through `commands::health`).
//!
//! Applied inline, in the transaction that appends the events.

pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::health::{ProviderHealth, ProviderHealthEvent};
use eventlog::{Projection, ProjectionError, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct HealthProjection;

#[async_trait]
impl Projection for HealthProjection {
    fn name(&self) -> &'static str {
        "health"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["provider_health"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[ProviderHealth::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != ProviderHealth::TYPE {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let payload = event
                .decode::<ProviderHealthEvent>()
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            let ProviderHealthEvent::ProviderHealthChanged { tenant, to, .. } = payload;
            sqlx::query(
                "insert into provider_health (provider_id, tenant_id, state, since, version)
                 values ($1, $2, $3, $4, $5)
                 on conflict (provider_id) do update
                     set state = excluded.state, since = excluded.since, version = excluded.version",
            )
            .bind(id)
            .bind(tenant)
            .bind(to.as_str())
            .bind(event.recorded_at)
            .bind(event.sequence)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
