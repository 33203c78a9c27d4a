//! Four-eyes approval: protected scopes, and change requests another key must approve.
//!
//! A change to something protected is not made: it becomes a change request (`202`). When
//! another key approves it, the change is made as that key's, its events caused by the
//! request, and the approval records the version it produced.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::approval::{
    ChangeRequest, ChangeRequestCommand, ProposedChange, ProtectedScope, ProtectionCommand, Reviewer,
};
use domain::config::{ConfigCommand, ConfigKey};
use domain::prompt::PromptCommand;
use domain::text::Slug;
use projections::approval::queries::{self as approvals, ChangeRequestView, ProtectionView};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext};
use crate::openapi::{Conflict, NotFound, ReasonText, ValidationFailed};
use crate::routes::history::{self, HistoryPage, HistoryQuery};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_protections))
        .routes(routes!(protect, unprotect))
        .routes(routes!(list_change_requests))
        .routes(routes!(get_change_request))
        .routes(routes!(change_request_history))
        .routes(routes!(approve))
        .routes(routes!(reject))
}

/// If `change` touches a protected scope of the caller's tenant, records it as a change
/// request and answers `202` with it; otherwise `None`, and the caller makes the change.
pub async fn propose_if_protected(
    app: &AppState,
    context: &CommandContext,
    change: ProposedChange,
) -> ApiResult<Option<Response>> {
    let Some(view) = propose_when_protected(app, context, change).await? else {
        return Ok(None);
    };
    let location = [(header::LOCATION, format!("/v1/change-requests/{}", view.id))];
    Ok(Some((StatusCode::ACCEPTED, location, Json(view)).into_response()))
}

/// [`propose_if_protected`], answering with the change request itself.
pub async fn propose_when_protected(
    app: &AppState,
    context: &CommandContext,
    change: ProposedChange,
) -> ApiResult<Option<ChangeRequestView>> {
    let tenant = &context.caller.tenant;
    let Some(scope) = approvals::protecting(&app.pool, tenant, &change).await? else {
        return Ok(None);
    };
    let id = context.new_id();
    let command = ChangeRequestCommand::Propose {
        tenant: tenant.clone(),
        change,
        scope,
        proposer: reviewer(&context.caller),
    };
    app.create(&app.change_requests, &id.to_string(), command, context)
        .await?;
    Ok(Some(read_request(app, tenant, id).await?))
}

fn reviewer(caller: &Caller) -> Reviewer {
    Reviewer {
        key_id: caller.key_id.to_string(),
        name: caller.key_name.clone(),
    }
}

async fn read_request(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<ChangeRequestView> {
    approvals::change_request(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("change request"))
}

/// The tenant's protected scopes.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_protections` builds
struct ProtectionList {
    items: Vec<ProtectionView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ScopePath {
    /// `config:<key prefix>` (`config:limits.`) or `prompt:<prompt id>:<label>`.
    #[param(
        pattern = r"^(config:[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|prompt:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:[a-z0-9][a-z0-9._-]{0,63})$",
        max_length = 207
    )]
    scope: String,
}

/// `GET /v1/protections`: the tenant's protected scopes.
#[utoipa::path(
    get,
    path = "/v1/protections",
    tag = "approvals",
    responses((status = 200, description = "Protected scopes", body = ProtectionList))
)]
async fn list_protections(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let items = approvals::protections(&app.pool, &caller.tenant).await?;
    Ok(Json(json!({ "items": items })))
}

/// `PUT /v1/protections/{scope}`: protect a configuration prefix or a prompt's label; from
/// then on a change to it needs another key's approval.
#[utoipa::path(
    put,
    path = "/v1/protections/{scope}",
    tag = "approvals",
    params(ScopePath, ChangeHeaders),
    responses(
        (status = 200, description = "The protected scope", body = ProtectionView),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn protect(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(ScopePath { scope }): ApiPath<ScopePath>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ReviewChanges)?;
    let scope = ProtectedScope::parse("scope", &scope)?;
    let tenant = context.caller.tenant.clone();
    let text = scope.text();
    let command = ProtectionCommand::Protect {
        tenant: tenant.clone(),
        scope,
    };
    app.execute(&app.protections, &format!("{tenant}:{text}"), command, &context)
        .await?;
    let view = approvals::protections(&app.pool, &tenant)
        .await?
        .into_iter()
        .find(|p| p.scope == text)
        .ok_or(ApiError::NotFound("protection"))?;
    Ok(Json(view))
}

