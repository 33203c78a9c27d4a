//! API keys of the caller's tenant (admins only).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::access::{ApiKeyCommand, Permission, Role};
use domain::text::DisplayName;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::auth::{generate_key, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, CommandContext};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{key_id}", delete(revoke_key))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct KeyView {
    id: Uuid,
    name: String,
    role: String,
    prefix: String,
    created_at: DateTime<Utc>,
    created_by: String,
    revoked_at: Option<DateTime<Utc>>,
    /// The key's own rate limit (`requests_per_second`, `burst`); `null`: the default.
    rate_limit: Option<sqlx::types::Json<serde_json::Value>>,
}

const KEY_COLUMNS: &str =
    "key_id as id, name, role, key_prefix as prefix, created_at, created_by, revoked_at,
     case when rate_limit_per_second is null then null
          else json_build_object('requests_per_second', rate_limit_per_second, 'burst', rate_limit_burst) end as rate_limit";

/// One key of `tenant`, as listed.
pub(crate) async fn key_view(app: &AppState, id: Uuid, tenant: &str) -> ApiResult<KeyView> {
    let sql = format!("select {KEY_COLUMNS} from api_key where key_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(&app.pool)
        .await?
        .ok_or(ApiError::NotFound("API key"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    name: String,
    role: String,
    reason: Option<String>,
}

/// `POST /v1/keys`: issue a key; the secret is in this response and nowhere else.
async fn create_key(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageKeys)?;
    let context = context.with_reason(body.reason)?;
    let name = DisplayName::parse("name", &body.name)?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: String| ApiError::invalid("role", e))?;
    let generated = generate_key().map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = Uuid::now_v7();
    let tenant = context.caller.tenant.clone();
    let command = ApiKeyCommand::IssueApiKey {
        tenant: tenant.clone(),
        name,
        role,
        key_hash: generated.hash,
        key_prefix: generated.display_prefix,
    };
    app.create(&app.keys, &id.to_string(), command, &context).await?;
    let view = key_view(&app, id, &tenant).await?;
    let location = [(header::LOCATION, format!("/v1/keys/{id}"))];
    Ok((
        StatusCode::CREATED,
        location,
        Json(json!({ "key": generated.secret, "api_key": view })),
    ))
}

/// `GET /v1/keys`: the tenant's keys, revoked ones included; never their secrets.
async fn list_keys(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::ManageKeys)?;
    let sql = format!("select {KEY_COLUMNS} from api_key where tenant_id = $1 order by key_id");
    let items: Vec<KeyView> = sqlx::query_as(&sql)
        .bind(&caller.tenant)
        .fetch_all(&app.pool)
        .await?;
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /v1/keys/{id}`: revoke a key; it stops working at once.
async fn revoke_key(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageKeys)?;
    app.execute(&app.keys, &id.to_string(), ApiKeyCommand::RevokeApiKey, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
