//! Bulk operations: one operation over many targets as one job, tracked item by item,
//! cancellable, and in atomic mode undone as a whole when an item fails. The job runs in
//! the background (`crate::bulk::runner`); these routes submit, follow and cancel it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::bulk::operations::{catalogue, Change, TargetKind};
use domain::bulk::{BulkCommand, BulkJob, BulkMode, Submitter, MAX_TARGETS};
use domain::config::ConfigKey;
use projections::access::queries as access;
use projections::budget::queries as budgets;
use projections::bulk::queries::{self as bulk, BulkItemView, BulkJobView};
use projections::catalog::queries::{self as catalog, PromptFilter};
use projections::config::queries as config;
use projections::registry::queries::{self as registry, ModelFilter};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, CommandContext, CreateHeaders};
use crate::openapi::{Conflict, NotFound, ReasonText, ValidationFailed};
use crate::routes::history::{self, HistoryPage, HistoryQuery};
use crate::routes::models::model_named_in;
use crate::routes::page_size;
use crate::state::AppState;

/// Longest accepted target, in characters (a configuration key is the longest kind).
const MAX_TARGET_CHARS: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_operations))
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(job_history))
}

/// The operations a job can apply.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_operations` builds
struct OperationList {
    items: Vec<OperationDescription>,
}

/// One operation.
#[derive(ToSchema)]
#[allow(dead_code)] // describes `domain::bulk::operations::OperationSpec` as serialised
struct OperationDescription {
    #[schema(example = "prompt.tag")]
    operation: String,
    /// `prompt`, `model`, `config`, `budget` or `key`: what the targets are.
    target: String,
    description: String,
    /// Whether an applied item can be undone; an atomic job may only use reversible ones.
    reversible: bool,
    /// The role permission each item needs: `write`, `manage_registry`, `manage_budgets` or
    /// `manage_keys`.
    permission: String,
    /// JSON Schema of `params`.
    params: Value,
    /// Parameters that are accepted.
    example: Value,
}