/// `DELETE /v1/protections/{scope}`: stop protecting a scope.
#[utoipa::path(
    delete,
    path = "/v1/protections/{scope}",
    tag = "approvals",
    params(ScopePath, ChangeHeaders),
    responses(
        (status = 204, description = "No longer protected"),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn unprotect(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(ScopePath { scope }): ApiPath<ScopePath>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ReviewChanges)?;
    let scope = ProtectedScope::parse("scope", &scope)?;
    let id = format!("{}:{}", context.caller.tenant, scope.text());
    app.execute(&app.protections, &id, ProtectionCommand::Unprotect, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change requests.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_change_requests` builds
struct ChangeRequestList {
    items: Vec<ChangeRequestView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only requests in this state: `proposed`, `approved` or `rejected`.
    #[param(pattern = "^(proposed|approved|rejected)$")]
    state: Option<String>,
}

/// `GET /v1/change-requests?state=`: the tenant's change requests, newest first.
#[utoipa::path(
    get,
    path = "/v1/change-requests",
    tag = "approvals",
    params(ListQuery),
    responses(
        (status = 200, description = "Change requests, newest first", body = ChangeRequestList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_change_requests(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let state = match query.state.as_deref() {
        None => None,
        Some(state @ ("proposed" | "approved" | "rejected")) => Some(state),
        Some(_) => {
            return Err(ApiError::invalid(
                "state",
                "must be one of proposed, approved, rejected",
            ))
        }
    };
    let items = approvals::change_requests(&app.pool, &caller.tenant, state).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/change-requests/{id}`: a change request: the change, who proposed it, its state.
#[utoipa::path(
    get,
    path = "/v1/change-requests/{request_id}",
    tag = "approvals",
    params(("request_id" = Uuid, Path, description = "The change request's id")),
    responses(
        (status = 200, description = "The change request", body = ChangeRequestView,
            headers(("ETag" = String, description = "The request's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_change_request(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let view = read_request(&app, &caller.tenant, id).await?;
    Ok((etag(view.version as u64), Json(view)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Why; stored with the decision (as `X-Reason`). Required to reject.
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// Makes a change (one a request proposed, or an experiment's promotion) as the caller's,
/// caused by `cause` (the request, the experiment); returns the version of its target it
/// produced.
pub async fn apply_change(
    app: &AppState,
    context: &CommandContext,
    cause: Uuid,
    change: ProposedChange,
) -> ApiResult<u64> {
    // The caller's own Idempotency-Key belongs to its request, not to the change.
    let mut metadata = context.metadata.clone();
    metadata.idempotency_key = None;
    metadata.causation_id = Some(cause.to_string());
    let inner = CommandContext {
        caller: context.caller.clone(),
        metadata,
        expected_version: None,
        idempotency: None,
        written: context.written.clone(),
    };
    let tenant = &inner.caller.tenant;
    let version = match change {
        ProposedChange::SetConfig { key, value } => {
            let key = ConfigKey::parse("key", &key)?;
            let id = key.aggregate_id(tenant);
            let command = ConfigCommand::SetValue {
                tenant: tenant.clone(),
                key,
                value,
            };
            app.execute(&app.config, &id, command, &inner).await?.version
        }
        ProposedChange::ClearConfig { key } => {
            let id = ConfigKey::parse("key", &key)?.aggregate_id(tenant);
            app.execute(&app.config, &id, ConfigCommand::ClearValue, &inner)
                .await?
                .version
        }
        ProposedChange::MovePromptLabel {
            prompt,
            label,
            version,
        } => {
            let label = Slug::parse("label", &label)?;
            let command = PromptCommand::MovePromptLabel { label, version };
            let version = app
                .execute(&app.prompts, &prompt.to_string(), command, &inner)
                .await?
                .version;
            app.live_labels.refresh(&app.pool, prompt).await?;
            version
        }
        ProposedChange::RemovePromptLabel { prompt, label } => {
            let label = Slug::parse("label", &label)?;
            let command = PromptCommand::RemovePromptLabel { label };
            let version = app
                .execute(&app.prompts, &prompt.to_string(), command, &inner)
                .await?
                .version;
            app.live_labels.refresh(&app.pool, prompt).await?;
            version
        }
    };
    Ok(version)
}

/// `POST /v1/change-requests/{id}/approve`: approve and apply a change another key proposed.
/// The proposer approving their own is a `403` (`/problems/own-approval`).
#[utoipa::path(
    post,
    path = "/v1/change-requests/{request_id}/approve",
    tag = "approvals",
    params(("request_id" = Uuid, Path, description = "The change request's id"), ChangeHeaders),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The approved request, with the version its change produced",
            body = ChangeRequestView),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn approve(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ReviewChanges)?;
    let context = context.with_reason(body.reason)?;
    let tenant = context.caller.tenant.clone();
    let approver = reviewer(&context.caller);
    // Refused before the change is made: by the proposer, or once decided.
    let (request, _) = app.change_requests.load(&id.to_string()).await?;
    if request.tenant.as_deref() != Some(tenant.as_str()) {
        return Err(ApiError::NotFound("change request"));
    }
    request
        .check_decision(&approver, true)
        .map_err(crate::error::DomainProblem::into_api_error)?;
    let Some(change) = request.change else {
        return Err(ApiError::NotFound("change request"));
    };
    let applied_version = apply_change(&app, &context, id, change).await?;
    let command = ChangeRequestCommand::Approve {
        approver,
        applied_version,
    };
    app.execute(&app.change_requests, &id.to_string(), command, &context)
        .await?;
    Ok(Json(read_request(&app, &tenant, id).await?))
}

/// `POST /v1/change-requests/{id}/reject` `{reason}`: reject a proposed change.
#[utoipa::path(
    post,
    path = "/v1/change-requests/{request_id}/reject",
    tag = "approvals",
    params(("request_id" = Uuid, Path, description = "The change request's id"), ChangeHeaders),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The rejected request", body = ChangeRequestView),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn reject(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ReviewChanges)?;
    let context = context.with_reason(body.reason)?;
    context.require_reason("rejecting a change")?;
    let tenant = context.caller.tenant.clone();
    let command = ChangeRequestCommand::Reject {
        rejecter: reviewer(&context.caller),
    };
    app.execute(&app.change_requests, &id.to_string(), command, &context)
        .await?;
    Ok(Json(read_request(&app, &tenant, id).await?))
}

/// `GET /v1/change-requests/{id}/history`: who proposed the change, and who approved or
/// rejected it, when and why.
#[utoipa::path(
    get,
    path = "/v1/change-requests/{request_id}/history",
    tag = "approvals",
    params(("request_id" = Uuid, Path, description = "The change request's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the request's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn change_request_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        ChangeRequest::TYPE,
        &id.to_string(),
        query,
        "change request",
    )
    .await
}
