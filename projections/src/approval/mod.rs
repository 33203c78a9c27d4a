//! `protection` and `change_request`: protected scopes and the changes waiting for another
//! key's approval. This module applies events to the tables; [`queries`] reads them.
//!
//! Applied inline, in the transaction that appends the events: a change checks the
//! protections as they are, and a request's answer shows what it committed.

pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::approval::{ChangeRequest, ChangeRequestEvent, Protection, ProtectionEvent};
use eventlog::{Projection, ProjectionError, StoredEvent};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct ApprovalProjection;

#[async_trait]
impl Projection for ApprovalProjection {
    fn name(&self) -> &'static str {
        "approval"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["protection", "change_request"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Protection::TYPE, ChangeRequest::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&["reason"])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type == Protection::TYPE {
                let payload = event
                    .decode::<ProtectionEvent>()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                apply_protection(tx, event, payload).await?;
            } else if event.aggregate_type == ChangeRequest::TYPE {
                let payload = event
                    .decode::<ChangeRequestEvent>()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                apply_request(tx, event, payload).await?;
            }
        }
        Ok(())
    }
}

async fn apply_protection(
    tx: &mut PgConnection,
    event: &StoredEvent,
    payload: ProtectionEvent,
) -> Result<(), sqlx::Error> {
    // The aggregate id is `<tenant>:<scope>`.
    let scope = event
        .aggregate_id
        .split_once(':')
        .map_or(event.aggregate_id.as_str(), |(_, scope)| scope);
    match payload {
        ProtectionEvent::ScopeProtected {
            scope: definition, ..
        } => {
            sqlx::query(
                "insert into protection (tenant_id, scope, definition, version, created_at)
                 values ($1, $2, $3, $4, $5)
                 on conflict (tenant_id, scope) do update
                 set definition = excluded.definition, version = excluded.version, created_at = excluded.created_at",
            )
            .bind(&event.tenant_id)
            .bind(scope)
            .bind(json!(definition))
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ProtectionEvent::ScopeUnprotected => {
            sqlx::query("delete from protection where tenant_id = $1 and scope = $2")
                .bind(&event.tenant_id)
                .bind(scope)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

async fn apply_request(
    tx: &mut PgConnection,
    event: &StoredEvent,
    payload: ChangeRequestEvent,
) -> Result<(), sqlx::Error> {
    let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
        return Ok(());
    };
    match payload {
        ChangeRequestEvent::ChangeProposed {
            change,
            scope,
            proposer,
            ..
        } => {
            sqlx::query(
                "insert into change_request (request_id, tenant_id, change, scope, state, proposer_key_id,
                                             proposer_name, reason, version, created_at)
                 values ($1, $2, $3, $4, 'proposed', $5, $6, $7, $8, $9)",
            )
            .bind(id)
            .bind(&event.tenant_id)
            .bind(json!(change))
            .bind(scope.text())
            .bind(proposer.key_id)
            .bind(proposer.name)
            .bind(event.meta("reason"))
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        ChangeRequestEvent::ChangeApproved {
            approver,
            applied_version,
        } => {
            decide(
                tx,
                event,
                id,
                "approved",
                &approver.key_id,
                &approver.name,
                Some(applied_version),
            )
            .await?;
        }
        ChangeRequestEvent::ChangeRejected { rejecter } => {
            decide(tx, event, id, "rejected", &rejecter.key_id, &rejecter.name, None).await?;
        }
    }
    Ok(())
}

async fn decide(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    state: &str,
    key_id: &str,
    name: &str,
    applied_version: Option<u64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update change_request
         set state = $2, decided_by_key_id = $3, decided_by_name = $4, decision_reason = $5,
             applied_version = $6, version = $7, decided_at = $8
         where request_id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(key_id)
    .bind(name)
    .bind(event.meta("reason"))
    .bind(applied_version.map(|v| v as i64))
    .bind(event.sequence)
    .bind(event.recorded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
