//! `POST /v1/prompts/{id}/run`: aipm calls the model itself. The version is resolved, the
//! template rendered, the budgets checked, the model (then its fallbacks) called, and the
//! usage and cost recorded — once per call, whatever happens to the client.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::access::Permission;
use domain::chat::ToolCall;
use domain::fields::Invalid;
use domain::text::{InvalidText, Slug};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::gateway::{Attempt, CallReport};
use crate::openapi::{BudgetExhausted, NotFound, ProviderFailed, ValidationFailed};
use crate::runs::{
    self, Audience, CallContext, Chain, ExperimentPick, ResolvedVersion, RunCost, RunUsage, Selector,
};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(run_prompt))
}

/// What to run.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RunBody {
    /// The label whose version to run. With neither `label` nor `version`: the running
    /// experiment's variant for `subject`, else `production`.
    #[schema(value_type = Option<String>, example = "production")]
    label: Option<String>,
    /// The version to run, by number.
    #[schema(minimum = 1)]
    version: Option<i64>,
    /// The template's variables: a string goes in as it is, any other value as its JSON.
    #[schema(value_type = Option<Object>)]
    variables: Option<Value>,
    /// Who the call is for (a user, a session): what an experiment assigns by.
    #[schema(min_length = 1, max_length = 200)]
    subject: Option<String>,
    /// The feature the call serves: what budgets and analytics group by.
    #[schema(value_type = Option<String>, example = "support-chat")]
    feature: Option<String>,
    /// Answer with Server-Sent Events as the tokens arrive (`run`, `delta`…, then `done` or
    /// `error`).
    #[serde(default)]
    stream: bool,
}

/// A run's request, checked.
struct RunRequest {
    selector: Selector,
    variables: Map<String, Value>,
    audience: Audience,
    stream: bool,
}

/// The value, or `None` with its error noted in `errors`.
fn kept<T>(errors: &mut Invalid, result: Result<T, InvalidText>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

impl RunBody {
    fn parse(self) -> Result<RunRequest, Invalid> {
        let mut errors = Invalid::default();
        let label = self.label.as_deref().map(|label| Slug::parse("label", label));
        let version = self.version.map(|version| {
            u32::try_from(version)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| InvalidText::new("version", "must be a version number, 1 or more"))
        });
        if label.is_some() && version.is_some() {
            errors.push(InvalidText::new("version", "give label or version, not both"));
        }
        let variables = match self.variables {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(variables)) => Ok(variables),
            Some(_) => Err(InvalidText::new(
                "variables",
                "must be a JSON object of the template's variables",
            )),
        };
        let feature = self
            .feature
            .as_deref()
            .map(|feature| Slug::parse("feature", feature));
        let subject = self
            .subject
            .as_deref()
            .map(domain::conversation::parse_subject)
            .transpose();
        let label = label.and_then(|r| kept(&mut errors, r));
        let version = version.and_then(|r| kept(&mut errors, r));
        let variables = kept(&mut errors, variables);
        let feature = feature.and_then(|r| kept(&mut errors, r));
        let subject = kept(&mut errors, subject);
        errors.into_result()?;
        let selector = match (label, version) {
            (Some(label), _) => Selector::Label(label),
            (None, Some(version)) => Selector::Version(version),
            (None, None) => Selector::Default,
        };
        Ok(RunRequest {
            selector,
            variables: variables.unwrap_or_default(),
            audience: Audience {
                subject: subject.flatten(),
                feature: feature.map(|f| f.to_string()),
            },
            stream: self.stream,
        })
    }
}

/// What a run answered.
#[derive(Serialize, ToSchema)]
struct RunAnswer {
    /// The run's id: also its usage record's (`GET /v1/usage`).
    run_id: Uuid,
    prompt_id: Uuid,
    version: u32,
    /// The label the version was reached through.
    label: Option<String>,
    /// The experiment the call took part in, and the subject's variant.
    experiment: Option<ExperimentPick>,
    /// The model that answered, by reference (a fallback when the version's failed).
    model: String,
    output: String,
    /// Tools the model asked to call.
    #[schema(value_type = Vec<Object>)]
    tool_calls: Vec<ToolCall>,
    /// Why the model stopped, as its provider said.
    finish_reason: Option<String>,
    usage: RunUsage,
    /// At the price in force when the call began; `null` when the model has no price then.
    cost: Option<RunCost>,
    /// The whole call, retries and fallbacks included.
    latency_ms: u32,
    /// The answering provider's own time.
    provider_latency_ms: u32,
    /// Every attempt, in order.
    attempts: Vec<Attempt>,
}

/// What a streamed run says first.
#[derive(Serialize)]
struct RunStarted<'a> {
    run_id: Uuid,
    prompt_id: Uuid,
    version: u32,
    label: &'a Option<String>,
    experiment: &'a Option<ExperimentPick>,
    /// The model tried first.
    model: &'a str,
}

