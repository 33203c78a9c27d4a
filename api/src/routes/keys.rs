//! API keys of the caller's tenant (admins only).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use domain::access::{ApiKeyCommand, ApiKeyEvent, Permission, Role};
use domain::text::DisplayName;
use projections::access::queries::{self as access, KeyView, RoleName};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::generate_key;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ChangeHeaders, CommandContext, CreateHeaders};
use crate::idempotency::ReplayAs;
use crate::openapi::{Conflict, NameText, NotFound, ReasonText, ValidationFailed};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

/// A newly issued key: `key` is the secret, shown in this response and nowhere else.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `create_key` builds
struct IssuedKey {
    #[schema(example = "aipm_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")]
    key: String,
    api_key: KeyView,
}

/// The tenant's keys.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_keys` builds
struct KeyList {
    items: Vec<KeyView>,
}

/// One key of `tenant`, as listed.
pub(crate) async fn key_view(app: &AppState, id: Uuid, tenant: &str) -> ApiResult<KeyView> {
    access::key(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("API key"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    #[schema(value_type = NameText)]
    name: String,
    #[schema(value_type = RoleName)]
    role: String,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/keys`: issue a key; the secret is in this response and nowhere else.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    params(CreateHeaders),
    request_body = CreateKeyBody,
    responses(
        (status = 201, description = "The key; its secret is shown only here", body = IssuedKey,
            headers(("Location" = String, description = "The key's URL"))),
        (status = 422, response = ValidationFailed),
    )
)]
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
    // The key is exactly what its event says: no need to read it back.
    let issued = committed.events.into_iter().next().zip(committed.recorded_at);
    let Some(view) = issued.and_then(|(event, created_at)| {
        KeyView::issued(id, event, created_at, context.metadata.actor_name.clone())
    }) else {
        return Err(ApiError::Internal(
            "issuing a key recorded no ApiKeyIssued".into(),
        ));
    };
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
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses(
        (status = 200, description = "The tenant's keys, oldest first", body = KeyList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_keys(State(app): State<AppState>, context: CommandContext) -> ApiResult<impl IntoResponse> {
    let caller = &context.caller;
    caller.require(Permission::ManageKeys)?;
    crate::routes::audit::record_read(&app, &context, "api_keys", Default::default()).await?;
    let items = access::keys(&app.pool, &caller.tenant).await?;
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /v1/keys/{id}`: revoke a key; it stops working at once.
#[utoipa::path(
    delete,
    path = "/v1/keys/{key_id}",
    tag = "keys",
    params(("key_id" = Uuid, Path, description = "The key's id"), ChangeHeaders),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
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
