//! Running a prompt through the gateway: which version (a label, a number, or the running
//! experiment's variant for the subject), which models (the version's, then its fallbacks),
//! whether the budgets allow the call, and the usage record every call leaves — written by
//! aipm itself, once per call, whether the model answered, failed or was cut off.
//!
//! The call and its record run in a task of their own, so a client that goes away (or a
//! request deadline) never leaves a call made but unrecorded.

use std::time::Instant;

use chrono::{DateTime, Utc};
use commands::usage::CostedRecord;
use domain::chat::{ChatMessage, Role, TokenUsage};
use domain::provider::ProviderKind;
use domain::text::Slug;
use domain::usage::{self, UsageRecord};
use projections::budget::live::Call;
use projections::catalog::queries as catalog;
use projections::registry::queries::{self as registry, CallableModel};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::gateway::{CallReport, ChatRequest, Endpoint, Protocol, Skip};
use crate::state::AppState;

/// The label a run without a label or version resolves.
pub const DEFAULT_LABEL: &str = "production";
/// Most models tried for one call: the version's and its fallbacks.
const LONGEST_CHAIN: i32 = 4;

/// Which version to run.
#[derive(Debug, Clone, Default)]
pub enum Selector {
    Label(Slug),
    Version(u32),
    /// The running experiment's variant for the subject, else the default label.
    #[default]
    Default,
}

/// The experiment a run took part in.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExperimentPick {
    pub id: Uuid,
    pub variant: String,
    /// `assigned`, or `not_targeted` (the control, for a call outside its targeting).
    pub reason: &'static str,
}

/// A version resolved for a run: what to render and which model to call.
#[derive(Debug, Clone)]
pub struct ResolvedVersion {
    pub prompt_id: Uuid,
    pub version: u32,
    /// The label the version was reached through, if any.
    pub label: Option<String>,
    pub template: String,
    pub params: Option<Value>,
    /// The model to call, by reference: the version's, or an experiment variant's.
    pub model: String,
    pub experiment: Option<ExperimentPick>,
}

/// Who a call is for: what budgets are over and what the usage record says.
#[derive(Debug, Clone, Default)]
pub struct Audience {
    pub subject: Option<String>,
    pub feature: Option<String>,
}

/// Resolves the version `selector` names of `caller`'s prompt `prompt_id`.
pub async fn resolve_version(
    app: &AppState,
    caller: &Caller,
    prompt_id: Uuid,
    selector: &Selector,
    audience: &Audience,
) -> ApiResult<ResolvedVersion> {
    let mut experiment = None;
    let mut model_override = None;
    let (version, label) = match selector {
        Selector::Version(number) => (*number, None),
        Selector::Label(label) => (
            label_version(app, caller, prompt_id, label.as_ref()).await?,
            Some(label.to_string()),
        ),
        Selector::Default => {
            let picked = audience.subject.as_deref().and_then(|subject| {
                app.live_experiments.running_for_prompt(
                    &caller.tenant,
                    prompt_id,
                    subject,
                    audience.feature.as_deref(),
                    caller.key_id,
                )
            });
            let mut version = None;
            if let Some((id, variant, assignment)) = picked {
                match &variant.treatment {
                    domain::experiment::Treatment::PromptVersion(number) => version = Some(*number),
                    domain::experiment::Treatment::Model(reference) => {
                        model_override = Some(reference.clone())
                    }
                    domain::experiment::Treatment::Config { .. }
                    | domain::experiment::Treatment::Unspecified => {}
                }
                experiment = Some(ExperimentPick {
                    id,
                    variant: assignment.variant,
                    reason: assignment.reason,
                });
            }
            match version {
                Some(number) => (number, None),
                None => (
                    label_version(app, caller, prompt_id, DEFAULT_LABEL).await?,
                    Some(DEFAULT_LABEL.to_string()),
                ),
            }
        }
    };
    let number = i32::try_from(version).map_err(|_| ApiError::NotFound("version"))?;
    let Some(stored) = catalog::version(&app.pool, &caller.tenant, prompt_id, number).await? else {
        return Err(prompt_or(app, caller, prompt_id, "version").await);
    };
    let model = model_override.or(stored.model).ok_or_else(|| {
        ApiError::invalid(
            "version",
            format!("version {version} names no model: publish a version with a model to run it"),
        )
    })?;
    Ok(ResolvedVersion {
        prompt_id,
        version,
        label,
        template: stored.template,
        params: stored.params,
        model,
        experiment,
    })
}

