//! `provider`, `model` and `model_price`: the model registry as the API reads it. This
//! module applies events to the tables; [`queries`] reads them.
//!
//! Applied inline, in the transaction that appends the events, event by event: the registry
//! changes rarely, and each event touches the rows of its own aggregate only.

pub mod queries;

use queries::PriceFigures;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::model::{Model, ModelEvent};
use domain::provider::{Provider, ProviderEvent};
use eventlog::{Projection, ProjectionError, StoredEvent};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct RegistryProjection;

#[async_trait]
impl Projection for RegistryProjection {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["provider", "model", "model_price"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Provider::TYPE, Model::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    /// A price change prices the model's usage records again (`usage::recost`).
    fn also_writes(&self) -> &'static [&'static str] {
        &["usage_record", "usage_rollup"]
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            if event.aggregate_type == Provider::TYPE {
                let payload = event
                    .decode::<ProviderEvent>()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                apply_provider(tx, event, id, payload).await?;
            } else if event.aggregate_type == Model::TYPE {
                let payload = event
                    .decode::<ModelEvent>()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                apply_model(tx, event, id, payload).await?;
            }
        }
        Ok(())
    }
}

async fn apply_provider(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    payload: ProviderEvent,
) -> Result<(), sqlx::Error> {
    match payload {
        ProviderEvent::ProviderRegistered {
            tenant,
            name,
            kind,
            base_url,
            credential_ref,
            enabled,
        } => {
            sqlx::query(
                "insert into provider (provider_id, tenant_id, name, kind, base_url, credential_ref, enabled,
                                       version, created_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            )
            .bind(id)
            .bind(tenant)
            .bind(name)
            .bind(kind.as_str())
            .bind(base_url)
            .bind(credential_ref)
            .bind(enabled)
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ProviderEvent::ProviderUpdated {
            kind,
            base_url,
            credential_ref,
            enabled,
        } => {
            sqlx::query(
                "update provider set kind = $2, base_url = $3, credential_ref = $4, enabled = $5,
                                     version = $6, updated_at = $7
                 where provider_id = $1",
            )
            .bind(id)
            .bind(kind.as_str())
            .bind(base_url)
            .bind(credential_ref)
            .bind(enabled)
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ProviderEvent::ProviderHealthCheckSet { health_check } => {
            sqlx::query(
                "update provider set health_check = $2, version = $3, updated_at = $4 where provider_id = $1",
            )
            .bind(id)
            .bind(sqlx::types::Json(health_check))
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

async fn apply_model(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    payload: ModelEvent,
) -> Result<(), sqlx::Error> {
    // A price change applies to the records from its period's start on.
    let repriced_from = match &payload {
        ModelEvent::ModelPriceSet { effective_from, .. }
        | ModelEvent::ModelPriceCorrected { effective_from, .. }
        | ModelEvent::ModelPriceWithdrawn { effective_from, .. } => Some(*effective_from),
        _ => None,
    };
    apply_model_tables(tx, event, id, payload).await?;
    if let Some(from) = repriced_from {
        let reference: String = sqlx::query_scalar("select reference from model where model_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let periods = queries::price_periods(&mut *tx, &event.tenant_id, std::slice::from_ref(&reference))
            .await?
            .remove(&reference)
            .unwrap_or_default();
        crate::usage::recost::recost(tx, &event.tenant_id, &reference, from, &periods).await?;
    }
    Ok(())
}

async fn apply_model_tables(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    payload: ModelEvent,
) -> Result<(), sqlx::Error> {
    match payload {
        ModelEvent::ModelRegistered {
            tenant,
            provider_id,
            provider_name,
            model_id,
            reference,
            name,
            context_window,
            capabilities,
            default_params,
            fallback,
        } => {
            sqlx::query(
                "insert into model (model_id, tenant_id, reference, provider_id, provider_name, provider_model_id,
                                    name, context_window, capabilities, default_params, fallback, status,
                                    version, created_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'active', $12, $13, $13)",
            )
            .bind(id)
            .bind(tenant)
            .bind(reference)
            .bind(provider_id)
            .bind(provider_name)
            .bind(model_id)
            .bind(name)
            .bind(context_window.map(|w| i32::try_from(w).unwrap_or(i32::MAX)))
            .bind(capabilities)
            .bind(default_params)
            .bind(fallback.map(|f| f.reference))
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        ModelEvent::ModelActivated | ModelEvent::ModelDeactivated => {
            let status = if matches!(payload, ModelEvent::ModelActivated) {
                "active"
            } else {
                "inactive"
            };
            sqlx::query(
                "update model set status = $2, replacement = null, still_referenced = null where model_id = $1",
            )
            .bind(id)
            .bind(status)
            .execute(&mut *tx)
            .await?;
        }
        ModelEvent::ModelDeprecated {
            replacement,
            still_referenced,
        } => {
            sqlx::query(
                "update model set status = 'deprecated', replacement = $2, still_referenced = $3 where model_id = $1",
            )
            .bind(id)
            .bind(replacement.map(|r| r.reference))
            .bind(json!(still_referenced))
            .execute(&mut *tx)
            .await?;
        }
        ModelEvent::ModelPriceSet {
            effective_from,
            price,
        } => {
            sqlx::query(
                "insert into model_price (model_id, tenant_id, effective_from, input_per_mtok, output_per_mtok,
                                          cached_input_per_mtok, currency, recorded_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(&event.tenant_id)
            .bind(effective_from)
            .bind(price.input_per_mtok.value())
            .bind(price.output_per_mtok.value())
            .bind(price.cached_input_per_mtok.map(|a| a.value()))
            .bind(price.currency.as_ref())
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ModelEvent::ModelPriceCorrected {
            effective_from,
            price,
            previous,
        } => {
            sqlx::query(
                "update model_price set input_per_mtok = $3, output_per_mtok = $4, cached_input_per_mtok = $5,
                                        currency = $6, original = coalesce(original, $7), corrected_at = $8
                 where model_id = $1 and effective_from = $2",
            )
            .bind(id)
            .bind(effective_from)
            .bind(price.input_per_mtok.value())
            .bind(price.output_per_mtok.value())
            .bind(price.cached_input_per_mtok.map(|a| a.value()))
            .bind(price.currency.as_ref())
            .bind(json!(PriceFigures::from(&previous)))
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ModelEvent::ModelPriceWithdrawn { effective_from, .. } => {
            sqlx::query("delete from model_price where model_id = $1 and effective_from = $2")
                .bind(id)
                .bind(effective_from)
                .execute(&mut *tx)
                .await?;
        }
        ModelEvent::ModelDefaultParamsSet { default_params, .. } => {
            sqlx::query("update model set default_params = $2 where model_id = $1")
                .bind(id)
                .bind(default_params)
                .execute(&mut *tx)
                .await?;
        }
    }
    sqlx::query("update model set version = $2, updated_at = $3 where model_id = $1")
        .bind(id)
        .bind(event.sequence)
        .bind(event.recorded_at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
