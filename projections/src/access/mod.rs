//! `tenant` and `api_key`: who may call the API. Low volume, so applied event by event.
//! This module applies events to the tables; [`queries`] reads them.
//!
//! Applied inline, in the transaction that appends the events: a revoked key stops working
//! with the commit of its revocation, which is durable before the revocation is answered.

pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::access::{ApiKey, ApiKeyEvent, Tenant, TenantEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use eventlog::StoredEvent;
use eventlog::{Projection, ProjectionError};

pub struct AccessProjection;

#[async_trait]
impl Projection for AccessProjection {
    fn name(&self) -> &'static str {
        "access"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Tenant::TYPE, ApiKey::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&["actor_name"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tenant", "api_key"]
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type == Tenant::TYPE {
                let TenantEvent::TenantCreated { slug } = event
                    .decode()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                sqlx::query(
                    "insert into tenant (tenant_id, created_at) values ($1, $2) on conflict do nothing",
                )
                .bind(slug)
                .bind(event.recorded_at)
                .execute(&mut *tx)
                .await?;
            } else if event.aggregate_type == ApiKey::TYPE {
                let Ok(key_id) = event.aggregate_id.parse::<Uuid>() else {
                    continue;
                };
                match event
                    .decode()
                    .map_err(|e| ProjectionError::undecodable(event, e))?
                {
                    ApiKeyEvent::ApiKeyIssued {
                        tenant,
                        name,
                        role,
                        key_hash,
                        key_prefix,
                    } => {
                        sqlx::query(
                            "insert into api_key (key_id, tenant_id, name, role, key_hash, key_prefix, created_at, created_by)
                             values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing",
                        )
                        .bind(key_id)
                        .bind(tenant)
                        .bind(name)
                        .bind(role.as_str())
                        .bind(key_hash)
                        .bind(key_prefix)
                        .bind(event.recorded_at)
                        .bind(event.meta("actor_name").unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                    }
                    ApiKeyEvent::ApiKeyRevoked => {
                        sqlx::query("update api_key set revoked_at = $2 where key_id = $1")
                            .bind(key_id)
                            .bind(event.recorded_at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    ApiKeyEvent::ApiKeyRateLimitSet {
                        requests_per_second,
                        burst,
                    } => {
                        sqlx::query(
                            "update api_key set rate_limit_per_second = $2, rate_limit_burst = $3 where key_id = $1",
                        )
                        .bind(key_id)
                        .bind(requests_per_second)
                        .bind(i32::try_from(burst).unwrap_or(i32::MAX))
                        .execute(&mut *tx)
                        .await?;
                    }
                    ApiKeyEvent::ApiKeyRateLimitCleared => {
                        sqlx::query(
                            "update api_key set rate_limit_per_second = null, rate_limit_burst = null where key_id = $1",
                        )
                        .bind(key_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }
}
