//! Budgets: how much to spend on a scope per period, the thresholds to warn at, and how
//! going over is enforced.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::budget::{
    parse_feature, parse_thresholds, standing, Budget, BudgetCommand, BudgetScope, BudgetTerms, Enforcement,
    Period, ScopeKind,
};
use domain::fields::AllValid;
use domain::money::{Amount, Currency};
use domain::text::DisplayName;
use projections::access::queries as access;
use projections::budget::live::Call;
use projections::budget::queries::{self as budgets, BudgetView};
use projections::catalog::queries as catalog;
use projections::registry::queries as registry;
use projections::usage::queries as usage;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{AmountText, Conflict, CurrencyText, NameText, NotFound, ReasonText, ValidationFailed};
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::state::AppState;

/// The thresholds a budget warns at when none are given, in percent.
const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(define_budget, list_budgets))
        .routes(routes!(get_budget, change_budget, delete_budget))
        .routes(routes!(budget_history))
        .routes(routes!(budget_status))
        .routes(routes!(check_budgets))
}

fn respond(status: StatusCode, view: BudgetView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/budgets/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

async fn read_budget(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<BudgetView> {
    budgets::budget(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("budget"))
}

/// A percentage of the amount to warn at.
#[derive(ToSchema)]
#[schema(minimum = 1, maximum = 1000)]
#[allow(dead_code)] // describes what `parse_thresholds` accepts
struct ThresholdPercent(u32);

/// `daily`, `weekly` or `monthly`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `Period::parse` accepts
enum PeriodName {
    Daily,
    Weekly,
    Monthly,
}

/// `soft` (warn) or `hard` (refuse spend over the amount).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `Enforcement::parse` accepts
enum EnforcementName {
    Soft,
    Hard,
}

/// What a budget's spend is counted over.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `ScopeKind::parse` accepts
enum ScopeKindName {
    Tenant,
    Model,
    Prompt,
    Feature,
    Key,
}

/// The tenant's budgets.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_budgets` builds
struct BudgetList {
    items: Vec<BudgetView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScopeBody {
    #[schema(value_type = ScopeKindName)]
    kind: String,
    /// A model's reference or id, a prompt's or key's id, a feature's name; none for the tenant.
    id: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DefineBody {
    #[schema(value_type = NameText)]
    name: String,
    scope: ScopeBody,
    #[schema(value_type = PeriodName)]
    period: String,
    #[schema(value_type = AmountText)]
    amount: String,
    #[schema(value_type = CurrencyText)]
    currency: String,
    /// Percentages of the amount to warn at (default `[50, 80, 100]`).
    #[schema(value_type = Option<Vec<ThresholdPercent>>, max_items = 10)]
    thresholds: Option<Vec<u32>>,
    /// Default `soft`.
    #[schema(value_type = Option<EnforcementName>)]
    enforcement: Option<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// The scope, with what it names found in the tenant (a model by its reference).
async fn resolve_scope(app: &AppState, tenant: &str, body: &ScopeBody) -> ApiResult<BudgetScope> {
    let kind = ScopeKind::parse("scope.kind", &body.kind)?;
    let missing = |what: &str| ApiError::invalid("scope.id", format!("no such {what} in this tenant"));
    let id = match (kind, body.id.as_deref()) {
        (ScopeKind::Tenant, None) => None,
        (ScopeKind::Tenant, Some(_)) => {
            return Err(ApiError::invalid("scope.id", "must be absent for the tenant"))
        }
        (_, None) => {
            return Err(ApiError::invalid(
                "scope.id",
                "is required for this kind of scope",
            ))
        }
        (ScopeKind::Feature, Some(feature)) => Some(parse_feature("scope.id", feature)?),
        (ScopeKind::Model, Some(model)) => {
            let found = match model.parse::<Uuid>() {
                Ok(id) => registry::model(&app.pool, tenant, id).await?,
                Err(_) => registry::model_with_reference(&app.pool, tenant, model).await?,
            };
            Some(found.ok_or_else(|| missing("model"))?.reference)
        }
        (ScopeKind::Prompt, Some(prompt)) => {
            let id = prompt.parse::<Uuid>().map_err(|_| missing("prompt"))?;
            catalog::prompt(&app.pool, tenant, id)
                .await?
                .ok_or_else(|| missing("prompt"))?;
            Some(id.to_string())
        }
        (ScopeKind::Key, Some(key)) => {
            let id = key.parse::<Uuid>().map_err(|_| missing("API key"))?;
            access::key(&app.pool, tenant, id)
                .await?
                .ok_or_else(|| missing("API key"))?;
            Some(id.to_string())
        }
    };
    Ok(BudgetScope { kind, id })
}

/// `POST /v1/budgets`: define a budget.
#[utoipa::path(
    post,
    path = "/v1/budgets",
    tag = "budgets",
    params(CreateHeaders),
    request_body = DefineBody,
    responses(
        (status = 201, description = "The new budget", body = BudgetView, headers(
            ("ETag" = String, description = "The budget's version"),
            ("Location" = String, description = "The budget's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn define_budget(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<DefineBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageBudgets)?;
    let context = context.with_reason(body.reason.clone())?;
    let thresholds = body
        .thresholds
        .clone()
        .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
    let (name, period, amount, currency, thresholds, enforcement) = (
        DisplayName::parse("name", &body.name),
        Period::parse("period", &body.period),
        Amount::parse("amount", &body.amount),
        Currency::parse("currency", &body.currency),
        parse_thresholds("thresholds", &thresholds),
        Enforcement::parse("enforcement", body.enforcement.as_deref().unwrap_or("soft")),
    )
        .all_valid()?;
    let tenant = context.caller.tenant.clone();
    let scope = resolve_scope(&app, &tenant, &body.scope).await?;
    let id = context.new_id();
    let command = BudgetCommand::DefineBudget {
        tenant: tenant.clone(),
        name,
        scope,
        period,
        terms: BudgetTerms {
            amount,
            currency,
            thresholds,
            enforcement,
        },
    };
    app.create(&app.budgets, &id.to_string(), command, &context)
        .await?;
    app.refresh_budgets().await;
    Ok(respond(
        StatusCode::CREATED,
        read_budget(&app, &tenant, id).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only budgets over scopes of this kind.
    #[param(value_type = Option<ScopeKindName>, inline)]
    scope_kind: Option<String>,
}

/// `GET /v1/budgets?scope_kind=`: the tenant's budgets, by name.
#[utoipa::path(
    get,
    path = "/v1/budgets",
    tag = "budgets",
    params(ListQuery),
    responses(
        (status = 200, description = "Budgets, by name", body = BudgetList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_budgets(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let kind = query
        .scope_kind
        .as_deref()
        .map(|kind| ScopeKind::parse("scope_kind", kind))
        .transpose()?;
    let items = budgets::budgets(&app.pool, &caller.tenant, kind.map(ScopeKind::as_str)).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/budgets/{id}`: the budget now, or as it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/budgets/{budget_id}",
    tag = "budgets",
    params(("budget_id" = Uuid, Path, description = "The budget's id"), AsOfQuery),
    responses(
        (status = 200, description = "The budget", body = BudgetView,
            headers(("ETag" = String, description = "The budget's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_budget(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let Some(as_of) = query.as_of else {
        return Ok(respond(
            StatusCode::OK,
            read_budget(&app, &caller.tenant, id).await?,
        ));
    };
    let past = history::as_of(&app.budgets, &caller.tenant, &id.to_string(), &as_of, "budget").await?;
    let view = BudgetView::from_state(id, past.aggregate, past.version, past.created_at, past.updated_at)
        .ok_or(ApiError::NotFound("budget"))?;
    Ok(respond(StatusCode::OK, view))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    #[schema(value_type = Option<NameText>)]
    name: Option<String>,
    #[schema(value_type = Option<AmountText>)]
    amount: Option<String>,
    #[schema(value_type = Option<CurrencyText>)]
    currency: Option<String>,
    #[schema(value_type = Option<Vec<ThresholdPercent>>, max_items = 10)]
    thresholds: Option<Vec<u32>>,
    #[schema(value_type = Option<EnforcementName>)]
    enforcement: Option<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PATCH /v1/budgets/{id}`: change the name, amount, currency, thresholds or enforcement
/// (the scope and period stay).
#[utoipa::path(
    patch,
    path = "/v1/budgets/{budget_id}",
    tag = "budgets",
    params(("budget_id" = Uuid, Path, description = "The budget's id"), ChangeHeaders),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "The budget after the change", body = BudgetView,
            headers(("ETag" = String, description = "The budget's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn change_budget(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ChangeBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageBudgets)?;
    let context = context.with_reason(body.reason)?;
    let (name, amount, currency, thresholds, enforcement) = (
        body.name
            .as_deref()
            .map(|n| DisplayName::parse("name", n))
            .transpose(),
        body.amount
            .as_deref()
            .map(|a| Amount::parse("amount", a))
            .transpose(),
        body.currency
            .as_deref()
            .map(|c| Currency::parse("currency", c))
            .transpose(),
        body.thresholds
            .as_deref()
            .map(|t| parse_thresholds("thresholds", t))
            .transpose(),
        body.enforcement
            .as_deref()
            .map(|e| Enforcement::parse("enforcement", e))
            .transpose(),
    )
        .all_valid()?;
    let command = BudgetCommand::ChangeBudget {
        name,
        amount,
        currency,
        thresholds,
        enforcement,
    };
    app.execute(&app.budgets, &id.to_string(), command, &context)
        .await?;
    app.refresh_budgets().await;
    Ok(respond(
        StatusCode::OK,
        read_budget(&app, &context.caller.tenant, id).await?,
    ))
}

/// `DELETE /v1/budgets/{id}`: delete a budget (its history stays).
#[utoipa::path(
    delete,
    path = "/v1/budgets/{budget_id}",
    tag = "budgets",
    params(("budget_id" = Uuid, Path, description = "The budget's id"), ChangeHeaders),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn delete_budget(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageBudgets)?;
    app.execute(
        &app.budgets,
        &id.to_string(),
        BudgetCommand::DeleteBudget,
        &context,
    )
    .await?;
    app.refresh_budgets().await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/budgets/{id}/history`: the budget's events with who, when, why and from where.
#[utoipa::path(
    get,
    path = "/v1/budgets/{budget_id}/history",
    tag = "budgets",
    params(("budget_id" = Uuid, Path, description = "The budget's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the budget's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn budget_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        Budget::TYPE,
        &id.to_string(),
        query,
        "budget",
    )
    .await
}

/// Where a budget stands in its current period. Money is exact decimal, as strings.
#[derive(Serialize, ToSchema)]
struct BudgetStatus {
    /// The period's first day (UTC).
    #[schema(format = Date)]
    period_start: String,
    /// The first day after the period.
    #[schema(format = Date)]
    period_end: String,
    currency: String,
    #[schema(value_type = AmountText)]
    amount: String,
    /// Spent in the period so far, in the budget's currency.
    spent: String,
    /// `amount` less `spent`: negative once over.
    remaining: String,
    /// `spent` in percent of `amount`, to two decimals.
    percent_used: String,
    /// What will have been spent at the period's end at the pace so far.
    forecast_end_of_period: String,
    /// Days of the period after today.
    days_left: u32,
    /// The thresholds (percent) the spend has reached.
    thresholds_crossed: Vec<u32>,
    /// A hard budget whose amount is spent: further spend is to be refused.
    exhausted: bool,
}

/// `GET /v1/budgets/{id}/status`: the current period, what was spent in it (from the usage
/// roll-ups), what remains, the forecast for the period's end and the thresholds reached.
#[utoipa::path(
    get,
    path = "/v1/budgets/{budget_id}/status",
    tag = "budgets",
    params(("budget_id" = Uuid, Path, description = "The budget's id")),
    responses(
        (status = 200, description = "Where the budget stands now", body = BudgetStatus),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn budget_status(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let (budget, _) = app.budgets.load(&id.to_string()).await?;
    let (Some(scope), Some(period), Some(terms)) = (&budget.scope, budget.period, &budget.terms) else {
        return Err(ApiError::NotFound("budget"));
    };
    if budget.deleted || budget.tenant.as_deref() != Some(caller.tenant.as_str()) {
        return Err(ApiError::NotFound("budget"));
    }
    let now = chrono::Utc::now();
    let bounds = period.bounds(now);
    let spent = usage::spent_on(
        &app.pool,
        &[usage::BudgetSpend {
            id,
            tenant: &caller.tenant,
            scope,
            currency: terms.currency.as_ref(),
            days: bounds,
        }],
    )
    .await?
    .remove(&id)
    .unwrap_or_default();
    let standing = standing(terms, period, spent, now);
    Ok(Json(BudgetStatus {
        period_start: standing.period_start.to_string(),
        period_end: standing.period_end.to_string(),
        currency: terms.currency.as_ref().to_string(),
        amount: terms.amount.to_string(),
        spent: standing.spent.to_string(),
        remaining: standing.remaining.to_string(),
        percent_used: standing.percent_used.to_string(),
        forecast_end_of_period: standing.forecast_end_of_period.to_string(),
        days_left: standing.days_left,
        thresholds_crossed: standing.thresholds_crossed,
        exhausted: standing.exhausted,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CheckQuery {
    /// The model about to be called, by reference (`provider/model_id`).
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*$",
        example = "openai/gpt-4o-mini"
    )]
    model: Option<String>,
    /// The prompt the call renders.
    prompt: Option<Uuid>,
    /// The feature the call serves.
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    feature: Option<String>,
    /// The key the call's usage will be sent with; the caller's own key when not given.
    key: Option<Uuid>,
}

/// A budget that covers the call, and where it stands.
#[derive(Serialize, ToSchema)]
struct CheckedBudget {
    id: Uuid,
    name: String,
    scope: budgets::ScopeView,
    /// `soft` or `hard`.
    enforcement: String,
    currency: String,
    amount: String,
    spent: String,
    remaining: String,
    percent_used: String,
    /// The first day after the current period.
    #[schema(format = Date)]
    period_end: String,
    /// A hard budget whose amount is spent: it refuses the call.
    exhausted: bool,
}

/// Whether a call may go ahead.
#[derive(Serialize, ToSchema)]
struct BudgetCheck {
    /// False when a hard budget covering the call is exhausted.
    allowed: bool,
    /// Every budget covering the call, exhausted ones first.
    budgets: Vec<CheckedBudget>,
}

/// `GET /v1/budgets/check?model=&prompt=&feature=&key=`: the check an application makes
/// before calling a model. Answered from memory, current with this process's ingestion at
/// once and with other processes' within a second.
#[utoipa::path(
    get,
    path = "/v1/budgets/check",
    tag = "budgets",
    params(CheckQuery),
    responses(
        (status = 200, description = "Whether the call is within its budgets, and each budget covering it", body = BudgetCheck),
        (status = 422, response = ValidationFailed),
    )
)]
async fn check_budgets(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<CheckQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::CheckBudgets)?;
    crate::routes::check_short_texts(&[("model", &query.model), ("feature", &query.feature)])?;
    let call = Call {
        model: query.model.as_deref(),
        prompt: query.prompt,
        feature: query.feature.as_deref(),
        key: Some(query.key.unwrap_or(caller.key_id)),
    };
    let mut covering: Vec<CheckedBudget> = app
        .live_budgets
        .covering(&caller.tenant, &call)
        .iter()
        .map(|live| {
            let (budget, standing) = (&live.budget, &live.standing);
            CheckedBudget {
                id: budget.id,
                name: budget.name.clone(),
                scope: budgets::ScopeView {
                    kind: budget.scope.kind.as_str().to_string(),
                    id: budget.scope.id.clone(),
                },
                enforcement: budget.terms.enforcement.as_str().to_string(),
                currency: budget.terms.currency.as_ref().to_string(),
                amount: budget.terms.amount.to_string(),
                spent: standing.spent.to_string(),
                remaining: standing.remaining.to_string(),
                percent_used: standing.percent_used.to_string(),
                period_end: standing.period_end.to_string(),
                exhausted: standing.exhausted,
            }
        })
        .collect();
    covering.sort_by_key(|budget| !budget.exhausted);
    Ok(Json(BudgetCheck {
        allowed: !covering.iter().any(|budget| budget.exhausted),
        budgets: covering,
    }))
}
