//! Conversations: a chat with a prompt's model through aipm, each message an event of the
//! `Conversation` aggregate, each call recorded as usage. The model may propose actions on
//! aipm's resources through tool calls; they are shown with a preview and run only when a
//! key confirms them, with that key's role and the four-eyes rules.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::Utc;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::approval::ProposedChange;
use domain::chat::{ChatMessage, ImageSource, Part, Role};
use domain::conversation::{
    self, Action, Conversation, ConversationCommand, ImageRecord, ProposedAction, IMAGE_MEDIA_TYPES,
};
use domain::experiment::ExperimentCommand;
use domain::incident::Affected;
use domain::prompt::PromptCommand;
use domain::text::Slug;
use projections::approval::queries as approvals;
use projections::catalog::queries as catalog;
use projections::experiment::queries as experiments;
use projections::incident::queries as incidents;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, CommandContext, CreateHeaders};
use crate::openapi::{BudgetExhausted, Conflict, NotFound, ProviderFailed, ValidationFailed};
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::runs::{self, Audience, CallContext, Selector};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_conversation))
        .routes(routes!(read_conversation))
        .routes(routes!(conversation_history))
        .routes(routes!(send_message))
        .routes(routes!(confirm_action))
        .routes(routes!(decline_action))
}

/// Largest image sent inline, in bytes once decoded (the body limit bounds the whole
/// message too).
pub const MAX_IMAGE_BYTES: usize = 700 * 1024;
/// Output tokens kept free of the context window when the version's parameters do not say
/// (`max_tokens`).
const RESERVED_OUTPUT_TOKENS: u32 = 1024;

/// What a conversation is about: an aipm resource whose state is given to the model.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ContextBody {
    /// `prompt`, `experiment` or `incident`.
    #[schema(example = "incident")]
    kind: String,
    id: Uuid,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// The prompt whose rendered template is the conversation's system message.
    prompt_id: Uuid,
    /// The label whose version answers (default: the running experiment's variant for
    /// `subject`, else `production`); resolved at every message.
    #[schema(value_type = Option<String>, example = "production")]
    label: Option<String>,
    /// The template's variables.
    #[schema(value_type = Option<Object>)]
    variables: Option<Value>,
    /// Who the conversation is for (a user): what experiments assign by.
    #[schema(min_length = 1, max_length = 200)]
    subject: Option<String>,
    /// The resource the conversation is about; its state as of each message is given to
    /// the model.
    context: Option<ContextBody>,
}

/// A conversation and its transcript.
#[derive(Serialize, ToSchema)]
struct ConversationView {
    id: Uuid,
    prompt_id: Option<Uuid>,
    label: Option<String>,
    subject: Option<String>,
    /// `{kind, id}` of the resource it is about.
    #[schema(value_type = Option<Object>)]
    context: Option<conversation::Binding>,
    #[schema(value_type = Object)]
    variables: Map<String, Value>,
    /// Oldest first: `{role: "user", content, images}`, `{role: "assistant", content, model,
    /// prompt_version, run_id, usage, cost, latency_ms, actions, refused_calls}`, or
    /// `{role: "failed", run_id, status, error}` for a call no model answered.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<conversation::TranscriptMessage>,
    /// The conversation's version, also sent as `ETag`.
    version: u64,
}

fn view(id: Uuid, conversation: Conversation, version: u64) -> ConversationView {
    ConversationView {
        id,
        prompt_id: conversation.prompt_id,
        label: conversation.label,
        subject: conversation.subject,
        context: conversation.binding,
        variables: conversation.variables,
        messages: conversation.messages,
        version,
    }
}

fn with_etag(status: StatusCode, view: ConversationView) -> Response {
    let etag = format!("\"{}\"", view.version);
    (status, [(header::ETAG, etag)], Json(view)).into_response()
}