/// `POST /v1/prompts/{id}/run`: runs a version of the prompt through its model and records
/// the call's usage and cost. A hard budget covering the call that is spent refuses it with
/// `402` before any model is called. Rate limits and server errors of the provider are
/// retried (honouring `Retry-After`), then the model's fallback is tried; every attempt is
/// in the answer and the usage record. When no model answers: `502`, and the failed call is
/// recorded too. With `stream: true` the answer is Server-Sent Events; a stream the client
/// leaves is recorded as `cancelled`, with the tokens the provider had sent.
#[utoipa::path(
    post,
    path = "/v1/prompts/{prompt_id}/run",
    tag = "gateway",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id")),
    request_body = RunBody,
    responses(
        (status = 200, description = "The model's answer, its usage and cost (or, with `stream: true`, Server-Sent Events)", content(
            (RunAnswer = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 402, response = BudgetExhausted),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
        (status = 502, response = ProviderFailed),
    )
)]
async fn run_prompt(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(prompt_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RunBody>,
) -> ApiResult<Response> {
    caller.require(Permission::RunPrompts)?;
    let request = body.parse()?;
    if request.stream && headers.contains_key("idempotency-key") {
        return Err(ApiError::invalid(
            "stream",
            "a streamed run cannot be replayed under an Idempotency-Key: send stream: false to use one",
        ));
    }
    let version =
        runs::resolve_version(&app, &caller, prompt_id, &request.selector, &request.audience).await?;
    let rendered = domain::template::render(&version.template, &request.variables)?;
    let chain = runs::chain(&app, &caller, &version.model, Some(prompt_id), &request.audience).await?;
    let params = runs::merged_params(&chain.primary, version.params.as_ref());
    let chat = runs::single_turn(rendered, params);
    let context = CallContext::new(Some(&version), request.audience);
    if request.stream {
        return Ok(stream_run(app, caller, version, chain, chat, context).into_response());
    }
    // The call and its record go on even if this request is abandoned.
    let task = tokio::spawn(async move {
        let report = app.gateway.complete(&chain.endpoints, &chat).await;
        let recorded = runs::record(&app, &caller, &chain, &context, &report).await?;
        Ok::<_, ApiError>((report, recorded, context, version))
    });
    let (report, recorded, context, version) = task
        .await
        .map_err(|e| ApiError::Internal(format!("a run's task failed: {e}")))??;
    if !report.succeeded() {
        return Err(failed(&context, &report));
    }
    Ok(Json(answer(&context, &version, report, recorded)).into_response())
}

fn failed(context: &CallContext, report: &CallReport) -> ApiError {
    ApiError::ProviderFailed {
        run_id: context.run_id,
        detail: format!(
            "{} after {} attempt(s); the last: {}",
            report.status,
            report.attempts.len(),
            report.error().unwrap_or("no model could be called")
        ),
    }
}

fn answer(
    context: &CallContext,
    version: &ResolvedVersion,
    report: CallReport,
    recorded: runs::Recorded,
) -> RunAnswer {
    RunAnswer {
        run_id: context.run_id,
        prompt_id: version.prompt_id,
        version: version.version,
        label: version.label.clone(),
        experiment: version.experiment.clone(),
        model: recorded.model,
        output: report.answer.text,
        tool_calls: report.answer.tool_calls,
        finish_reason: report.answer.finish_reason,
        usage: report.answer.usage.into(),
        cost: recorded.cost,
        latency_ms: recorded.latency_ms,
        provider_latency_ms: report.provider_latency_ms,
        attempts: report.attempts,
    }
}

/// Text parts waiting to be sent to a streaming client; the provider is read no faster.
const STREAM_BUFFER: usize = 64;

fn stream_run(
    app: AppState,
    caller: Caller,
    version: ResolvedVersion,
    chain: Chain,
    chat: crate::gateway::ChatRequest,
    context: CallContext,
) -> impl IntoResponse {
    let started = json_event(
        "run",
        &RunStarted {
            run_id: context.run_id,
            prompt_id: version.prompt_id,
            version: version.version,
            label: &version.label,
            experiment: &version.experiment,
            model: &chain.primary.reference,
        },
    );
    let endpoints = chain.endpoints.clone();
    stream_call(app, endpoints, chat, started, move |app, report| async move {
        match runs::record(&app, &caller, &chain, &context, &report).await {
            Err(error) => {
                tracing::error!(%error, run_id = %context.run_id, "a streamed run's usage could not be recorded");
                error_event(&ApiError::Internal(
                    "the run's usage could not be recorded".into(),
                ))
            }
            Ok(_) if !report.succeeded() => error_event(&failed(&context, &report)),
            Ok(recorded) => json_event("done", &answer(&context, &version, report, recorded)),
        }
    })
}

/// Answers with Server-Sent Events: `started`, then a `delta` event per piece of text as
/// the model sends it, then the event `finish` makes of the call's report once the call
/// ended. The call and `finish` run in a task of their own: a client that leaves ends the
/// call (`cancelled`), and `finish` records it all the same.
pub(crate) fn stream_call<F, Finished>(
    app: AppState,
    endpoints: Vec<crate::gateway::Endpoint>,
    chat: crate::gateway::ChatRequest,
    started: Event,
    finish: F,
) -> impl IntoResponse
where
    F: FnOnce(AppState, CallReport) -> Finished + Send + 'static,
    Finished: std::future::Future<Output = Event> + Send,
{
    let (text_sender, text) = mpsc::channel::<String>(STREAM_BUFFER);
    let (end_sender, end) = oneshot::channel::<Event>();
    tokio::spawn(async move {
        let report = app.gateway.stream(&endpoints, &chat, text_sender).await;
        let last = finish(app, report).await;
        // The client may have left; what `finish` records is written either way.
        let _ = end_sender.send(last);
    });
    let deltas = futures::stream::unfold(text, |mut text| async move {
        let piece = text.recv().await?;
        Some((json_event("delta", &json!({ "text": piece })), text))
    });
    let last = futures::stream::once(end).filter_map(|event| async move { event.ok() });
    let events = futures::stream::once(async move { started })
        .chain(deltas)
        .chain(last)
        .map(Ok::<Event, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// An `error` event carrying the problem+json body `error` would have.
pub(crate) fn error_event(error: &ApiError) -> Event {
    json_event("error", &problem_json(error))
}

pub(crate) fn json_event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".into()))
}

/// The problem+json body an error would have, for an `error` event.
fn problem_json(error: &ApiError) -> Value {
    let (status, slug) = error.kind();
    json!({
        "type": format!("/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": error.to_string(),
    })
}