/// The version `label` points at, from memory, else from the read model.
async fn label_version(app: &AppState, caller: &Caller, prompt_id: Uuid, label: &str) -> ApiResult<u32> {
    let version = match app.live_labels.resolve(&caller.tenant, prompt_id, label) {
        Some(resolved) => Some(resolved.version),
        None => catalog::resolve(&app.pool, &caller.tenant, prompt_id, label)
            .await?
            .map(|resolved| resolved.version),
    };
    match version.and_then(|v| u32::try_from(v).ok()) {
        Some(version) => Ok(version),
        None => Err(prompt_or(app, caller, prompt_id, "label").await),
    }
}

/// 404 for the prompt when the caller's tenant has no such prompt, else for `what`.
async fn prompt_or(app: &AppState, caller: &Caller, prompt_id: Uuid, what: &'static str) -> ApiError {
    match catalog::prompt(&app.pool, &caller.tenant, prompt_id).await {
        Ok(Some(_)) => ApiError::NotFound(what),
        Ok(None) => ApiError::NotFound("prompt"),
        Err(error) => error.into(),
    }
}

/// The models a call of `model` may reach, in the order they are tried, and what the first
/// one is.
#[derive(Debug, Clone)]
pub struct Chain {
    pub endpoints: Vec<Endpoint>,
    pub primary: CallableModel,
}

/// The chain of `model` for a call of `prompt_id` by `caller` for `audience`. Refuses with
/// 402 when a hard budget covering the call is spent, with 422 when the model is unknown or
/// cannot be called; a fallback that cannot be called is passed over (its attempt says why).
pub async fn chain(
    app: &AppState,
    caller: &Caller,
    model: &str,
    prompt_id: Option<Uuid>,
    audience: &Audience,
) -> ApiResult<Chain> {
    let models = registry::fallback_chain(&app.pool, &caller.tenant, model, LONGEST_CHAIN).await?;
    let Some(primary) = models.first().cloned() else {
        return Err(ApiError::invalid(
            "model",
            format!("{model:?} is not a model of the registry: register it (POST /v1/models) to run it"),
        ));
    };
    let exhausted = |reference: &str| -> Vec<String> {
        let call = Call {
            model: Some(reference),
            prompt: prompt_id,
            feature: audience.feature.as_deref(),
            key: Some(caller.key_id),
        };
        app.live_budgets
            .covering(&caller.tenant, &call)
            .iter()
            .filter(|live| live.standing.exhausted)
            .map(|live| {
                format!(
                    "{:?} ({} {} of {})",
                    live.budget.name,
                    live.standing.spent,
                    live.budget.terms.currency.as_ref(),
                    live.budget.terms.amount
                )
            })
            .collect()
    };
    let spent = exhausted(&primary.reference);
    if !spent.is_empty() {
        return Err(ApiError::BudgetExhausted(spent.join(", ")));
    }
    let kind = ProviderKind::parse("kind", &primary.kind).ok();
    if kind.and_then(Protocol::of).is_none() {
        return Err(ApiError::invalid(
            "model",
            format!(
                "{} is served by a provider of kind {:?}, which aipm cannot call: it speaks openai, azure-openai and anthropic",
                primary.reference, primary.kind
            ),
        ));
    }
    let endpoints = models
        .iter()
        .filter_map(|model| {
            let protocol = ProviderKind::parse("kind", &model.kind)
                .ok()
                .and_then(Protocol::of)?;
            let spent = exhausted(&model.reference);
            let skip = if !model.enabled {
                Some(Skip {
                    outcome: "provider_disabled",
                    reason: format!("the provider {} is disabled", model.provider_name),
                })
            } else if model.status == "inactive" {
                Some(Skip {
                    outcome: "model_inactive",
                    reason: "the model is inactive".into(),
                })
            } else if !spent.is_empty() {
                Some(Skip {
                    outcome: "budget_exhausted",
                    reason: format!("a hard budget covering it is spent: {}", spent.join(", ")),
                })
            } else {
                None
            };
            Some(Endpoint {
                reference: model.reference.clone(),
                model_id: model.model_id.clone(),
                protocol,
                base_url: model.base_url.clone(),
                credential_ref: model.credential_ref.clone(),
                skip,
            })
        })
        .collect();
    Ok(Chain { endpoints, primary })
}

/// The parameters sent to the model: its defaults, overlaid with the version's.
pub fn merged_params(model: &CallableModel, version_params: Option<&Value>) -> Map<String, Value> {
    let mut params = model
        .default_params
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(overrides)) = version_params {
        params.extend(overrides.clone());
    }
    params
}

/// The usage a call leaves, and how it is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunCost {
    /// Exact decimal, as a string.
    #[schema(example = "0.000345")]
    pub amount: String,
    #[schema(example = "USD")]
    pub currency: String,
}

/// Tokens of a call.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct RunUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

