//! A key's own rate limit (admins only): an event on the key, read with the key by every
//! request it authenticates, so that a change applies to its next request.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use domain::access::{ApiKeyCommand, Permission, RateLimit};
use projections::access::queries::KeyView;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ChangeHeaders, CommandContext};
use crate::openapi::{Conflict, NotFound, ReasonText, ValidationFailed};
use crate::routes::keys::key_view;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(set_rate_limit, clear_rate_limit))
}

/// A key's own rate limit (`domain::access::RateLimit`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    /// Requests per second on average; fractions allowed (0.5: one every two seconds).
    #[schema(exclusive_minimum = 0, maximum = 1000000, example = 20)]
    requests_per_second: f64,
    /// Requests allowed at once after a quiet spell.
    #[schema(minimum = 1, maximum = 1000000, example = 100)]
    burst: u32,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/keys/{id}/rate-limit`: the key's own limit, replacing the server's default.
#[utoipa::path(
    put,
    path = "/v1/keys/{key_id}/rate-limit",
    tag = "keys",
    params(("key_id" = Uuid, Path, description = "The key's id"), ChangeHeaders),
    request_body = RateLimitBody,
    responses(
        (status = 200, description = "The key with its own limit", body = KeyView),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/v1/keys/{key_id}/rate-limit",
    tag = "keys",
    params(("key_id" = Uuid, Path, description = "The key's id"), ChangeHeaders),
    responses(
        (status = 204, description = "The key is back on the default limit"),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
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
