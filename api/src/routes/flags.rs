//! Feature flags: set with a reason, read now or then, and evaluated from memory.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::config::ConfigKey;
use domain::fields::AllValid;
use domain::flag::{parse_rollout, parse_variants, EvaluationReason, Flag, FlagCommand, FlagSettings};
use domain::text::InvalidText;
use projections::flag::queries::{self as flags, FlagView};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext};
use crate::openapi::{Conflict, NotFound, ReasonText, SlugText, ValidationFailed};
use crate::routes::config::KeyPath;
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::state::AppState;

/// Longest subject, in characters.
const MAX_SUBJECT_CHARS: usize = 256;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_flags))
        .routes(routes!(set_flag, get_flag))
        .routes(routes!(evaluate_flag))
        .routes(routes!(flag_history))
}

fn respond(view: FlagView) -> impl IntoResponse {
    (etag(view.version as u64), Json(view))
}

/// The tenant's flags.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_flags` builds
struct FlagList {
    items: Vec<FlagView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VariantBody {
    #[schema(value_type = SlugText)]
    name: String,
    /// Its share among the variants: weight / sum of weights.
    #[schema(minimum = 1, maximum = 1_000_000)]
    weight: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FlagBody {
    /// Off: off for everyone.
    enabled: bool,
    /// The share of subjects it is on for (0–100, at most two decimals). A subject keeps its
    /// answer as the share grows.
    #[schema(minimum = 0, maximum = 100, multiple_of = 0.01)]
    rollout_percent: f64,
    /// Split the subjects it is on for among these, by weight.
    #[serde(default)]
    variants: Vec<VariantBody>,
    /// Why; required (or send `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/flags/{key}`: create or change a flag. Its salt is fixed when it is created, so
/// changing the rollout moves only the subjects at the margin.
#[utoipa::path(
    put,
    path = "/v1/flags/{key}",
    tag = "flags",
    params(KeyPath, ChangeHeaders),
    request_body = FlagBody,
    responses(
        (status = 200, description = "The flag after the change", body = FlagView,
            headers(("ETag" = String, description = "The flag's version"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn set_flag(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiJson(body): ApiJson<FlagBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let variants: Vec<(String, u32)> = body.variants.into_iter().map(|v| (v.name, v.weight)).collect();
    let (key, rollout, variants) = (
        ConfigKey::parse("key", &key),
        parse_rollout("rollout_percent", body.rollout_percent),
        parse_variants("variants", &variants),
    )
        .all_valid()?;
    context.require_reason("changing a flag")?;
    let tenant = context.caller.tenant.clone();
    let command = FlagCommand::SetFlag {
        tenant: tenant.clone(),
        key: key.clone(),
        salt: uuid::Uuid::new_v4().simple().to_string(),
        settings: FlagSettings {
            enabled: body.enabled,
            rollout,
            variants,
        },
    };
    app.execute(&app.flags, &key.aggregate_id(&tenant), command, &context)
        .await?;
    let stored = flags::flag(&app.pool, &tenant, key.as_ref())
        .await?
        .ok_or(ApiError::NotFound("flag"))?;
    // This process evaluates with the change at once; others follow the log.
    app.live_flags.remember(stored.clone());
    Ok(respond(stored.view()))
}

/// `GET /v1/flags`: the tenant's flags, by key.
#[utoipa::path(
    get,
    path = "/v1/flags",
    tag = "flags",
    responses((status = 200, description = "The tenant's flags, by key", body = FlagList))
)]
async fn list_flags(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let items: Vec<FlagView> = flags::flags(&app.pool, &caller.tenant)
        .await?
        .iter()
        .map(|flag| flag.view())
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/flags/{key}`: the flag now, or as it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/flags/{key}",
    tag = "flags",
    params(KeyPath, AsOfQuery),
    responses(
        (status = 200, description = "The flag", body = FlagView,
            headers(("ETag" = String, description = "The flag's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_flag(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let key = ConfigKey::parse("key", &key)?;
    let view = match query.as_of {
        None => flags::flag(&app.pool, &caller.tenant, key.as_ref())
            .await?
            .map(|flag| flag.view()),
        Some(as_of) => {
            let id = key.aggregate_id(&caller.tenant);
            let past = history::as_of(&app.flags, &caller.tenant, &id, &as_of, "flag").await?;
            FlagView::from_state(&past.aggregate, past.version, past.updated_at)
        }
    };
    Ok(respond(view.ok_or(ApiError::NotFound("flag"))?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EvaluateQuery {
    /// Who or what the flag is evaluated for: a user, an account, a request.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$",
        example = "user-42"
    )]
    subject: String,
}

/// A flag's answer for a subject.
#[derive(Serialize, ToSchema)]
struct EvaluationView {
    key: String,
    subject: String,
    enabled: bool,
    /// The subject's variant, when the flag is on for it and has variants.
    variant: Option<String>,
    /// `disabled`, `in_rollout` or `outside_rollout`.
    #[schema(value_type = String, example = "in_rollout")]
    reason: EvaluationReason,
    /// The flag version that answered.
    version: i64,
}

/// `GET /v1/flags/{key}/evaluate?subject=`: the flag for one subject, from memory. The same
/// subject gets the same answer from every instance and after every restart.
#[utoipa::path(
    get,
    path = "/v1/flags/{key}/evaluate",
    tag = "flags",
    params(KeyPath, EvaluateQuery),
    responses(
        (status = 200, description = "The flag's answer for the subject", body = EvaluationView),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn evaluate_flag(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(query): ApiQuery<EvaluateQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let key = ConfigKey::parse("key", &key)?;
    let subject = query.subject;
    if subject.is_empty()
        || subject.chars().count() > MAX_SUBJECT_CHARS
        || subject.chars().any(char::is_control)
    {
        return Err(InvalidText::new(
            "subject",
            format!("must be 1-{MAX_SUBJECT_CHARS} characters without control characters"),
        )
        .into());
    }
    let (evaluation, flag) = app
        .live_flags
        .evaluate(&caller.tenant, key.as_ref(), &subject)
        .ok_or(ApiError::NotFound("flag"))?;
    Ok(Json(EvaluationView {
        key: flag.key.clone(),
        subject,
        enabled: evaluation.enabled,
        variant: evaluation.variant,
        reason: evaluation.reason,
        version: flag.version,
    }))
}

/// `GET /v1/flags/{key}/history`: every change of the flag, old → new, with who, when, why
/// and from where.
#[utoipa::path(
    get,
    path = "/v1/flags/{key}/history",
    tag = "flags",
    params(KeyPath, HistoryQuery),
    responses(
        (status = 200, description = "A page of the flag's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn flag_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let key = ConfigKey::parse("key", &key)?;
    let id = key.aggregate_id(&caller.tenant);
    history::events(&app, &caller.tenant, Flag::TYPE, &id, query, "flag").await
}