/// The caller's conversation `id` and its version; 404 for another tenant's.
async fn load(app: &AppState, caller: &Caller, id: Uuid) -> ApiResult<(Conversation, u64)> {
    let (conversation, version) = app.conversations.load(&id.to_string()).await?;
    if conversation.tenant.as_deref() != Some(caller.tenant.as_str()) {
        return Err(ApiError::NotFound("conversation"));
    }
    Ok((conversation, version))
}

fn selector(label: Option<&str>) -> ApiResult<Selector> {
    Ok(match label {
        Some(label) => Selector::Label(Slug::parse("label", label)?),
        None => Selector::Default,
    })
}

/// `POST /v1/conversations`: starts a conversation with a prompt. The template is rendered
/// with `variables` now, so that a missing one is refused at once.
#[utoipa::path(
    post,
    path = "/v1/conversations",
    tag = "gateway",
    params(CreateHeaders),
    request_body = StartBody,
    responses(
        (status = 201, description = "The new conversation", body = ConversationView, headers(
            ("ETag" = String, description = "The conversation's version"),
            ("Location" = String, description = "The conversation's URL"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn start_conversation(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<StartBody>,
) -> ApiResult<Response> {
    let caller = &context.caller;
    caller.require(Permission::RunPrompts)?;
    let variables = match body.variables {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(variables)) => variables,
        Some(_) => {
            return Err(ApiError::invalid(
                "variables",
                "must be a JSON object of the template's variables",
            ))
        }
    };
    let command = conversation::parse_start(
        caller.tenant.clone(),
        body.prompt_id,
        body.label.as_deref(),
        body.subject.as_deref(),
        body.context
            .as_ref()
            .map(|c| (c.kind.as_str(), c.id.to_string()))
            .as_ref()
            .map(|(kind, id)| (*kind, id.as_str())),
        variables.clone(),
    )?;
    let ConversationCommand::StartConversation {
        label,
        subject,
        binding,
        ..
    } = &command
    else {
        return Err(ApiError::Internal("parse_start made another command".into()));
    };
    if let Some(binding) = binding {
        bound_state(&app, &caller.tenant, *binding)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(
                    "context.id",
                    format!("there is no {} with this id in this tenant", binding.kind()),
                )
            })?;
    }
    let audience = Audience {
        subject: subject.clone(),
        feature: None,
    };
    let selector = match label {
        Some(label) => Selector::Label(label.clone()),
        None => Selector::Default,
    };
    let version = runs::resolve_version(&app, caller, body.prompt_id, &selector, &audience).await?;
    domain::template::render(&version.template, &variables)?;
    let id = context.new_id();
    app.create(&app.conversations, &id.to_string(), command, &context)
        .await?;
    let (conversation, version) = app.conversations.load(&id.to_string()).await?;
    let mut response = with_etag(StatusCode::CREATED, view(id, conversation, version));
    if let Ok(location) = header::HeaderValue::from_str(&format!("/v1/conversations/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/conversations/{id}`: the transcript (`?as_of=`: as it was then).
#[utoipa::path(
    get,
    path = "/v1/conversations/{conversation_id}",
    tag = "gateway",
    params(("conversation_id" = Uuid, Path, description = "The conversation's id"), AsOfQuery),
    responses(
        (status = 200, description = "The conversation and its transcript", body = ConversationView,
            headers(("ETag" = String, description = "The conversation's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn read_conversation(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::Read)?;
    if let Some(as_of) = &query.as_of {
        let past = history::as_of(
            &app.conversations,
            &caller.tenant,
            &id.to_string(),
            as_of,
            "conversation",
        )
        .await?;
        return Ok(with_etag(StatusCode::OK, view(id, past.aggregate, past.version)));
    }
    let (conversation, version) = load(&app, &caller, id).await?;
    Ok(with_etag(StatusCode::OK, view(id, conversation, version)))
}

/// `GET /v1/conversations/{id}/history`: every event of the conversation with who, when and
/// why.
#[utoipa::path(
    get,
    path = "/v1/conversations/{conversation_id}/history",
    tag = "gateway",
    params(("conversation_id" = Uuid, Path, description = "The conversation's id"), HistoryQuery),
    responses(
        (status = 200, description = "The conversation's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn conversation_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        Conversation::TYPE,
        &id.to_string(),
        query,
        "conversation",
    )
    .await
}

/// An image of a message: a URL the provider fetches, or the bytes in base64.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    /// An `http(s)` URL of the image (aipm does not fetch it).
    #[schema(max_length = 2048)]
    url: Option<String>,
    /// The image's bytes, base64 (standard alphabet), at most 700 KiB decoded.
    data: Option<String>,
    /// `image/png`, `image/jpeg`, `image/gif` or `image/webp`; for a URL, taken from its
    /// extension when not given.
    #[schema(example = "image/png")]
    media_type: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    #[serde(default)]
    #[schema(max_length = 32000)]
    content: String,
    #[serde(default)]
    #[schema(max_items = 10)]
    images: Vec<ImageBody>,
    /// Answer with Server-Sent Events: `message`, `delta`… as the reply arrives, then `done`
    /// (what the answer would be) or `error`.
    #[serde(default)]
    stream: bool,
}

/// A message's image: what is recorded, and what is sent.
fn read_image(image: ImageBody) -> ApiResult<(ImageRecord, ImageSource)> {
    match (image.url, image.data) {
        (Some(url), None) => {
            let media_type = image
                .media_type
                .or_else(|| media_type_of(&url).map(str::to_string))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "images.media_type",
                        "is required when the URL's extension does not say",
                    )
                })?;
            // The bytes are never seen: the URL's own SHA-256 and length are recorded.
            let sha256 = hex::encode(Sha256::digest(url.as_bytes()));
            let record = ImageRecord::parse(&sha256, url.len() as u64, &media_type, Some(&url))?;
            Ok((record, ImageSource::Url(url)))
        }
        (None, Some(data)) => {
            let media_type = image
                .media_type
                .ok_or_else(|| ApiError::invalid("images.media_type", "is required with data"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.as_bytes())
                .map_err(|_| ApiError::invalid("images.data", "must be base64 (standard alphabet)"))?;
            if bytes.len() > MAX_IMAGE_BYTES {
                return Err(ApiError::invalid(
                    "images.data",
                    format!("must be at most {MAX_IMAGE_BYTES} bytes decoded"),
                ));
            }
            let sha256 = hex::encode(Sha256::digest(&bytes));
            let record = ImageRecord::parse(&sha256, bytes.len() as u64, &media_type, None)?;
            Ok((record, ImageSource::Base64 { media_type, data }))
        }
        _ => Err(ApiError::invalid(
            "images",
            "each image has a url or data, not both",
        )),
    }
}

fn media_type_of(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    let extension = path.rsplit('.').next()?;
    IMAGE_MEDIA_TYPES.iter().copied().find(|media_type| {
        media_type.ends_with(extension) || (extension == "jpg" && *media_type == "image/jpeg")
    })
}

/// What answering a message produced.
#[derive(Serialize, ToSchema)]
struct MessageAnswer {
    conversation_id: Uuid,
    /// The reply as the transcript keeps it: `content`, `model`, `prompt_version`, `run_id`
    /// (its usage record's id), `usage`, `cost`, `latency_ms`, `actions` (each with `id`,
    /// `action`, `status`, `preview`) and `refused_calls`.
    #[schema(value_type = Object)]
    reply: conversation::Reply,
    /// Messages sent to the model this time (the system message and the turns kept by the
    /// history rule).
    context_messages: usize,
    /// The conversation's version after the reply.
    version: u64,
}

/// `POST /v1/conversations/{id}/messages`: a user message (text and images) and the model's
/// reply, with the conversation so far as context. The history sent is trimmed to the
/// model's context window by a stated rule (`domain::conversation::context_messages`):
/// the rendered prompt always, then the newest whole turns that fit. Images need a model
/// with the `vision` capability (`422` before any call). Proposed actions come back with a
/// preview; nothing is applied until confirmed.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conversation_id}/messages",
    tag = "gateway",
    params(("conversation_id" = Uuid, Path, description = "The conversation's id")),
    request_body = MessageBody,
    responses(
        (status = 200, description = "The model's reply (or, with `stream: true`, Server-Sent Events)", content(
            (MessageAnswer = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 402, response = BudgetExhausted),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
        (status = 502, response = ProviderFailed),
    )
)]
async fn send_message(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MessageBody>,
) -> ApiResult<Response> {
    let caller = context.caller.clone();
    caller.require(Permission::RunPrompts)?;
    if body.stream && context.metadata.idempotency_key.is_some() {
        return Err(ApiError::invalid(
            "stream",
            "a streamed reply cannot be replayed under an Idempotency-Key: send stream: false to use one",
        ));
    }
    let (conversation, _) = load(&app, &caller, id).await?;
    let prompt_id = conversation
        .prompt_id
        .ok_or_else(|| ApiError::Internal("a conversation without its prompt".into()))?;
    let mut records = Vec::new();
    let mut parts: Vec<Part> = Vec::new();
    if !body.content.is_empty() {
        parts.push(Part::Text(body.content.clone()));
    }
    for image in body.images {
        let (record, source) = read_image(image)?;
        records.push(record);
        parts.push(Part::Image(source));
    }
    let command = conversation::parse_user_message(&body.content, records)?;
    let audience = Audience {
        subject: conversation.subject.clone(),
        feature: None,
    };
    let version = runs::resolve_version(
        &app,
        &caller,
        prompt_id,
        &selector(conversation.label.as_deref())?,
        &audience,
    )
    .await?;
    let mut system = domain::template::render(&version.template, &conversation.variables)?;
    let chain = runs::chain(&app, &caller, &version.model, Some(prompt_id), &audience).await?;
    if parts.iter().any(|p| matches!(p, Part::Image(_)))
        && !chain.primary.capabilities.iter().any(|c| c == "vision")
    {
        return Err(ApiError::invalid(
            "images",
            format!(
                "{} has no vision capability: it cannot be sent images",
                chain.primary.reference
            ),
        ));
    }
    if let Some(binding) = conversation.binding {
        if let Some(state) = bound_state(&app, &caller.tenant, binding).await? {
            system.push_str(&format!(
                "\n\nThe conversation is about this {} (its state as of {}):\n{state}",
                binding.kind(),
                Utc::now().to_rfc3339()
            ));
        }
    }
    app.execute(&app.conversations, &id.to_string(), command, &context)
        .await?;
    let params = runs::merged_params(&chain.primary, version.params.as_ref());
    let reserved = params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map_or(RESERVED_OUTPUT_TOKENS, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let mut turns = conversation.history();
    turns.push(ChatMessage {
        role: Role::User,
        content: parts,
        tool_calls: Vec::new(),
    });
    let window = chain.primary.context_window.and_then(|w| u32::try_from(w).ok());
    let messages = conversation::context_messages(Some(&system), &turns, window, reserved);
    let messages_sent = messages.len();
    let chat = crate::gateway::ChatRequest {
        messages,
        params,
        tools: conversation::tool_definitions(),
    };
    let call = CallContext::new(Some(&version), audience);
    let turn = Turn {
        conversation: id,
        context: follow_up(&context, id),
        chain,
        call,
        version: version.version,
        sent: messages_sent,
    };
    if body.stream {
        let started = crate::routes::runs::json_event(
            "message",
            &json!({"conversation_id": id, "run_id": turn.call.run_id, "model": turn.chain.primary.reference}),
        );
        let endpoints = turn.chain.endpoints.clone();
        let response =
            crate::routes::runs::stream_call(app, endpoints, chat, started, move |app, report| async move {
                match turn.finish(&app, report).await {
                    Ok(answer) => crate::routes::runs::json_event("done", &answer),
                    Err(error) => crate::routes::runs::error_event(&error),
                }
            });
        return Ok(response.into_response());
    }
    // The call, its record and the reply go on even if this request is abandoned.
    let task = tokio::spawn(async move {
        let report = app.gateway.complete(&turn.chain.endpoints, &chat).await;
        turn.finish(&app, report).await
    });
    let answer = task
        .await
        .map_err(|e| ApiError::Internal(format!("a conversation's task failed: {e}")))??;
    Ok(Json(answer).into_response())
}

/// A call answering a message, about to be made: what recording it takes.
struct Turn {
    conversation: Uuid,
    /// The context of the commands recording the reply.
    context: CommandContext,
    chain: runs::Chain,
    call: CallContext,
    version: u32,
    /// Messages sent to the model.
    sent: usize,
}

impl Turn {
    /// Records the call's usage, then its reply (with its actions, each previewed) or its
    /// failure in the conversation.
    async fn finish(self, app: &AppState, report: crate::gateway::CallReport) -> ApiResult<MessageAnswer> {
        let Turn {
            conversation: id,
            context,
            chain,
            call,
            version,
            sent,
        } = self;
        let recorded = runs::record(app, &context.caller, &chain, &call, &report).await?;
        if !report.succeeded() {
            let error = report.error().unwrap_or("no model could be called").to_string();
            let command = ConversationCommand::RecordFailedReply {
                run_id: call.run_id.to_string(),
                status: report.status.clone(),
                error: error.clone(),
            };
            app.execute(&app.conversations, &id.to_string(), command, &context)
                .await?;
            return Err(ApiError::ProviderFailed {
                run_id: call.run_id,
                detail: format!("{}: {error}", report.status),
            });
        }
        let (mut actions, refused_calls) = conversation::proposed_actions(&report.answer.tool_calls);
        for action in &mut actions {
            action.preview = preview(app, &context.caller.tenant, &action.action).await.ok();
        }
        let command = ConversationCommand::RecordReply {
            content: report.answer.text.clone(),
            model: recorded.model.clone(),
            prompt_version: version,
            run_id: call.run_id.to_string(),
            usage: report.answer.usage,
            cost: recorded.cost.as_ref().and_then(|cost| {
                Some(domain::usage::Cost {
                    amount: cost.amount.parse().ok()?,
                    currency: cost.currency.clone(),
                })
            }),
            latency_ms: recorded.latency_ms,
            proposed_actions: actions,
            refused_calls,
        };
        let committed = app
            .execute(&app.conversations, &id.to_string(), command, &context)
            .await?;
        let (conversation, version) = app.conversations.load(&id.to_string()).await?;
        let reply = match conversation.messages.last() {
            Some(conversation::TranscriptMessage::Assistant(reply)) => reply.clone(),
            _ => {
                return Err(ApiError::Internal(
                    "the reply just recorded is not the last message".into(),
                ))
            }
        };
        Ok(MessageAnswer {
            conversation_id: id,
            reply,
            context_messages: sent,
            version: version.max(committed.version),
        })
    }
}

/// The context of a command a request makes after its first: the same caller and request,
/// caused by the conversation, without the request's Idempotency-Key (which its first
/// command holds).
fn follow_up(context: &CommandContext, conversation: Uuid) -> CommandContext {
    let mut metadata = context.metadata.clone();
    metadata.idempotency_key = None;
    metadata.causation_id = Some(conversation.to_string());
    CommandContext {
        caller: context.caller.clone(),
        metadata,
        expected_version: None,
        idempotency: None,
        written: context.written.clone(),
    }
}

/// The current state of the resource a conversation is about, as JSON; `None` when the
/// tenant has no such resource.
async fn bound_state(
    app: &AppState,
    tenant: &str,
    binding: conversation::Binding,
) -> ApiResult<Option<Value>> {
    use conversation::Binding;
    Ok(match binding {
        Binding::Prompt(id) => catalog::prompt(&app.pool, tenant, id)
            .await?
            .map(|prompt| serde_json::to_value(prompt).unwrap_or_default()),
        Binding::Experiment(id) => experiments::experiment(&app.pool, tenant, id)
            .await?
            .map(|experiment| serde_json::to_value(experiment.view()).unwrap_or_default()),
        Binding::Incident(id) => incidents::incident(&app.pool, tenant, id)
            .await?
            .map(|incident| serde_json::to_value(incident).unwrap_or_default()),
    })
}

/// What `action` would change, read now: the target before, and after.
async fn preview(app: &AppState, tenant: &str, action: &Action) -> ApiResult<Value> {
    Ok(match action {
        Action::TagPrompt { prompt_id, tags } => {
            let prompt = catalog::prompt(&app.pool, tenant, *prompt_id)
                .await?
                .ok_or(ApiError::NotFound("prompt"))?;
            let mut after: std::collections::BTreeSet<String> = prompt.tags.iter().cloned().collect();
            after.extend(tags.iter().map(ToString::to_string));
            json!({"prompt": prompt.name, "tags_before": prompt.tags, "tags_after": after})
        }
        Action::MovePromptLabel {
            prompt_id,
            label,
            version,
        } => {
            let prompt = catalog::prompt(&app.pool, tenant, *prompt_id)
                .await?
                .ok_or(ApiError::NotFound("prompt"))?;
            let change = ProposedChange::MovePromptLabel {
                prompt: *prompt_id,
                label: label.to_string(),
                version: *version,
            };
            let protected = approvals::protecting(&app.pool, tenant, &change).await?.is_some();
            json!({"prompt": prompt.name, "label": label, "version_before": prompt.labels.get(label.as_ref()),
                   "version_after": version, "needs_approval": protected})
        }
        Action::PauseExperiment {
            experiment_id,
            reason,
        } => {
            let experiment = experiments::experiment(&app.pool, tenant, *experiment_id)
                .await?
                .ok_or(ApiError::NotFound("experiment"))?;
            json!({"experiment": experiment.spec.name, "status_before": experiment.status.as_str(),
                   "status_after": "paused", "reason": reason})
        }
        Action::OpenIncident {
            title,
            severity,
            models,
            features,
            providers,
        } => {
            json!({"title": title, "severity": severity, "affected": {"models": models, "features": features, "providers": providers}})
        }
    })
}

/// What confirming an action did.
#[derive(Serialize, ToSchema)]
struct ActionAnswer {
    conversation_id: Uuid,
    #[schema(value_type = Object)]
    action: ProposedAction,
}

/// `POST /v1/conversations/{id}/actions/{action_id}/confirm`: runs a proposed action as the
/// confirming key — its role must allow the change, and a protected label becomes a change
/// request for another key to approve — and records what it produced.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conversation_id}/actions/{action_id}/confirm",
    tag = "gateway",
    params(("conversation_id" = Uuid, Path, description = "The conversation's id"),
           ("action_id" = String, Path, description = "The action's id, as the reply listed it")),
    responses(
        (status = 200, description = "The action, confirmed, with its outcome", body = ActionAnswer),
        (status = 403, description = "The key's role may not make this change"),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn confirm_action(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, action_id)): ApiPath<(Uuid, String)>,
) -> ApiResult<Json<ActionAnswer>> {
    let (conversation, _) = load(&app, &context.caller, id).await?;
    let proposed = conversation
        .action(&action_id)
        .cloned()
        .ok_or(ApiError::NotFound("action"))?;
    if proposed.status != conversation::ActionStatus::Proposed {
        return Err(ApiError::Conflict(format!(
            "action {action_id:?} is already {}",
            proposed.status.as_str()
        )));
    }
    context.caller.require(Permission::Write)?;
    let inner = follow_up(&context, id);
    let outcome = run_action(&app, &inner, id, &proposed.action).await?;
    let command = ConversationCommand::ConfirmAction {
        action_id: action_id.clone(),
        outcome,
    };
    settle(&app, &context, id, &action_id, command).await
}

/// Records `command` settling the action `action_id`, and answers with the action after it.
async fn settle(
    app: &AppState,
    context: &CommandContext,
    id: Uuid,
    action_id: &str,
    command: ConversationCommand,
) -> ApiResult<Json<ActionAnswer>> {
    app.execute(&app.conversations, &id.to_string(), command, context)
        .await?;
    let (conversation, _) = app.conversations.load(&id.to_string()).await?;
    let action = conversation
        .action(action_id)
        .cloned()
        .ok_or(ApiError::NotFound("action"))?;
    Ok(Json(ActionAnswer {
        conversation_id: id,
        action,
    }))
}

/// Runs `action` as `context`'s caller; returns what it produced.
async fn run_action(
    app: &AppState,
    context: &CommandContext,
    conversation: Uuid,
    action: &Action,
) -> ApiResult<Value> {
    let tenant = context.caller.tenant.clone();
    match action.clone() {
        Action::TagPrompt { prompt_id, tags } => {
            let committed = app
                .execute(
                    &app.prompts,
                    &prompt_id.to_string(),
                    PromptCommand::TagPrompt { tags },
                    context,
                )
                .await?;
            Ok(json!({"prompt_id": prompt_id, "version": committed.version}))
        }
        Action::MovePromptLabel {
            prompt_id,
            label,
            version,
        } => {
            catalog::prompt(&app.pool, &tenant, prompt_id)
                .await?
                .ok_or(ApiError::NotFound("prompt"))?;
            let change = ProposedChange::MovePromptLabel {
                prompt: prompt_id,
                label: label.to_string(),
                version,
            };
            if let Some(request) =
                crate::routes::approvals::propose_when_protected(app, context, change.clone()).await?
            {
                return Ok(json!({"change_request": request.id, "status": "awaiting_approval"}));
            }
            let produced = crate::routes::approvals::apply_change(app, context, conversation, change).await?;
            Ok(json!({"prompt_id": prompt_id, "version": produced}))
        }
        Action::PauseExperiment {
            experiment_id,
            reason,
        } => {
            let mut context = follow_up(context, conversation);
            context.metadata.reason = Some(reason);
            let committed = app
                .execute(
                    &app.experiments,
                    &experiment_id.to_string(),
                    ExperimentCommand::Pause { evidence: None },
                    &context,
                )
                .await?;
            app.live_experiments
                .apply_committed(experiment_id, &committed.events, committed.version);
            Ok(json!({"experiment_id": experiment_id, "version": committed.version}))
        }
        Action::OpenIncident {
            title,
            severity,
            models,
            features,
            providers,
        } => {
            let affected = Affected {
                models,
                features,
                providers,
            };
            crate::routes::incidents::check_affected(app, &tenant, &affected).await?;
            let incident = crate::routes::incidents::open(app, context, severity, title, affected).await?;
            Ok(json!({"incident_id": incident}))
        }
    }
}

/// `POST /v1/conversations/{id}/actions/{action_id}/decline`: records that a proposed action
/// will not run.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conversation_id}/actions/{action_id}/decline",
    tag = "gateway",
    params(("conversation_id" = Uuid, Path, description = "The conversation's id"),
           ("action_id" = String, Path, description = "The action's id, as the reply listed it")),
    responses(
        (status = 200, description = "The action, declined", body = ActionAnswer),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn decline_action(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, action_id)): ApiPath<(Uuid, String)>,
) -> ApiResult<Json<ActionAnswer>> {
    context.caller.require(Permission::RunPrompts)?;
    let (conversation, _) = load(&app, &context.caller, id).await?;
    if conversation.action(&action_id).is_none() {
        return Err(ApiError::NotFound("action"));
    }
    let command = ConversationCommand::DeclineAction {
        action_id: action_id.clone(),
    };
    settle(&app, &context, id, &action_id, command).await
}