/// `GET /v1/bulk/operations`: every operation with its parameters' JSON Schema.
#[utoipa::path(
    get,
    path = "/v1/bulk/operations",
    tag = "bulk",
    responses((status = 200, description = "The operations", body = OperationList))
)]
async fn list_operations(caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    Ok(Json(json!({ "items": catalogue() })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    /// An operation `GET /v1/bulk/operations` lists.
    #[schema(example = "prompt.tag", max_length = 100)]
    operation: String,
    /// The targets' ids (configuration keys for `config.*`); give these or `filter`.
    #[schema(max_items = 10000)]
    targets: Option<Vec<String>>,
    /// The listing's filter for the kind of target, resolved to a fixed list of targets when
    /// the job is accepted: prompts `{category, tag, archived, q}`, models `{provider,
    /// status, capability}`, configuration `{prefix}`, budgets `{kind}`, keys `{}`.
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
    /// The operation's parameters (see its JSON Schema); `{}` when omitted.
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// `best_effort` (default): every item is tried; `atomic`: all or nothing.
    #[schema(example = "best_effort")]
    mode: Option<String>,
    /// Why; stored with the job and every change it makes (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFilterBody {
    category: Option<Uuid>,
    tag: Option<String>,
    archived: Option<bool>,
    q: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFilterBody {
    provider: Option<String>,
    status: Option<String>,
    capability: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFilterBody {
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFilterBody {
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFilterBody {}

/// `filter` read as the filter of `kind`'s listing.
fn filter_of<T: for<'de> Deserialize<'de>>(filter: &Value) -> ApiResult<T> {
    serde_json::from_value(filter.clone()).map_err(|error| {
        ApiError::invalid(
            "filter",
            format!("is not a filter of this kind of target: {error}"),
        )
    })
}

/// The targets `filter` selects now, in the listing's order; more than [`MAX_TARGETS`] is
/// refused.
async fn resolve_filter(
    app: &AppState,
    tenant: &str,
    kind: TargetKind,
    filter: &Value,
) -> ApiResult<Vec<String>> {
    let too_many = || ApiError::invalid("filter", format!("selects more than {MAX_TARGETS} targets"));
    let targets: Vec<String> = match kind {
        TargetKind::Prompt => {
            let body: PromptFilterBody = filter_of(filter)?;
            let page = catalog::prompts(
                &app.pool,
                tenant,
                &PromptFilter {
                    category: body.category,
                    tag: body.tag,
                    archived: body.archived,
                    name_contains: body.q,
                    after: None,
                    limit: MAX_TARGETS as i64,
                },
            )
            .await?;
            if page.next_cursor.is_some() {
                return Err(too_many());
            }
            page.items
                .into_iter()
                .map(|prompt| prompt.id.to_string())
                .collect()
        }
        TargetKind::Model => {
            let body: ModelFilterBody = filter_of(filter)?;
            let filter = ModelFilter {
                provider: body.provider,
                status: body.status,
                capability: body.capability,
            };
            registry::models(&app.pool, tenant, &filter)
                .await?
                .into_iter()
                .map(|model| model.id.to_string())
                .collect()
        }
        TargetKind::Config => {
            let body: ConfigFilterBody = filter_of(filter)?;
            let prefix = match body.prefix {
                Some(prefix) => ConfigKey::parse_prefix("filter.prefix", &prefix)?,
                None => String::new(),
            };
            config::values(&app.pool, tenant, &prefix)
                .await?
                .into_iter()
                .map(|value| value.key)
                .collect()
        }
        TargetKind::Budget => {
            let body: BudgetFilterBody = filter_of(filter)?;
            budgets::budgets(&app.pool, tenant, body.kind.as_deref())
                .await?
                .into_iter()
                .map(|budget| budget.id.to_string())
                .collect()
        }
        TargetKind::Key => {
            let KeyFilterBody {} = filter_of(filter)?;
            access::keys(&app.pool, tenant)
                .await?
                .into_iter()
                .filter(|key| key.revoked_at.is_none())
                .map(|key| key.id.to_string())
                .collect()
        }
    };
    if targets.len() > MAX_TARGETS {
        return Err(too_many());
    }
    Ok(targets)
}

/// Explicit targets: 1 to [`MAX_TARGETS`], none empty, too long or repeated.
fn check_targets(targets: &[String]) -> ApiResult<()> {
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return Err(ApiError::invalid(
            "targets",
            format!("must list 1 to {MAX_TARGETS} targets"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for target in targets {
        if target.is_empty() || target.chars().count() > MAX_TARGET_CHARS {
            return Err(ApiError::invalid(
                "targets",
                format!("each must be 1 to {MAX_TARGET_CHARS} characters"),
            ));
        }
        if !seen.insert(target.as_str()) {
            return Err(ApiError::invalid(
                "targets",
                format!("{target:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn respond_job(status: StatusCode, view: BulkJobView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/bulk/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

async fn read_job(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<BulkJobView> {
    bulk::job(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("bulk job"))
}

/// `POST /v1/bulk`: submit a job. The targets (given, or selected by `filter` now) are fixed
/// when the job is accepted; the job then runs in the background: follow it at `Location`.
#[utoipa::path(
    post,
    path = "/v1/bulk",
    tag = "bulk",
    params(CreateHeaders),
    request_body = SubmitBody,
    responses(
        (status = 202, description = "The job, accepted and queued", body = BulkJobView, headers(
            ("ETag" = String, description = "The job's version"),
            ("Location" = String, description = "The job's URL"))),
        (status = 403, description = "The caller's role may not make one of the job's changes"),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn submit_job(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<SubmitBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.clone())?;
    let tenant = context.caller.tenant.clone();
    let mode = BulkMode::parse("mode", body.mode.as_deref().unwrap_or("best_effort"))?;
    let mut params = body.params.clone().unwrap_or_else(|| json!({}));
    // A replacement is named by id or reference; the job records the model it resolved to.
    if body.operation == "model.deprecate" {
        if let Some(replacement) = params
            .get("replacement")
            .and_then(Value::as_str)
            .map(str::to_string)
        {
            let named = model_named_in(&app, &tenant, "params.replacement", &replacement).await?;
            params["replacement"] = json!({ "id": named.id, "reference": named.reference });
        }
    }
    let change = Change::parse(&body.operation, &params)?;
    // Every item's change must be one the caller may make: checked before anything runs.
    context.caller.require(change.permission())?;
    if mode == BulkMode::Atomic && !change.reversible() {
        return Err(ApiError::invalid(
            "mode",
            format!(
                "{} cannot be undone, so a job of it cannot be atomic",
                change.operation()
            ),
        ));
    }
    if change.target_kind() == TargetKind::Config {
        // As for a change made directly: configuration never changes without a reason.
        context.require_reason("setting or clearing a value")?;
    }
    let targets = match (&body.targets, &body.filter) {
        (Some(targets), None) => {
            check_targets(targets)?;
            targets.clone()
        }
        (None, Some(filter)) => resolve_filter(&app, &tenant, change.target_kind(), filter).await?,
        _ => return Err(ApiError::invalid("targets", "give either targets or filter")),
    };
    let id = context.new_id();
    let command = BulkCommand::Submit {
        tenant: tenant.clone(),
        operation: change.operation().to_string(),
        params: change.params(),
        mode,
        targets,
        filter: body.filter.clone(),
        submitter: Submitter {
            key_id: context.caller.key_id.to_string(),
            name: context.caller.key_name.clone(),
            reason: context.metadata.reason.clone(),
        },
    };
    app.create(&app.bulk_jobs, &id.to_string(), command, &context)
        .await?;
    app.bulk_submitted.notify_one();
    Ok(respond_job(
        StatusCode::ACCEPTED,
        read_job(&app, &tenant, id).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A page of jobs.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_jobs` builds
struct JobPage {
    items: Vec<BulkJobView>,
    next_cursor: Option<Uuid>,
}

/// `GET /v1/bulk`: the tenant's jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/bulk",
    tag = "bulk",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPage),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_jobs(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let limit = page_size(query.limit, 50, 500)?;
    Ok(Json(
        bulk::jobs(&app.pool, &caller.tenant, query.cursor, limit).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ItemsQuery {
    /// Only items with this status: `pending`, `applied`, `failed`, `skipped`, `compensated`
    /// or `compensation_failed`.
    #[param(pattern = "^(pending|applied|failed|skipped|compensated|compensation_failed)$")]
    status: Option<String>,
    /// `items.next_cursor` of the previous page: the last item's index.
    #[param(minimum = 0)]
    cursor: Option<i32>,
    /// Items per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A job with a page of its items.
#[derive(Serialize, ToSchema)]
struct JobWithItems {
    #[serde(flatten)]
    job: BulkJobView,
    items: Vec<BulkItemView>,
    /// Pass as `cursor` for the next page of items; `null` on the last.
    next_cursor: Option<i32>,
}

const ITEM_STATUSES: [&str; 6] = [
    "pending",
    "applied",
    "failed",
    "skipped",
    "compensated",
    "compensation_failed",
];

/// `GET /v1/bulk/{id}`: the job's status and counts, with a page of its items in order.
#[utoipa::path(
    get,
    path = "/v1/bulk/{job_id}",
    tag = "bulk",
    params(("job_id" = Uuid, Path, description = "The job's id"), ItemsQuery),
    responses(
        (status = 200, description = "The job, with a page of its items", body = JobWithItems,
            headers(("ETag" = String, description = "The job's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_job(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ItemsQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let limit = page_size(query.limit, 100, 1_000)?;
    if let Some(status) = &query.status {
        if !ITEM_STATUSES.contains(&status.as_str()) {
            return Err(ApiError::invalid(
                "status",
                format!("must be one of {}", ITEM_STATUSES.join(", ")),
            ));
        }
    }
    if query.cursor.is_some_and(|cursor| cursor < 0) {
        return Err(ApiError::invalid("cursor", "must be an item's index"));
    }
    let job = read_job(&app, &caller.tenant, id).await?;
    let items = bulk::items(&app.pool, id, query.status.as_deref(), query.cursor, limit).await?;
    let version = job.version as u64;
    let body = JobWithItems {
        job,
        items: items.items,
        next_cursor: items.next_cursor,
    };
    Ok((etag(version), Json(body)))
}

/// `POST /v1/bulk/{id}/cancel`: stop the job between items. What a best-effort job applied
/// stays applied; an atomic job undoes it.
#[utoipa::path(
    post,
    path = "/v1/bulk/{job_id}/cancel",
    tag = "bulk",
    params(("job_id" = Uuid, Path, description = "The job's id"), CreateHeaders),
    responses(
        (status = 202, description = "The job, its cancellation requested (or done, if it was queued)", body = BulkJobView),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
async fn cancel_job(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    let tenant = context.caller.tenant.clone();
    let job = read_job(&app, &tenant, id).await?;
    // Cancelling takes the rights the job's changes need, like submitting it.
    context.caller.require(Permission::Write)?;
    let change = Change::parse(&job.operation, &job.params)?;
    context.caller.require(change.permission())?;
    app.execute(&app.bulk_jobs, &id.to_string(), BulkCommand::Cancel, &context)
        .await?;
    Ok(respond_job(
        StatusCode::ACCEPTED,
        read_job(&app, &tenant, id).await?,
    ))
}

/// `GET /v1/bulk/{id}/history`: the job's events (submitted, planned, progress, finished).
#[utoipa::path(
    get,
    path = "/v1/bulk/{job_id}/history",
    tag = "bulk",
    params(("job_id" = Uuid, Path, description = "The job's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the job's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn job_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        BulkJob::TYPE,
        &id.to_string(),
        query,
        "bulk job",
    )
    .await
}
