//! Reads of protections and change requests, each scoped to a tenant. The tables are
//! [`super::ApprovalProjection`]'s.

use chrono::{DateTime, Utc};
use domain::approval::{ProposedChange, ProtectedScope};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A protected scope as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProtectionView {
    /// `config:<prefix>` or `prompt:<id>:<label>`.
    #[cfg_attr(feature = "openapi", schema(example = "config:limits."))]
    pub scope: String,
    pub created_at: DateTime<Utc>,
}

/// Every protected scope of `tenant`.
pub async fn protections(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<ProtectionView>> {
    sqlx::query_as("select scope, created_at from protection where tenant_id = $1 order by scope")
        .bind(tenant)
        .fetch_all(pool)
        .await
}

/// The first protected scope of `tenant` that covers `change`, if any.
pub async fn protecting(
    pool: &PgPool,
    tenant: &str,
    change: &ProposedChange,
) -> sqlx::Result<Option<ProtectedScope>> {
    let definitions: Vec<Value> =
        sqlx::query_scalar("select definition from protection where tenant_id = $1 order by scope")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    Ok(definitions
        .into_iter()
        .filter_map(|definition| serde_json::from_value::<ProtectedScope>(definition).ok())
        .find(|scope| scope.covers(change)))
}

/// A change request as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeRequestView {
    pub id: Uuid,
    /// What it does once approved: `{kind: set_config|clear_config|move_prompt_label|remove_prompt_label, …}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub change: Value,
    /// The protected scope that made it a request.
    pub scope: String,
    /// `proposed`, `approved` (and applied) or `rejected`.
    #[cfg_attr(feature = "openapi", schema(example = "proposed"))]
    pub state: String,
    pub proposer_key_id: String,
    pub proposer_name: String,
    /// Why it was proposed.
    pub reason: Option<String>,
    pub decided_by_key_id: Option<String>,
    pub decided_by_name: Option<String>,
    /// Why it was approved or rejected.
    pub decision_reason: Option<String>,
    /// For an approved request: the version of its target the change produced.
    pub applied_version: Option<i64>,
    /// The request's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

const REQUEST_COLUMNS: &str =
    "request_id as id, change, scope, state, proposer_key_id, proposer_name, reason, \
     decided_by_key_id, decided_by_name, decision_reason, applied_version, version, created_at, decided_at";

/// A change request of `tenant`.
pub async fn change_request(
    pool: &PgPool,
    tenant: &str,
    id: Uuid,
) -> sqlx::Result<Option<ChangeRequestView>> {
    let sql =
        format!("select {REQUEST_COLUMNS} from change_request where request_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The change requests of `tenant` in `state` when given, newest first.
pub async fn change_requests(
    pool: &PgPool,
    tenant: &str,
    state: Option<&str>,
) -> sqlx::Result<Vec<ChangeRequestView>> {
    let sql = format!(
        "select {REQUEST_COLUMNS} from change_request
         where tenant_id = $1 and ($2::text is null or state = $2)
         order by created_at desc, request_id"
    );
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(state)
        .fetch_all(pool)
        .await
}
