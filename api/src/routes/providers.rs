//! Providers: the services that serve models, and where their secrets live.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::fields::AllValid;
use domain::health::HealthCheck;
use domain::provider::{BaseUrl, CredentialRef, Provider, ProviderCommand, ProviderKind};
use domain::text::Slug;
use projections::registry::queries::{self as registry, ProviderView};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{
    BaseUrlText, Conflict, CredentialRefText, NotFound, ReasonText, SlugText, ValidationFailed,
};
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_provider, list_providers))
        .routes(routes!(get_provider, update_provider))
        .routes(routes!(provider_history))
        .routes(routes!(set_health_check))
}

fn respond(status: StatusCode, view: ProviderView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/providers/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

async fn read_provider(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<ProviderView> {
    registry::provider(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("provider"))
}

/// The tenant's providers, by name.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_providers` builds
struct ProviderList {
    items: Vec<ProviderView>,
}

/// How aipm talks to a provider: `openai` is any OpenAI-compatible server.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)] // describes what `ProviderKind::parse` accepts
enum ProviderKindName {
    Openai,
    Anthropic,
    AzureOpenai,
    Custom,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterProviderBody {
    /// Unique in the tenant; the first part of its models' references (`openai` in
    /// `openai/gpt-4o-mini`). Cannot change later.
    #[schema(value_type = SlugText)]
    name: String,
    #[schema(value_type = ProviderKindName)]
    kind: String,
    #[schema(value_type = BaseUrlText)]
    base_url: String,
    /// `env:VARIABLE` or `file:/path`: where the secret is read from. A secret pasted here is
    /// refused and never stored.
    #[schema(value_type = CredentialRefText)]
    credential_ref: String,
    /// Default true.
    enabled: Option<bool>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

impl RegisterProviderBody {
    fn into_command(self, tenant: &str) -> Result<ProviderCommand, ApiError> {
        let (name, kind, base_url, credential_ref) = (
            Slug::parse("name", &self.name),
            ProviderKind::parse("kind", &self.kind),
            BaseUrl::parse("base_url", &self.base_url),
            CredentialRef::parse("credential_ref", &self.credential_ref),
        )
            .all_valid()?;
        Ok(ProviderCommand::RegisterProvider {
            tenant: tenant.to_string(),
            name,
            kind,
            base_url,
            credential_ref,
            enabled: self.enabled.unwrap_or(true),
        })
    }
}

/// `POST /v1/providers`: register a provider.
#[utoipa::path(
    post,
    path = "/v1/providers",
    tag = "registry",
    params(CreateHeaders),
    request_body = RegisterProviderBody,
    responses(
        (status = 201, description = "The new provider", body = ProviderView, headers(
            ("ETag" = String, description = "The provider's version"),
            ("Location" = String, description = "The provider's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn register_provider(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<RegisterProviderBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason.clone())?;
    let command = body.into_command(&context.caller.tenant)?;
    let id = context.new_id();
    app.create(&app.providers, &id.to_string(), command, &context)
        .await?;
    let view = read_provider(&app, &context.caller.tenant, id).await?;
    Ok(respond(StatusCode::CREATED, view))
}

/// `GET /v1/providers`: the tenant's providers, by name.
#[utoipa::path(
    get,
    path = "/v1/providers",
    tag = "registry",
    responses((status = 200, description = "The tenant's providers, by name", body = ProviderList))
)]
async fn list_providers(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let items = registry::providers(&app.pool, &caller.tenant).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/providers/{id}`: the provider now, or as it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/providers/{provider_id}",
    tag = "registry",
    params(("provider_id" = Uuid, Path, description = "The provider's id"), AsOfQuery),
    responses(
        (status = 200, description = "The provider", body = ProviderView,
            headers(("ETag" = String, description = "The provider's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_provider(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let Some(as_of) = query.as_of else {
        return Ok(respond(
            StatusCode::OK,
            read_provider(&app, &caller.tenant, id).await?,
        ));
    };
    let past = history::as_of(
        &app.providers,
        &caller.tenant,
        &id.to_string(),
        &as_of,
        "provider",
    )
    .await?;
    let view = ProviderView::from_state(id, past.aggregate, past.version, past.created_at, past.updated_at);
    Ok(respond(StatusCode::OK, view))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateProviderBody {
    #[schema(value_type = Option<ProviderKindName>)]
    kind: Option<String>,
    #[schema(value_type = Option<BaseUrlText>)]
    base_url: Option<String>,
    #[schema(value_type = Option<CredentialRefText>)]
    credential_ref: Option<String>,
    enabled: Option<bool>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

impl UpdateProviderBody {
    fn into_command(self) -> Result<ProviderCommand, ApiError> {
        let (kind, base_url, credential_ref) = (
            self.kind
                .map(|kind| ProviderKind::parse("kind", &kind))
                .transpose(),
            self.base_url
                .map(|url| BaseUrl::parse("base_url", &url))
                .transpose(),
            self.credential_ref
                .map(|credential| CredentialRef::parse("credential_ref", &credential))
                .transpose(),
        )
            .all_valid()?;
        Ok(ProviderCommand::UpdateProvider {
            kind,
            base_url,
            credential_ref,
            enabled: self.enabled,
        })
    }
}

/// `PATCH /v1/providers/{id}`: change what is given; the name stays.
#[utoipa::path(
    patch,
    path = "/v1/providers/{provider_id}",
    tag = "registry",
    params(("provider_id" = Uuid, Path, description = "The provider's id"), ChangeHeaders),
    request_body = UpdateProviderBody,
    responses(
        (status = 200, description = "The provider after the change", body = ProviderView,
            headers(("ETag" = String, description = "The provider's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn update_provider(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateProviderBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason.clone())?;
    let command = body.into_command()?;
    app.execute(&app.providers, &id.to_string(), command, &context)
        .await?;
    let view = read_provider(&app, &context.caller.tenant, id).await?;
    Ok(respond(StatusCode::OK, view))
}

/// `GET /v1/providers/{id}/history`: the provider's events with who, when, why and from where.
#[utoipa::path(
    get,
    path = "/v1/providers/{provider_id}/history",
    tag = "registry",
    params(("provider_id" = Uuid, Path, description = "The provider's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the provider's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn provider_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        Provider::TYPE,
        &id.to_string(),
        query,
        "provider",
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct HealthCheckBody {
    /// Seconds between two probes (default 60).
    #[schema(minimum = 10, maximum = 86400)]
    interval_seconds: Option<u32>,
    /// A probe not answered within this many milliseconds failed (default 5000).
    #[schema(minimum = 100, maximum = 60000)]
    timeout_ms: Option<u32>,
    /// A successful probe slower than this makes the provider `degraded` (default 2000, or
    /// `timeout_ms` when that is shorter; at most `timeout_ms`).
    #[schema(minimum = 1, maximum = 60000)]
    degraded_latency_ms: Option<u32>,
    /// Open an incident when the provider goes `down` (default false).
    open_incident_on_down: Option<bool>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

impl HealthCheckBody {
    /// The settings given, the defaults for those left out.
    fn into_command(self) -> Result<ProviderCommand, ApiError> {
        let defaults = HealthCheck::default();
        let timeout_ms = self.timeout_ms.unwrap_or(defaults.timeout_ms);
        let health_check = HealthCheck {
            interval_seconds: self.interval_seconds.unwrap_or(defaults.interval_seconds),
            timeout_ms,
            // A timeout shorter than the default threshold makes a slow answer one that
            // failed: the threshold left out is then the timeout.
            degraded_latency_ms: self
                .degraded_latency_ms
                .unwrap_or(defaults.degraded_latency_ms.min(timeout_ms)),
            open_incident_on_down: self
                .open_incident_on_down
                .unwrap_or(defaults.open_incident_on_down),
        }
        .validate()?;
        Ok(ProviderCommand::SetHealthCheck { health_check })
    }
}

/// `PUT /v1/providers/{id}/health-check`: how the provider is probed; fields left out take
/// their defaults. See `GET /v1/health` for what the probes find.
#[utoipa::path(
    put,
    path = "/v1/providers/{provider_id}/health-check",
    tag = "registry",
    params(("provider_id" = Uuid, Path, description = "The provider's id"), ChangeHeaders),
    request_body = HealthCheckBody,
    responses(
        (status = 200, description = "The provider after the change", body = ProviderView,
            headers(("ETag" = String, description = "The provider's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn set_health_check(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<HealthCheckBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason.clone())?;
    let command = body.into_command()?;
    app.execute(&app.providers, &id.to_string(), command, &context)
        .await?;
    let view = read_provider(&app, &context.caller.tenant, id).await?;
    Ok(respond(StatusCode::OK, view))
}
