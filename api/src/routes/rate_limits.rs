//! A key's own rate limit (admins only): an event on the key, read with the key by every
//! request it authenticates, so that a change applies to its next request.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::put;
use axum::{Json, Router};
use domain::access::{ApiKeyCommand, Permission, RateLimit};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, CommandContext};
use crate::routes::keys::{key_view, KeyView};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/keys/{key_id}/rate-limit",
        put(set_rate_limit).delete(clear_rate_limit),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    requests_per_second: f64,
    burst: u32,
    reason: Option<String>,
}

/// `PUT /v1/keys/{id}/rate-limit`: the key's own limit, replacing the server's default.
async fn set_rate_limit(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RateLimitBody>,
) -> ApiResult<Json<KeyView>> {
    context.caller.require(Permission::ManageKeys)?;
    let context = context.with_reason(body.reason)?;
    let limit = RateLimit::new(body.requests_per_second, body.burst)?;
    app.execute(
        &app.keys,
        &id.to_string(),
        ApiKeyCommand::SetRateLimit { limit },
        &context,
    )
    .await?;
    Ok(Json(key_view(&app, id, &context.caller.tenant).await?))
}

/// `DELETE /v1/keys/{id}/rate-limit`: back to the server's default limit.
async fn clear_rate_limit(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageKeys)?;
    app.execute(
        &app.keys,
        &id.to_string(),
        ApiKeyCommand::ClearRateLimit,
        &context,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
