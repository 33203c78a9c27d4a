//! Models: what each provider serves, their status, and their effective-dated prices. A
//! model is named in paths by its id or by its reference (`openai%2Fgpt-4o-mini`).

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::fields::{self, AllValid};
use domain::model::{parse_model_id, Model, ModelCommand, ModelProvider, ModelRef, Price};
use domain::money::{Amount, Currency};
use domain::prompt::parse_params;
use domain::text::{DisplayName, InvalidText, Slug};
use projections::registry::queries::{self as registry, ModelFilter, ModelView, PriceView};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{
    AmountText, Conflict, CurrencyText, JsonObject, ModelIdText, NameText, NotFound, ReasonText, SlugText,
    ValidationFailed,
};
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::routes::parse_instant;
use crate::state::AppState;

/// Most capabilities a model lists.
const MAX_CAPABILITIES: usize = 32;
/// Largest context window accepted, in tokens.
const MAX_CONTEXT_WINDOW: u32 = 100_000_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_model, list_models))
        .routes(routes!(get_model))
        .routes(routes!(activate_model))
        .routes(routes!(deactivate_model))
        .routes(routes!(deprecate_model))
        .routes(routes!(set_price, list_prices))
        .routes(routes!(correct_price))
        .routes(routes!(withdraw_price))
        .routes(routes!(set_default_params))
        .routes(routes!(price_at))
        .routes(routes!(model_history))
}

