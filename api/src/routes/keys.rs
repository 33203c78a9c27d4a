//! API keys of the caller's tenant (admins only).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use domain::access::{ApiKeyCommand, ApiKeyEvent, Permission, Role};
use domain::text::DisplayName;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::auth::generate_key;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, CommandContext};
use crate::idempotency::ReplayAs;
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
    let id = context.new_id();
    let tenant = context.caller.tenant.clone();
    let command = ApiKeyCommand::IssueApiKey {
        tenant: tenant.clone(),
        name,
        role,
        key_hash: generated.hash.clone(),
        key_prefix: generated.display_prefix,
    };
    let committed = app.create(&app.keys, &id.to_string(), command, &context).await?;
    // A retry of a request whose first attempt issued the key gets that attempt's key back,
    // and its secret was never stored: say so rather than show a secret that does not match.
    let not_replayable = move || ApiError::KeySecretNotReplayable { key_id: id };
    let issued_now = matches!(
        committed.events.first(),
        Some(ApiKeyEvent::ApiKeyIssued { key_hash, .. }) if *key_hash == generated.hash
    );
    if !issued_now {
        return Err(not_replayable());
    }
    let view = key_view(&app, id, &tenant).await?;
    let location = [(header::LOCATION, format!("/v1/keys/{id}"))];
    Ok((
        StatusCode::CREATED,
        location,
        Extension(ReplayAs::new(move || not_replayable().into_response())),
        Json(json!({ "key": generated.secret, "api_key": view })),
    ))
}

/// `GET /v1/keys`: the tenant's keys, revoked ones included; never their secrets. The
/// listing is recorded in the audit log.
async fn list_keys(State(app): State<AppState>, context: CommandContext) -> ApiResult<impl IntoResponse> {
    let caller = &context.caller;
    caller.require(Permission::ManageKeys)?;
    crate::routes::audit::record_read(&app, &context, "api_keys", Default::default()).await?;
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
