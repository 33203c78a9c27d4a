//! Experiments: variants compared on live traffic, their lifecycle, assignment of subjects
//! (from memory), observations reported after the call, and results.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::experiment::{
    parse_spec, Experiment, ExperimentCommand, ExperimentStatus, Observation, Promotion, RawMetric, RawSpec,
    RawVariant, Targeting,
};
use domain::text::Slug;
use projections::catalog::queries as catalog;
use projections::experiment::queries::{self as experiments, ExperimentView, StoredExperiment};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{Conflict, NameText, NotFound, ReasonText, ValidationFailed};
use crate::routes::approvals;
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::routes::parse_instant;
use crate::state::AppState;

/// Most observations one request may carry.
const MAX_OBSERVATIONS: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_experiment, list_experiments))
        .routes(routes!(get_experiment))
        .routes(routes!(experiment_history))
        .routes(routes!(start))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(stop))
        .routes(routes!(conclude))
        .routes(routes!(assign))
        .routes(routes!(observe))
        .routes(routes!(results))
        .routes(routes!(reallocate))
}

fn respond(status: StatusCode, view: ExperimentView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/experiments/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

async fn read_experiment(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<StoredExperiment> {
    experiments::experiment(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("experiment"))
}

/// `binary`, `continuous` or `ratio`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `MetricKind::parse` accepts
enum MetricKindName {
    Binary,
    Continuous,
    Ratio,
}

/// What is measured: an observation name, or for a ratio the two it divides.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MetricBody {
    /// A slug; for binary and continuous metrics also the observation name it reads (a usage
    /// record's `metrics` key, or an observation's `metric`).
    #[schema(example = "converted")]
    name: String,
    #[schema(value_type = MetricKindName)]
    kind: String,
    /// A ratio's numerator, an observation name.
    numerator: Option<String>,
    /// A ratio's denominator, an observation name.
    denominator: Option<String>,
    /// Default true.
    higher_is_better: Option<bool>,
    /// The Bayesian method's normal prior on the absolute lift: its mean (with `prior_sd`);
    /// flat when left out.
    prior_mean: Option<f64>,
    /// The prior's standard deviation, positive.
    prior_sd: Option<f64>,
}

impl MetricBody {
    fn raw(self) -> RawMetric {
        RawMetric {
            name: self.name,
            kind: self.kind,
            numerator: self.numerator,
            denominator: self.denominator,
            higher_is_better: self.higher_is_better.unwrap_or(true),
            prior_mean: self.prior_mean,
            prior_sd: self.prior_sd,
        }
    }
}

/// A configuration value a variant sets.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConfigTreatment {
    key: String,
    #[schema(value_type = Object)]
    value: Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VariantBody {
    /// A slug, unique in the experiment.
    #[schema(example = "control")]
    name: String,
    /// Percent of subjects; the weights sum to 100.
    #[schema(minimum = 1, maximum = 100)]
    weight: u32,
    /// Exactly one variant is the control.
    control: Option<bool>,
    /// A version of the experiment's prompt.
    #[schema(minimum = 1)]
    prompt_version: Option<u32>,
    /// A model reference.
    model: Option<String>,
    config: Option<ConfigTreatment>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct TargetingBody {
    /// Only calls for these features (slugs).
    #[serde(default)]
    features: Vec<String>,
    /// Only calls made with these API keys.
    #[serde(default)]
    keys: Vec<Uuid>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[schema(value_type = NameText)]
    name: String,
    /// What the experiment is to show.
    #[schema(max_length = 2000)]
    hypothesis: String,
    prompt_id: Option<Uuid>,
    #[schema(min_items = 2, max_items = 10)]
    variants: Vec<VariantBody>,
    primary_metric: MetricBody,
    #[serde(default)]
    secondary_metrics: Vec<MetricBody>,
    /// Metrics that must not get significantly worse: one that does pauses the experiment.
    #[serde(default)]
    guardrail_metrics: Vec<MetricBody>,
    /// Units each variant should have before its figures are read as final (default 0).
    min_units_per_variant: Option<u64>,
    targeting: Option<TargetingBody>,
    /// Total units at which the sequential method's intervals are tightest (default 10,000).
    #[schema(minimum = 1)]
    sequential_tuning_units: Option<u64>,
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

impl CreateBody {
    fn raw(self) -> RawSpec {
        let targeting = self.targeting.unwrap_or_default();
        RawSpec {
            name: self.name,
            hypothesis: self.hypothesis,
            prompt_id: self.prompt_id,
            variants: self
                .variants
                .into_iter()
                .map(|variant| RawVariant {
                    name: variant.name,
                    weight: variant.weight,
                    control: variant.control.unwrap_or(false),
                    prompt_version: variant.prompt_version,
                    model: variant.model,
                    config: variant.config.map(|config| (config.key, config.value)),
                })
                .collect(),
            primary_metric: self.primary_metric.raw(),
            secondary_metrics: self.secondary_metrics.into_iter().map(MetricBody::raw).collect(),
            guardrail_metrics: self.guardrail_metrics.into_iter().map(MetricBody::raw).collect(),
            min_units_per_variant: self.min_units_per_variant,
            targeting: Targeting {
                features: targeting.features,
                keys: targeting.keys,
            },
            sequential_tuning_units: self.sequential_tuning_units,
        }
    }
}

/// `POST /v1/experiments`: define an experiment (a draft until started). A prompt and the
/// versions its variants name must exist in the tenant.
#[utoipa::path(
    post,
    path = "/v1/experiments",
    tag = "experiments",
    params(CreateHeaders),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new experiment, a draft", body = ExperimentView, headers(
            ("ETag" = String, description = "The experiment's version"),
            ("Location" = String, description = "The experiment's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn create_experiment(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.clone())?;
    let spec = parse_spec(body.raw())?;
    let tenant = context.caller.tenant.clone();
    if let Some(prompt) = spec.prompt_id {
        let versions = catalog::prompt(&app.pool, &tenant, prompt)
            .await?
            .ok_or_else(|| ApiError::invalid("prompt_id", "no such prompt in this tenant"))?
            .latest_version;
        for variant in &spec.variants {
            if let domain::experiment::Treatment::PromptVersion(version) = variant.treatment {
                if i64::from(version) > i64::from(versions) || version == 0 {
                    return Err(ApiError::invalid(
                        "variants.prompt_version",
                        format!("the prompt has no version {version}"),
                    ));
                }
            }
        }
    }
    let id = context.new_id();
    let command = ExperimentCommand::Create {
        tenant: tenant.clone(),
        spec: Box::new(spec),
        salt: Uuid::new_v4().simple().to_string(),
    };
    app.create(&app.experiments, &id.to_string(), command, &context)
        .await?;
    let stored = read_experiment(&app, &tenant, id).await?;
    Ok(respond(StatusCode::CREATED, stored.view()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only experiments in this status.
    #[param(pattern = "^(draft|running|paused|stopped|concluded)$")]
    status: Option<String>,
}

/// The tenant's experiments.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_experiments` builds
struct ExperimentList {
    items: Vec<ExperimentView>,
}

/// `GET /v1/experiments?status=`: the tenant's experiments, newest first (at most 1000).
#[utoipa::path(
    get,
    path = "/v1/experiments",
    tag = "experiments",
    params(ListQuery),
    responses(
        (status = 200, description = "Experiments, newest first", body = ExperimentList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_experiments(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    if let Some(status) = &query.status {
        if !["draft", "running", "paused", "stopped", "concluded"].contains(&status.as_str()) {
            return Err(ApiError::invalid(
                "status",
                "must be one of draft, running, paused, stopped, concluded",
            ));
        }
    }
    let items: Vec<ExperimentView> =
        experiments::experiments(&app.pool, &caller.tenant, query.status.as_deref())
            .await?
            .iter()
            .map(StoredExperiment::view)
            .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/experiments/{id}`: the experiment now, or as it was at `?as_of=`.
#[utoipa::path(
    get,
    path = "/v1/experiments/{experiment_id}",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id"), AsOfQuery),
    responses(
        (status = 200, description = "The experiment", body = ExperimentView,
            headers(("ETag" = String, description = "The experiment's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_experiment(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let Some(as_of) = query.as_of else {
        return Ok(respond(
            StatusCode::OK,
            read_experiment(&app, &caller.tenant, id).await?.view(),
        ));
    };
    let past = history::as_of(
        &app.experiments,
        &caller.tenant,
        &id.to_string(),
        &as_of,
        "experiment",
    )
    .await?;
    let Experiment {
        tenant: Some(tenant),
        spec: Some(spec),
        salt,
        status,
        winner,
        promotion,
        reallocated_while_running,
    } = past.aggregate
    else {
        return Err(ApiError::NotFound("experiment"));
    };
    let stored = StoredExperiment {
        id,
        tenant,
        spec,
        salt,
        status,
        winner,
        promotion,
        reallocated_while_running,
        version: past.version as i64,
        created_at: past.created_at,
        updated_at: past.updated_at,
        started_at: None,
    };
    Ok(respond(StatusCode::OK, stored.view()))
}

/// `GET /v1/experiments/{id}/history`: the experiment's events with who, when and why.
#[utoipa::path(
    get,
    path = "/v1/experiments/{experiment_id}/history",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the experiment's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn experiment_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        Experiment::TYPE,
        &id.to_string(),
        query,
        "experiment",
    )
    .await
}

/// Runs a lifecycle command and answers with the experiment after it.
async fn change(
    app: &AppState,
    context: CommandContext,
    id: Uuid,
    command: ExperimentCommand,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let committed = app
        .execute(&app.experiments, &id.to_string(), command, &context)
        .await?;
    // This process assigns with the change at once; others follow the log.
    app.live_experiments
        .apply_committed(id, &committed.events, committed.version);
    let stored = read_experiment(app, &context.caller.tenant, id).await?;
    Ok(respond(StatusCode::OK, stored.view()))
}

macro_rules! lifecycle_route {
    ($name:ident, $path:literal, $what:literal, $command:expr) => {
        #[doc = concat!("`POST ", $path, "`: ", $what, " (why: `X-Reason`).")]
        #[utoipa::path(
            post,
            path = $path,
            tag = "experiments",
            params(("experiment_id" = Uuid, Path, description = "The experiment's id"), ChangeHeaders),
            responses(
                (status = 200, description = "The experiment after the change", body = ExperimentView,
                    headers(("ETag" = String, description = "The experiment's version"))),
                (status = 404, response = NotFound),
                (status = 409, response = Conflict),
                (status = 422, response = ValidationFailed),
            )
        )]
        async fn $name(
            State(app): State<AppState>,
            context: CommandContext,
            ApiPath(id): ApiPath<Uuid>,
        ) -> ApiResult<impl IntoResponse> {
            change(&app, context, id, $command).await
        }
    };
}

lifecycle_route!(
    start,
    "/v1/experiments/{experiment_id}/start",
    "start assigning subjects to the variants (draft → running)",
    ExperimentCommand::Start
);
lifecycle_route!(
    pause,
    "/v1/experiments/{experiment_id}/pause",
    "assign every subject the control until resumed (running → paused)",
    ExperimentCommand::Pause { evidence: None }
);
lifecycle_route!(
    resume,
    "/v1/experiments/{experiment_id}/resume",
    "assign by the weights again (paused → running)",
    ExperimentCommand::Resume
);
lifecycle_route!(
    stop,
    "/v1/experiments/{experiment_id}/stop",
    "stop for good (running or paused → stopped); results stay readable",
    ExperimentCommand::Stop
);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConcludeBody {
    /// The winning variant's name.
    winner: String,
    #[schema(value_type = ReasonText)]
    reason: String,
    /// Also make the winner what everyone gets: move the prompt's `production` label to its
    /// version, or set its configuration value. A protected label or key becomes a change
    /// request for another key to approve. Default false.
    promote: Option<bool>,
}

/// `POST /v1/experiments/{id}/conclude`: name the winner of a stopped experiment, with why,
/// and promote it when asked, in the same act (one request id; the promotion's cause is the
/// experiment).
#[utoipa::path(
    post,
    path = "/v1/experiments/{experiment_id}/conclude",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id"), ChangeHeaders),
    request_body = ConcludeBody,
    responses(
        (status = 200, description = "The concluded experiment", body = ExperimentView,
            headers(("ETag" = String, description = "The experiment's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn conclude(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ConcludeBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(Some(body.reason))?;
    let winner = Slug::parse("winner", &body.winner)?.to_string();
    let experiment = read_experiment(&app, &context.caller.tenant, id).await?;
    // Checked before promoting, so that a refused conclusion changes nothing.
    if experiment.status != ExperimentStatus::Stopped {
        return Err(ApiError::Conflict(format!(
            "the experiment is {}, so it cannot be concluded before it is stopped",
            experiment.status.as_str()
        )));
    }
    if experiment.spec.variant(&winner).is_none() {
        return Err(ApiError::invalid(
            "winner",
            "must name one of the experiment's variants",
        ));
    }
    let promotion = if body.promote.unwrap_or(false) {
        let change = experiment.spec.promotion_of(&winner)?;
        Some(
            match approvals::propose_when_protected(&app, &context, change.clone()).await? {
                Some(request) => Promotion {
                    change,
                    applied_version: None,
                    change_request: Some(request.id),
                },
                None => Promotion {
                    applied_version: Some(approvals::apply_change(&app, &context, id, change.clone()).await?),
                    change,
                    change_request: None,
                },
            },
        )
    } else {
        None
    };
    change(
        &app,
        context,
        id,
        ExperimentCommand::Conclude { winner, promotion },
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// Who is being assigned: a user, a session, an account.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    subject: String,
    /// The feature the call serves, for an experiment targeting features.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    feature: Option<String>,
}

/// A subject's variant.
#[derive(Serialize, ToSchema)]
struct AssignmentView {
    experiment_id: Uuid,
    subject: String,
    variant: String,
    /// `assigned` while the experiment runs; otherwise the control: `not_running`, or
    /// `not_targeted` for a call outside its targeting (a feature, or the calling key).
    reason: &'static str,
}

/// `POST /v1/experiments/{id}/assign`: the subject's variant, from memory: the same on
/// every instance and after restarts. While the experiment does not run, or for a call
/// outside its targeting (its features; the calling key), the control.
#[utoipa::path(
    post,
    path = "/v1/experiments/{experiment_id}/assign",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id")),
    request_body = AssignBody,
    responses(
        (status = 200, description = "The subject's variant", body = AssignmentView),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn assign(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AssignBody>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::CheckBudgets)?;
    if body.subject.is_empty() || body.subject.chars().count() > 200 || body.subject.contains('\0') {
        return Err(ApiError::invalid("subject", "must be 1 to 200 characters"));
    }
    let feature = body.feature.as_deref();
    let assignment =
        match app
            .live_experiments
            .assign(&caller.tenant, id, &body.subject, feature, caller.key_id)
        {
            Some(assignment) => assignment,
            // Created by another process a moment ago: not in this one's memory yet.
            None => {
                let stored = read_experiment(&app, &caller.tenant, id).await?;
                let targeted = domain::experiment::targets(&stored.spec.targeting, feature, caller.key_id);
                domain::experiment::assign(
                    &stored.salt,
                    &stored.spec.variants,
                    stored.status,
                    targeted,
                    &body.subject,
                )
                .ok_or(ApiError::NotFound("experiment"))?
            }
        };
    Ok(Json(AssignmentView {
        experiment_id: id,
        subject: body.subject,
        variant: assignment.variant,
        reason: assignment.reason,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes what `observe` reads
struct ObservationBody {
    #[schema(min_length = 1, max_length = 200)]
    subject: String,
    /// The variant the subject was assigned.
    variant: String,
    /// An observation name one of the experiment's metrics reads.
    metric: String,
    value: f64,
    /// When it happened (default: now).
    #[schema(format = DateTime)]
    timestamp: Option<String>,
}

/// What was stored.
#[derive(Serialize, ToSchema)]
struct ObserveOutcome {
    accepted: u64,
}

/// `POST /v1/experiments/{id}/observations`: outcomes that arrive after the call (a
/// conversion, a rating), up to 10,000. All are checked first: one bad observation refuses
/// the request, naming each bad one.
#[utoipa::path(
    post,
    path = "/v1/experiments/{experiment_id}/observations",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id")),
    request_body = Vec<ObservationBody>,
    responses(
        (status = 200, description = "How many were stored", body = ObserveOutcome),
        (status = 404, response = NotFound),
        (status = 413, description = "More than 10,000 observations"),
        (status = 422, response = ValidationFailed),
    )
)]
async fn observe(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Vec<Value>>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::IngestUsage)?;
    if body.len() > MAX_OBSERVATIONS {
        return Err(ApiError::TooManyRecords {
            limit: MAX_OBSERVATIONS,
        });
    }
    let experiment = read_experiment(&app, &caller.tenant, id).await?;
    if experiment.status == ExperimentStatus::Draft {
        return Err(ApiError::Conflict("the experiment has not started".into()));
    }
    let now = Utc::now();
    let mut observations = Vec::with_capacity(body.len());
    let mut errors = Vec::new();
    for (index, value) in body.iter().enumerate() {
        let field = |name: &str| format!("[{index}].{name}");
        let text = |name: &str| value.get(name).and_then(Value::as_str);
        let subject =
            text("subject").filter(|s| !s.is_empty() && s.chars().count() <= 200 && !s.contains('\0'));
        let variant = text("variant").filter(|v| experiment.spec.variant(v).is_some());
        let metric = text("metric").filter(|m| experiment.spec.observes(m));
        let number = value
            .get("value")
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite());
        let at = match text("timestamp") {
            Some(stamp) => parse_instant("timestamp", stamp)
                .ok()
                .filter(|at| *at <= now + chrono::Duration::hours(24)),
            None if value.get("timestamp").is_some_and(|t| !t.is_null()) => None,
            None => Some(now),
        };
        let known = ["subject", "variant", "metric", "value", "timestamp"];
        let unknown = value
            .as_object()
            .map(|fields| fields.keys().any(|key| !known.contains(&key.as_str())))
            .unwrap_or(true);
        for (ok, name, message) in [
            (
                subject.is_some(),
                "subject",
                "must be a string of 1 to 200 characters",
            ),
            (
                variant.is_some(),
                "variant",
                "must name one of the experiment's variants",
            ),
            (
                metric.is_some(),
                "metric",
                "must be an observation one of the experiment's metrics reads",
            ),
            (number.is_some(), "value", "must be a finite number"),
            (
                at.is_some(),
                "timestamp",
                "must be an RFC 3339 timestamp, at most a day ahead",
            ),
            (
                !unknown,
                "record",
                "must be an object of subject, variant, metric, value and timestamp",
            ),
        ] {
            if !ok {
                errors.push(FieldError {
                    field: field(name),
                    message: message.into(),
                });
            }
        }
        if let (Some(subject), Some(variant), Some(metric), Some(value), Some(at)) =
            (subject, variant, metric, number, at)
        {
            observations.push(Observation {
                subject: subject.to_string(),
                variant: variant.to_string(),
                metric: metric.to_string(),
                value,
                at,
            });
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let accepted =
        commands::observations::store(&app.pool, &caller.tenant, id, caller.key_id, &observations).await?;
    Ok(Json(ObserveOutcome { accepted }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ResultsQuery {
    /// `fixed` (default): read once at the planned size; `sequential`: safe to read as often
    /// as you like; `bayesian`: the posterior on the lift and the chance to beat control.
    #[param(pattern = "^(fixed|sequential|bayesian)$")]
    method: Option<String>,
    /// Across primary and secondary metrics × variants: `none` (default), `holm` or `bh`.
    #[param(pattern = "^(none|holm|bh)$")]
    correction: Option<String>,
    /// Compute the results from the data as it stood at this instant (RFC 3339).
    #[param(format = DateTime)]
    as_of: Option<String>,
}

/// What a result was computed from, to compute it again exactly (`?as_of=<until>`).
#[derive(Serialize, ToSchema)]
struct ResultsData {
    /// Usage records and observations stamped and received by then.
    until: chrono::DateTime<Utc>,
    /// The experiment's version (its definition and status) the result used.
    version: i64,
    usage_records: i64,
    observations: i64,
}

/// An experiment's results.
#[derive(Serialize, ToSchema)]
struct ResultsView {
    experiment_id: Uuid,
    status: String,
    /// Weights or targeting changed after it started: units before and after the change were
    /// split differently; the sample ratio check uses the weights now.
    reallocated_while_running: bool,
    /// The method, correction, sample ratio check, per metric the variants' figures and the
    /// comparisons with the control, and the guardrails found worse.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    results: domain::experiment_results::ExperimentResults,
    data: ResultsData,
}

/// `GET /v1/experiments/{id}/results?method=&correction=&as_of=`: per variant and metric
/// `units`, `mean`, `variance` and a 95 % interval; per treatment against the control the
/// absolute and relative lift with their intervals, the p-value (adjusted when asked) and
/// whether it is significant; the sample ratio check; the guardrails found worse. The unit
/// is the subject; a subject seen in several variants is counted apart, in no figure.
#[utoipa::path(
    get,
    path = "/v1/experiments/{experiment_id}/results",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id"), ResultsQuery),
    responses(
        (status = 200, description = "The results", body = ResultsView),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn results(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> ApiResult<impl IntoResponse> {
    use domain::experiment_results::{Correction, Method};
    caller.require(Permission::Read)?;
    let method = match query.method.as_deref() {
        None => Method::Fixed,
        Some(text) => Method::parse(text)
            .ok_or_else(|| ApiError::invalid("method", "must be fixed, sequential or bayesian"))?,
    };
    let correction = match query.correction.as_deref() {
        None => Correction::None,
        Some(text) => Correction::parse(text)
            .ok_or_else(|| ApiError::invalid("correction", "must be none, holm or bh"))?,
    };
    let until = match &query.as_of {
        Some(text) => parse_instant("as_of", text)?,
        None => Utc::now(),
    };
    let experiment = read_experiment(&app, &caller.tenant, id).await?;
    let units =
        projections::experiment::results::units(&app.pool, &caller.tenant, id, &experiment.spec, until)
            .await?;
    let compute = |method, correction| {
        domain::experiment_results::results(
            &experiment.spec,
            &units.variants,
            units.subjects_in_several_variants,
            method,
            correction,
        )
    };
    let results = compute(method, correction);
    // A guardrail found worse (by the fixed method, uncorrected) pauses a running experiment
    // now, not at the next round.
    let mut status = experiment.status;
    if query.as_of.is_none() {
        let fixed = if (method, correction) == (Method::Fixed, Correction::None) {
            None
        } else {
            Some(compute(Method::Fixed, Correction::None))
        };
        if crate::guardrails::enforce(&app, &experiment, fixed.as_ref().unwrap_or(&results)).await {
            status = ExperimentStatus::Paused;
        }
    }
    Ok(Json(ResultsView {
        experiment_id: id,
        status: status.as_str().to_string(),
        reallocated_while_running: experiment.reallocated_while_running,
        results,
        data: ResultsData {
            until,
            version: experiment.version,
            usage_records: units.records,
            observations: units.observations,
        },
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    /// A variant's name.
    name: String,
    #[schema(minimum = 1, maximum = 100)]
    weight: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AllocationBody {
    /// Every variant once, the weights summing to 100.
    weights: Vec<WeightBody>,
    /// The targeting from now on (none: all traffic).
    targeting: Option<TargetingBody>,
    #[schema(value_type = ReasonText)]
    reason: String,
}

/// `PUT /v1/experiments/{id}/allocation`: new weights and targeting, before the experiment
/// stops. A change while it runs is recorded as such and flagged in its results.
#[utoipa::path(
    put,
    path = "/v1/experiments/{experiment_id}/allocation",
    tag = "experiments",
    params(("experiment_id" = Uuid, Path, description = "The experiment's id"), ChangeHeaders),
    request_body = AllocationBody,
    responses(
        (status = 200, description = "The experiment after the change", body = ExperimentView,
            headers(("ETag" = String, description = "The experiment's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn reallocate(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AllocationBody>,
) -> ApiResult<impl IntoResponse> {
    let context = context.with_reason(Some(body.reason))?;
    let targeting = body.targeting.unwrap_or_default();
    let mut features = Vec::with_capacity(targeting.features.len());
    for feature in &targeting.features {
        features.push(Slug::parse("targeting.features", feature)?.to_string());
    }
    let command = ExperimentCommand::ChangeAllocation {
        weights: body.weights.into_iter().map(|w| (w.name, w.weight)).collect(),
        targeting: Targeting {
            features,
            keys: targeting.keys,
        },
    };
    change(&app, context, id, command).await
}