fn respond(status: StatusCode, view: ModelView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/models/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

/// A model of `tenant` named by its id or its reference.
async fn find_model(app: &AppState, tenant: &str, model: &str) -> ApiResult<Option<ModelView>> {
    Ok(match model.parse::<Uuid>() {
        Ok(id) => registry::model(&app.pool, tenant, id).await?,
        Err(_) => registry::model_with_reference(&app.pool, tenant, model).await?,
    })
}

async fn read_model(app: &AppState, tenant: &str, model: &str) -> ApiResult<ModelView> {
    find_model(app, tenant, model)
        .await?
        .ok_or(ApiError::NotFound("model"))
}

/// Another model named in a body (`field`) by its id or reference.
pub(crate) async fn model_named_in(
    app: &AppState,
    tenant: &str,
    field: &'static str,
    model: &str,
) -> ApiResult<ModelRef> {
    let view = find_model(app, tenant, model)
        .await?
        .ok_or_else(|| ApiError::invalid(field, "no such model: give a model's id or reference"))?;
    Ok(ModelRef {
        id: view.id,
        reference: view.reference,
    })
}

/// The models of a listing.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_models` builds
struct ModelList {
    items: Vec<ModelView>,
}

/// A model's status.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `parse_status` accepts
enum ModelStatusName {
    Active,
    Inactive,
    Deprecated,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterModelBody {
    /// The provider's name or id.
    #[schema(value_type = SlugText)]
    provider: String,
    /// The provider's own identifier of the model; the reference is `<provider>/<model_id>`.
    #[schema(value_type = ModelIdText)]
    model_id: String,
    /// Shown to people; the model id when absent.
    #[schema(value_type = Option<NameText>)]
    name: Option<String>,
    /// In tokens.
    #[schema(minimum = 1, maximum = 100_000_000)]
    context_window: Option<u32>,
    /// What the model can do (`chat`, `vision`, `tools`, …), at most 32.
    #[serde(default)]
    #[schema(value_type = Vec<SlugText>)]
    capabilities: Vec<String>,
    /// Parameters used when a prompt version gives none.
    #[schema(value_type = Option<JsonObject>)]
    default_params: Option<Value>,
    /// Another model's reference or id, tried when this one fails.
    fallback: Option<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

fn parse_context_window(window: Option<u32>) -> Result<Option<u32>, InvalidText> {
    match window {
        Some(tokens) if !(1..=MAX_CONTEXT_WINDOW).contains(&tokens) => Err(InvalidText::new(
            "context_window",
            format!("must be between 1 and {MAX_CONTEXT_WINDOW} tokens"),
        )),
        window => Ok(window),
    }
}

fn parse_capabilities(capabilities: &[String]) -> Result<BTreeSet<Slug>, fields::Invalid> {
    let capabilities: BTreeSet<Slug> = fields::each(capabilities, |c| Slug::parse("capabilities", c))?
        .into_iter()
        .collect();
    if capabilities.len() > MAX_CAPABILITIES {
        return Err(fields::Invalid::field(
            "capabilities",
            format!("must list at most {MAX_CAPABILITIES} capabilities"),
        ));
    }
    Ok(capabilities)
}

impl RegisterModelBody {
    /// The command, once the provider and the fallback are found in the tenant.
    async fn into_command(self, app: &AppState, tenant: &str) -> Result<ModelCommand, ApiError> {
        let (model_id, name, context_window, capabilities, default_params) = (
            parse_model_id("model_id", &self.model_id),
            self.name
                .as_deref()
                .map(|name| DisplayName::parse("name", name))
                .transpose(),
            parse_context_window(self.context_window),
            parse_capabilities(&self.capabilities),
            parse_params("default_params", self.default_params),
        )
            .all_valid()?;
        let provider = match self.provider.parse::<Uuid>() {
            Ok(id) => registry::provider(&app.pool, tenant, id).await?,
            Err(_) => registry::provider_named(&app.pool, tenant, &self.provider).await?,
        };
        let fallback = match &self.fallback {
            Some(fallback) => Some(model_named_in(app, tenant, "fallback", fallback).await),
            None => None,
        };
        let mut missing = Vec::new();
        if provider.is_none() {
            missing.push(FieldError {
                field: "provider".into(),
                message: "no such provider: give a provider's name or id".into(),
            });
        }
        let fallback = match fallback.transpose() {
            Ok(fallback) => fallback,
            Err(ApiError::Validation(errors)) => {
                missing.extend(errors);
                None
            }
            Err(other) => return Err(other),
        };
        let Some(provider) = provider.filter(|_| missing.is_empty()) else {
            return Err(ApiError::Validation(missing));
        };
        let name = match name {
            Some(name) => name,
            None => DisplayName::parse("model_id", &model_id)?,
        };
        Ok(ModelCommand::RegisterModel {
            tenant: tenant.to_string(),
            provider: ModelProvider {
                id: provider.id,
                name: provider.name,
            },
            model_id,
            name,
            context_window,
            capabilities,
            default_params,
            fallback,
        })
    }
}

/// `POST /v1/models`: register a model under a provider.
#[utoipa::path(
    post,
    path = "/v1/models",
    tag = "registry",
    params(CreateHeaders),
    request_body = RegisterModelBody,
    responses(
        (status = 201, description = "The new model", body = ModelView, headers(
            ("ETag" = String, description = "The model's version"),
            ("Location" = String, description = "The model's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn register_model(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<RegisterModelBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason.clone())?;
    let command = body.into_command(&app, &context.caller.tenant).await?;
    let id = context.new_id();
    app.create(&app.models, &id.to_string(), command, &context)
        .await?;
    let view = read_model(&app, &context.caller.tenant, &id.to_string()).await?;
    Ok(respond(StatusCode::CREATED, view))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ModelsQuery {
    /// Only this provider's models (its name).
    #[param(value_type = Option<SlugText>)]
    provider: Option<String>,
    /// Only models with this status.
    #[param(value_type = Option<ModelStatusName>, inline)]
    status: Option<String>,
    /// Only models with this capability.
    #[param(value_type = Option<SlugText>)]
    capability: Option<String>,
}

impl ModelsQuery {
    fn into_filter(self) -> Result<ModelFilter, ApiError> {
        let slug =
            |field: &'static str, text: Option<String>| text.map(|t| Slug::parse(field, &t)).transpose();
        let status = |text: Option<String>| match text.as_deref() {
            None => Ok(None),
            Some(status @ ("active" | "inactive" | "deprecated")) => Ok(Some(status.to_string())),
            Some(_) => Err(InvalidText::new(
                "status",
                "must be one of active, inactive, deprecated",
            )),
        };
        let (provider, status, capability) = (
            slug("provider", self.provider),
            status(self.status),
            slug("capability", self.capability),
        )
            .all_valid()?;
        Ok(ModelFilter {
            provider: provider.map(|p| p.to_string()),
            status,
            capability: capability.map(|c| c.to_string()),
        })
    }
}

/// `GET /v1/models`: the tenant's models, by reference.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "registry",
    params(ModelsQuery),
    responses(
        (status = 200, description = "The matching models, by reference", body = ModelList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_models(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ModelsQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let filter = query.into_filter()?;
    let items = registry::models(&app.pool, &caller.tenant, &filter).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/models/{model}`: the model now, or as it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), AsOfQuery),
    responses(
        (status = 200, description = "The model", body = ModelView,
            headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_model(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let now = read_model(&app, &caller.tenant, &model).await?;
    let Some(as_of) = query.as_of else {
        return Ok(respond(StatusCode::OK, now));
    };
    let past = history::as_of(&app.models, &caller.tenant, &now.id.to_string(), &as_of, "model").await?;
    let view = ModelView::from_state(
        now.id,
        past.aggregate,
        past.version,
        past.created_at,
        past.updated_at,
    );
    Ok(respond(StatusCode::OK, view))
}

/// Runs a command on a model of the caller's tenant and answers with the model after it.
async fn change_model(
    app: &AppState,
    model: &str,
    command: ModelCommand,
    context: &CommandContext,
) -> ApiResult<impl IntoResponse> {
    let tenant = &context.caller.tenant;
    let id = read_model(app, tenant, model).await?.id;
    app.execute(&app.models, &id.to_string(), command, context)
        .await?;
    Ok(respond(
        StatusCode::OK,
        read_model(app, tenant, &id.to_string()).await?,
    ))
}

/// `POST /v1/models/{model}/activate`: make the model usable again.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/activate",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), ChangeHeaders),
    responses(
        (status = 200, description = "The model after the change", body = ModelView,
            headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn activate_model(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(model): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    change_model(&app, &model, ModelCommand::ActivateModel, &context).await
}

/// `POST /v1/models/{model}/deactivate`: take the model out of use without deprecating it.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/deactivate",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), ChangeHeaders),
    responses(
        (status = 200, description = "The model after the change", body = ModelView,
            headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn deactivate_model(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(model): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    change_model(&app, &model, ModelCommand::DeactivateModel, &context).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DeprecateBody {
    /// The model to use instead: its reference or id.
    replacement: Option<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/models/{model}/deprecate`: mark the model deprecated. The answer (and the
/// event) lists what still refers to it: prompt versions behind a label, budgets over it.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/deprecate",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), ChangeHeaders),
    request_body = DeprecateBody,
    responses(
        (status = 200, description = "The model after the change, with `still_referenced`", body = ModelView,
            headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn deprecate_model(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(model): ApiPath<String>,
    ApiJson(body): ApiJson<DeprecateBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason)?;
    let tenant = &context.caller.tenant;
    let target = read_model(&app, tenant, &model).await?;
    let replacement = match &body.replacement {
        Some(replacement) => Some(model_named_in(&app, tenant, "replacement", replacement).await?),
        None => None,
    };
    let still_referenced = registry::still_referencing(&app.pool, tenant, &target.reference).await?;
    let command = ModelCommand::DeprecateModel {
        replacement,
        still_referenced,
    };
    change_model(&app, &target.id.to_string(), command, &context).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    /// When the price takes effect (RFC 3339); a new period must start after the last one.
    #[schema(format = DateTime, example = "2026-01-01T00:00:00Z")]
    effective_from: String,
    /// Per million input tokens.
    #[schema(value_type = AmountText)]
    input_per_mtok: String,
    /// Per million output tokens.
    #[schema(value_type = AmountText)]
    output_per_mtok: String,
    /// Per million cached input tokens, when the provider prices them apart.
    #[schema(value_type = Option<AmountText>)]
    cached_input_per_mtok: Option<String>,
    #[schema(value_type = CurrencyText)]
    currency: String,
    /// Why; stored with the change (as `X-Reason`). Required for a correction.
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

impl PriceBody {
    fn into_period(self) -> Result<(DateTime<Utc>, Price), ApiError> {
        let (effective_from, input_per_mtok, output_per_mtok, cached_input_per_mtok, currency) = (
            parse_instant("effective_from", &self.effective_from),
            Amount::parse("input_per_mtok", &self.input_per_mtok),
            Amount::parse("output_per_mtok", &self.output_per_mtok),
            self.cached_input_per_mtok
                .as_deref()
                .map(|amount| Amount::parse("cached_input_per_mtok", amount))
                .transpose(),
            Currency::parse("currency", &self.currency),
        )
            .all_valid()?;
        let price = Price {
            input_per_mtok,
            output_per_mtok,
            cached_input_per_mtok,
            currency,
        };
        Ok((effective_from, price))
    }
}

/// The period of `model` starting at `effective_from`, as the read model has it.
async fn read_period(
    app: &AppState,
    tenant: &str,
    model: Uuid,
    effective_from: DateTime<Utc>,
) -> ApiResult<PriceView> {
    registry::price_at(&app.pool, tenant, model, effective_from)
        .await?
        .filter(|period| period.effective_from == effective_from)
        .ok_or_else(|| ApiError::Internal("a price period just recorded is not in the read model".into()))
}

/// `POST /v1/models/{model}/prices`: a new price period, in force from `effective_from`
/// until the next one.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/prices",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), ChangeHeaders),
    request_body = PriceBody,
    responses(
        (status = 201, description = "The new period", body = PriceView, headers(
            ("ETag" = String, description = "The model's version"),
            ("Location" = String, description = "The price in force from the period's start"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn set_price(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(model): ApiPath<String>,
    ApiJson(body): ApiJson<PriceBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason.clone())?;
    let (effective_from, price) = body.into_period()?;
    let tenant = &context.caller.tenant;
    let id = read_model(&app, tenant, &model).await?.id;
    let command = ModelCommand::SetPrice {
        effective_from,
        price,
    };
    let committed = app
        .execute(&app.models, &id.to_string(), command, &context)
        .await?;
    let period = read_period(&app, tenant, id, effective_from).await?;
    let location = [(
        header::LOCATION,
        format!(
            "/v1/models/{id}/price?at={}",
            effective_from.format("%Y-%m-%dT%H:%M:%S%.fZ")
        ),
    )];
    Ok((
        StatusCode::CREATED,
        etag(committed.version),
        location,
        Json(period),
    ))
}

/// `POST /v1/models/{model}/prices/corrections`: new figures for the past period starting
/// at `effective_from`, the original kept beside them. A reason is required.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/prices/corrections",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), ChangeHeaders),
    request_body = PriceBody,
    responses(
        (status = 200, description = "The corrected period, with `original`", body = PriceView,
            headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn correct_price(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(model): ApiPath<String>,
    ApiJson(body): ApiJson<PriceBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason.clone())?;
    let (effective_from, price) = body.into_period()?;
    context.require_reason("a correction")?;
    let tenant = &context.caller.tenant;
    let id = read_model(&app, tenant, &model).await?.id;
    let command = ModelCommand::CorrectPrice {
        effective_from,
        price,
    };
    let committed = app
        .execute(&app.models, &id.to_string(), command, &context)
        .await?;
    let period = read_period(&app, tenant, id, effective_from).await?;
    Ok((etag(committed.version), Json(period)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct PeriodPath {
    /// The model's id, or its reference with `/` as `%2F`.
    model: String,
    /// The start of the period (RFC 3339).
    #[param(format = DateTime, example = "2026-01-01T00:00:00Z")]
    effective_from: String,
}

/// `DELETE /v1/models/{model}/prices/{effective_from}`: withdraw the last price period (set
/// by mistake): the previous period's price is in force again. A reason is required; the
/// period stays in the model's history.
#[utoipa::path(
    delete,
    path = "/v1/models/{model}/prices/{effective_from}",
    tag = "registry",
    params(PeriodPath, ChangeHeaders),
    responses(
        (status = 204, description = "Withdrawn", headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn withdraw_price(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(PeriodPath {
        model,
        effective_from,
    }): ApiPath<PeriodPath>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let effective_from = parse_instant("effective_from", &effective_from)?;
    let id = read_model(&app, &context.caller.tenant, &model).await?.id;
    context.require_reason("withdrawing a price period")?;
    let command = ModelCommand::WithdrawPrice { effective_from };
    let committed = app
        .execute(&app.models, &id.to_string(), command, &context)
        .await?;
    Ok((StatusCode::NO_CONTENT, etag(committed.version)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DefaultParamsBody {
    /// The parameters used when a prompt version names none (a JSON object); `null` clears
    /// them.
    #[schema(value_type = Option<Object>)]
    default_params: Option<Value>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/models/{model}/default-params`: set (or clear) the model's default parameters.
#[utoipa::path(
    put,
    path = "/v1/models/{model}/default-params",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), ChangeHeaders),
    request_body = DefaultParamsBody,
    responses(
        (status = 200, description = "The model after the change", body = ModelView,
            headers(("ETag" = String, description = "The model's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn set_default_params(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(model): ApiPath<String>,
    ApiJson(body): ApiJson<DefaultParamsBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let context = context.with_reason(body.reason)?;
    let default_params = parse_params("default_params", body.default_params)?;
    change_model(
        &app,
        &model,
        ModelCommand::SetDefaultParams { default_params },
        &context,
    )
    .await
}

/// `GET /v1/models/{model}/prices`: every price period, oldest first.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/prices",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`")),
    responses(
        (status = 200, description = "The model's price periods, oldest first", body = PriceList),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_prices(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let id = read_model(&app, &caller.tenant, &model).await?.id;
    let items = registry::prices(&app.pool, &caller.tenant, id).await?;
    Ok(Json(json!({ "items": items })))
}

/// A model's price periods.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_prices` builds
struct PriceList {
    items: Vec<PriceView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PriceAtQuery {
    /// The instant (RFC 3339); now when absent.
    #[param(format = DateTime, example = "2026-01-31T12:00:00Z")]
    at: Option<String>,
}

/// `GET /v1/models/{model}/price?at=`: the price in force at an instant, with the original
/// figures beside corrected ones.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/price",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), PriceAtQuery),
    responses(
        (status = 200, description = "The period in force at the instant", body = PriceView),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn price_at(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiQuery(query): ApiQuery<PriceAtQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let at = match query.at {
        Some(at) => parse_instant("at", &at)?,
        None => Utc::now(),
    };
    let id = read_model(&app, &caller.tenant, &model).await?.id;
    let period = registry::price_at(&app.pool, &caller.tenant, id, at)
        .await?
        .ok_or(ApiError::NotFound("price in force at that instant"))?;
    Ok(Json(period))
}

/// `GET /v1/models/{model}/history`: the model's events with who, when, why and from where.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/history",
    tag = "registry",
    params(("model" = String, Path, description = "The model's id, or its reference with `/` as `%2F`"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the model's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn model_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let id = read_model(&app, &caller.tenant, &model).await?.id;
    history::events(&app, &caller.tenant, Model::TYPE, &id.to_string(), query, "model").await
}