impl From<TokenUsage> for RunUsage {
    fn from(usage: TokenUsage) -> Self {
        Self {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_input_tokens: usage.cached_input_tokens,
        }
    }
}

/// What is known of a call before it is made, for its usage record.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub run_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub started: Instant,
    pub prompt_id: Option<Uuid>,
    pub version: Option<u32>,
    pub label: Option<String>,
    pub experiment: Option<ExperimentPick>,
    pub audience: Audience,
}

impl CallContext {
    pub fn new(version: Option<&ResolvedVersion>, audience: Audience) -> Self {
        Self {
            run_id: Uuid::now_v7(),
            started_at: Utc::now(),
            started: Instant::now(),
            prompt_id: version.map(|v| v.prompt_id),
            version: version.map(|v| v.version),
            label: version.and_then(|v| v.label.clone()),
            experiment: version.and_then(|v| v.experiment.clone()),
            audience,
        }
    }
}

/// What recording a call stored.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The model that answered (or, for a call no model answered, the first one).
    pub model: String,
    pub cost: Option<RunCost>,
    pub latency_ms: u32,
}

/// Writes the usage record of a call: the answering model, the provider's token counts
/// (for a cut or abandoned stream, those it sent before the end; when it sent none, the
/// output is estimated from the text received, at four bytes a token), the cost at the price
/// in force when the call began, and every attempt. Its id is the run's, so it is stored once.
pub async fn record(
    app: &AppState,
    caller: &Caller,
    chain: &Chain,
    context: &CallContext,
    report: &CallReport,
) -> ApiResult<Recorded> {
    let model = report
        .answered_by
        .and_then(|index| chain.endpoints.get(index))
        .map_or_else(
            || chain.primary.reference.clone(),
            |endpoint| endpoint.reference.clone(),
        );
    let mut tokens = report.answer.usage;
    if !report.succeeded() && tokens.output_tokens == 0 && !report.answer.text.is_empty() {
        tokens.output_tokens = domain::chat::estimated_tokens(&report.answer.text);
    }
    let latency_ms = u32::try_from(context.started.elapsed().as_millis()).unwrap_or(u32::MAX);
    let record = UsageRecord {
        id: context.run_id.to_string(),
        timestamp: context.started_at,
        model: model.clone(),
        prompt_id: context.prompt_id,
        prompt_version: context.version,
        prompt_label: None,
        experiment_id: context.experiment.as_ref().map(|e| e.id),
        variant: context.experiment.as_ref().map(|e| e.variant.clone()),
        feature: context.audience.feature.clone(),
        subject: context.audience.subject.clone(),
        input_tokens: tokens.input_tokens,
        output_tokens: tokens.output_tokens,
        cached_input_tokens: tokens.cached_input_tokens.min(tokens.input_tokens),
        latency_ms: Some(latency_ms),
        status: report.status.clone(),
        metrics: Default::default(),
    };
    let prices = registry::price_periods(&app.pool, &caller.tenant, std::slice::from_ref(&model)).await?;
    let cost = prices
        .get(&model)
        .and_then(|periods| usage::price_at(periods, record.timestamp))
        .map(|price| usage::cost(&record, price));
    let shown = cost.as_ref().map(|cost| RunCost {
        amount: cost.amount.normalize().to_string(),
        currency: cost.currency.clone(),
    });
    let attempts = serde_json::to_value(&report.attempts).unwrap_or_default();
    let uncosted = cost.is_none();
    let costed = CostedRecord {
        record,
        cost,
        prompt_version: None,
        attempts: Some(attempts),
    };
    app.gateway_usage
        .store(&caller.tenant, caller.key_id, costed)
        .await
        .map_err(ApiError::Unavailable)?;
    app.metrics
        .usage_records
        .with_label_values(&[caller.tenant.as_str(), "accepted"])
        .inc();
    if !uncosted && app.live_budgets.any_of(&caller.tenant) {
        app.refresh_budgets().await;
    }
    app.metrics
        .gateway_calls
        .with_label_values(&[caller.tenant.as_str(), model.as_str(), report.status.as_str()])
        .inc();
    app.metrics
        .gateway_duration
        .with_label_values(&[model.as_str()])
        .observe(context.started.elapsed().as_secs_f64());
    for attempt in &report.attempts {
        app.metrics
            .gateway_attempts
            .with_label_values(&[attempt.model.as_str(), attempt.outcome.as_str()])
            .inc();
    }
    Ok(Recorded {
        model,
        cost: shown,
        latency_ms,
    })
}

/// The request a rendered prompt makes: the text as the user's message.
pub fn single_turn(rendered: String, params: Map<String, Value>) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::text(Role::User, rendered)],
        params,
        tools: Vec::new(),
    }
}
