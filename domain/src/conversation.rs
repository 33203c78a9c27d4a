//! The `Conversation` aggregate: a chat with a model about the tenant's aipm resources, run
//! through the gateway with one of the tenant's prompts. It records the transcript — each
//! user message, each reply with the model, prompt version, usage and cost behind it — and
//! the quick actions the model proposed through tool calls, which a person then confirms or
//! declines.
//!
//! - [`tool_definitions`] are the tools offered to the model; [`parse_action`] and
//!   [`proposed_actions`] read its tool calls into [`Action`]s, each the input of one
//!   existing command.
//! - [`Conversation::history`] rebuilds the chat from the transcript, and
//!   [`context_messages`] decides which of its turns a call sends.
//!
//! An image's bytes are never recorded: a message keeps each image's [`ImageRecord`]
//! (hash, size, type, URL) only.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::chat::{estimated_message_tokens, ChatMessage, Part, Role, TokenUsage, ToolCall, ToolDefinition};
use crate::fields::{self, AllValid, Invalid};
use crate::governed::Governed;
use crate::incident::Severity;
use crate::model::parse_model_id;
use crate::text::{DisplayName, InvalidText, Slug};
use crate::usage::Cost;

/// The context window assumed when the model's is not known, in tokens.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 8_192;
/// Longest user message, in characters: about the default context window in estimated
/// tokens.
pub const MAX_MESSAGE_CHARS: usize = 32_000;
/// Most images one user message may carry.
pub const MAX_IMAGES_PER_MESSAGE: usize = 10;
/// The image types every supported provider reads.
pub const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];
/// Longest image URL, in characters.
const MAX_URL_CHARS: usize = 2_048;
/// Longest subject, in characters (as on usage records).
const MAX_SUBJECT_CHARS: usize = 200;
/// Most tags one `tag_prompt` action adds.
pub const MAX_TAGS_PER_ACTION: usize = 20;
/// Most models, features or providers an `open_incident` action names (as the incidents'
/// API accepts).
pub const MAX_AFFECTED: usize = 50;
/// Longest reason of a `pause_experiment` action, in characters (as any change's reason).
pub const MAX_REASON_CHARS: usize = 1_000;

/// The aipm resource a conversation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Binding {
    Prompt(Uuid),
    Experiment(Uuid),
    Incident(Uuid),
}

impl Binding {
    pub const KINDS: [&'static str; 3] = ["prompt", "experiment", "incident"];

    pub fn kind(self) -> &'static str {
        match self {
            Self::Prompt(_) => "prompt",
            Self::Experiment(_) => "experiment",
            Self::Incident(_) => "incident",
        }
    }

    pub fn id(self) -> Uuid {
        match self {
            Self::Prompt(id) | Self::Experiment(id) | Self::Incident(id) => id,
        }
    }

    /// A binding from its kind and id, both reported when invalid (`binding.kind`,
    /// `binding.id`).
    pub fn parse(kind: &str, id: &str) -> Result<Self, Invalid> {
        let kind = Self::KINDS
            .into_iter()
            .find(|known| *known == kind)
            .ok_or_else(|| InvalidText::new("binding.kind", "must be one of prompt, experiment, incident"));
        let id = id
            .parse::<Uuid>()
            .map_err(|_| InvalidText::new("binding.id", "must be an id (UUID)"));
        let (kind, id) = (kind, id).all_valid()?;
        Ok(match kind {
            "prompt" => Self::Prompt(id),
            "experiment" => Self::Experiment(id),
            _ => Self::Incident(id),
        })
    }
}

/// What is kept of an image a user sent: never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// SHA-256 of the bytes, 64 lowercase hex digits.
    pub sha256: String,
    pub size_bytes: u64,
    /// One of [`IMAGE_MEDIA_TYPES`].
    pub media_type: String,
    /// Where the image was fetched from, when the user gave a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ImageRecord {
    /// Checks every field (`images.sha256`, `images.size_bytes`, `images.media_type`,
    /// `images.url`) at once.
    pub fn parse(
        sha256: &str,
        size_bytes: u64,
        media_type: &str,
        url: Option<&str>,
    ) -> Result<Self, Invalid> {
        let sha256 = if sha256.len() == 64 && sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            Ok(sha256.to_string())
        } else {
            Err(InvalidText::new(
                "images.sha256",
                "must be 64 lowercase hex digits",
            ))
        };
        let size_bytes = if size_bytes > 0 {
            Ok(size_bytes)
        } else {
            Err(InvalidText::new("images.size_bytes", "must be at least 1"))
        };
        let media_type = if IMAGE_MEDIA_TYPES.contains(&media_type) {
            Ok(media_type.to_string())
        } else {
            Err(InvalidText::new(
                "images.media_type",
                format!("must be one of {}", IMAGE_MEDIA_TYPES.join(", ")),
            ))
        };
        let url = url.map(parse_image_url).transpose();
        let (sha256, size_bytes, media_type, url) = (sha256, size_bytes, media_type, url).all_valid()?;
        Ok(Self {
            sha256,
            size_bytes,
            media_type,
            url,
        })
    }

    /// What stands for the image in later turns, its bytes being gone.
    pub fn placeholder(&self) -> String {
        let short: String = self.sha256.chars().take(12).collect();
        format!("[image sha256:{short} omitted]")
    }
}

fn parse_image_url(url: &str) -> Result<String, InvalidText> {
    let invalid = || {
        InvalidText::new(
            "images.url",
            "must be an http or https URL of at most 2048 characters",
        )
    };
    if url.chars().count() > MAX_URL_CHARS {
        return Err(invalid());
    }
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(url.to_string()),
        _ => Err(invalid()),
    }
}

/// A quick action the model may propose: the input of one existing command, on the
/// resource it names. Stored in [`ConversationEvent::AssistantReplied`]; its `kind` is the
/// name of the tool that proposes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// `PromptCommand::TagPrompt { tags }` on the prompt.
    TagPrompt { prompt_id: Uuid, tags: BTreeSet<Slug> },
    /// `PromptCommand::MovePromptLabel { label, version }` on the prompt.
    MovePromptLabel {
        prompt_id: Uuid,
        label: Slug,
        version: u32,
    },
    /// `ExperimentCommand::Pause { evidence: None }` on the experiment, with `reason` as the
    /// change's recorded reason.
    PauseExperiment { experiment_id: Uuid, reason: String },
    /// `IncidentCommand::OpenIncident`, opened by a person (the one who confirms), with
    /// `models`, `features` and `providers` as what it affects; its related changes are
    /// looked up when it opens, as for any incident.
    OpenIncident {
        title: DisplayName,
        severity: Severity,
        models: BTreeSet<String>,
        features: BTreeSet<String>,
        providers: BTreeSet<String>,
    },
}

impl Action {
    /// The tool proposing it (its `kind`).
    pub fn tool_name(&self) -> &'static str {
        match self {
            Self::TagPrompt { .. } => "tag_prompt",
            Self::MovePromptLabel { .. } => "move_prompt_label",
            Self::PauseExperiment { .. } => "pause_experiment",
            Self::OpenIncident { .. } => "open_incident",
        }
    }
}

/// Slugs, as JSON Schema says it: [`Slug::parse`]'s rule.
const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

/// The tools offered to the model, one per [`Action`] kind, each with the JSON Schema
/// (draft 2020-12) of its arguments. [`parse_action`] checks the same rules and more (a
/// model does not always keep to a schema).
pub fn tool_definitions() -> Vec<ToolDefinition> {
    let uuid = |description: &str| json!({"type": "string", "format": "uuid", "description": description});
    let slug =
        |description: &str| json!({"type": "string", "pattern": SLUG_PATTERN, "description": description});
    let slugs = |description: &str, min: usize, max: usize| {
        json!({
            "type": "array",
            "items": {"type": "string", "pattern": SLUG_PATTERN},
            "minItems": min,
            "maxItems": max,
            "description": description,
        })
    };
    let tool = |name: &str, description: &str, properties: Value, required: &[&str]| ToolDefinition {
        name: name.to_string(),
        description: description.to_string(),
        parameters: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }),
    };
    vec![
        tool(
            "tag_prompt",
            "Propose adding tags to a prompt. A person confirms before it happens.",
            json!({
                "prompt_id": uuid("The prompt's id."),
                "tags": slugs("Tags to add: lowercase letters, digits, '-', '_' or '.'.", 1, MAX_TAGS_PER_ACTION),
            }),
            &["prompt_id", "tags"],
        ),
        tool(
            "move_prompt_label",
            "Propose pointing a prompt's label (such as production) at one of its versions, \
             e.g. to roll back. A person confirms before it happens.",
            json!({
                "prompt_id": uuid("The prompt's id."),
                "label": slug("The label, e.g. production."),
                "version": {"type": "integer", "minimum": 1, "maximum": u32::MAX, "description": "A published version of the prompt."},
            }),
            &["prompt_id", "label", "version"],
        ),
        tool(
            "pause_experiment",
            "Propose pausing a running experiment: every subject gets the control until it is \
             resumed. A person confirms before it happens.",
            json!({
                "experiment_id": uuid("The experiment's id."),
                "reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON_CHARS, "description": "Why it should be paused; recorded with the change."},
            }),
            &["experiment_id", "reason"],
        ),
        tool(
            "open_incident",
            "Propose opening an incident. A person confirms before it happens.",
            json!({
                "title": {"type": "string", "minLength": 1, "maxLength": 200, "description": "What is broken, in a line."},
                "severity": {"type": "string", "enum": ["sev1", "sev2", "sev3", "sev4"], "description": "sev1: an outage of something critical; sev4: minor, a workaround exists."},
                "models": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}, "maxItems": MAX_AFFECTED, "description": "Affected models, by reference (provider/model)."},
                "features": slugs("Affected features, by name.", 0, MAX_AFFECTED),
                "providers": slugs("Affected providers, by name.", 0, MAX_AFFECTED),
            }),
            &["title", "severity"],
        ),
    ]
}

/// Reads a tool call of the model into the action it proposes, checking its arguments with
/// the rules of the command it maps to. Every invalid argument is reported at once, on the
/// argument's name; arguments that are not a JSON object, or an unknown tool (on `name`),
/// are errors too.
pub fn parse_action(call: &ToolCall) -> Result<Action, Invalid> {
    let Some(args) = call.arguments.as_object() else {
        return Err(Invalid::field("arguments", "must be a JSON object"));
    };
    match call.name.as_str() {
        "tag_prompt" => {
            let ((), prompt_id, tags) = (
                only(args, &["prompt_id", "tags"]),
                uuid_argument(args, "prompt_id"),
                list_argument(args, "tags", 1, MAX_TAGS_PER_ACTION, |tag| Slug::parse("tags", tag)),
            )
                .all_valid()?;
            Ok(Action::TagPrompt {
                prompt_id,
                tags: tags.into_iter().collect(),
            })
        }
        "move_prompt_label" => {
            let ((), prompt_id, label, version) = (
                only(args, &["prompt_id", "label", "version"]),
                uuid_argument(args, "prompt_id"),
                string_argument(args, "label").and_then(|label| Slug::parse("label", label)),
                version_argument(args, "version"),
            )
                .all_valid()?;
            Ok(Action::MovePromptLabel {
                prompt_id,
                label,
                version,
            })
        }
        "pause_experiment" => {
            let ((), experiment_id, reason) = (
                only(args, &["experiment_id", "reason"]),
                uuid_argument(args, "experiment_id"),
                string_argument(args, "reason").and_then(parse_reason),
            )
                .all_valid()?;
            Ok(Action::PauseExperiment { experiment_id, reason })
        }
        "open_incident" => {
            let ((), title, severity, models, features, providers) = (
                only(args, &["title", "severity", "models", "features", "providers"]),
                string_argument(args, "title").and_then(|title| DisplayName::parse("title", title)),
                string_argument(args, "severity").and_then(|severity| Severity::parse("severity", severity)),
                list_argument(args, "models", 0, MAX_AFFECTED, |model| parse_model_id("models", model)),
                list_argument(args, "features", 0, MAX_AFFECTED, |feature| {
                    Slug::parse("features", feature).map(|slug| slug.to_string())
                }),
                list_argument(args, "providers", 0, MAX_AFFECTED, |provider| {
                    Slug::parse("providers", provider).map(|slug| slug.to_string())
                }),
            )
                .all_valid()?;
            Ok(Action::OpenIncident {
                title,
                severity,
                models: models.into_iter().collect(),
                features: features.into_iter().collect(),
                providers: providers.into_iter().collect(),
            })
        }
        other => Err(Invalid::field(
            "name",
            format!(
                "{other:?} is not a tool offered here (tag_prompt, move_prompt_label, pause_experiment, open_incident)"
            ),
        )),
    }
}

/// Refuses arguments the tool does not take, each on its own.
fn only(args: &Map<String, Value>, known: &[&str]) -> Result<(), Invalid> {
    let mut invalid = Invalid::default();
    for name in args.keys().filter(|name| !known.contains(&name.as_str())) {
        invalid.push(InvalidText::new(
            "arguments",
            format!("{name:?} is not an argument of this tool"),
        ));
    }
    invalid.into_result()
}

fn string_argument<'a>(args: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, InvalidText> {
    match args.get(name) {
        None | Some(Value::Null) => Err(InvalidText::new(name, "is required")),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(InvalidText::new(name, "must be a string")),
    }
}

fn uuid_argument(args: &Map<String, Value>, name: &'static str) -> Result<Uuid, InvalidText> {
    string_argument(args, name)?
        .parse()
        .map_err(|_| InvalidText::new(name, "must be an id (UUID)"))
}

/// A version number: a whole number from 1 (`2.0` is 2: JSON has one kind of number).
fn version_argument(args: &Map<String, Value>, name: &'static str) -> Result<u32, InvalidText> {
    let invalid = || InvalidText::new(name, format!("must be a whole number from 1 to {}", u32::MAX));
    let value = args.get(name).filter(|value| !value.is_null());
    let Some(value) = value else {
        return Err(InvalidText::new(name, "is required"));
    };
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= f64::from(u32::MAX))
            .map(|f| f as u64)
    });
    whole
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(invalid)
}

/// A list of strings each read with `parse`; absent is empty. Every bad item is reported.
fn list_argument<T>(
    args: &Map<String, Value>,
    name: &'static str,
    min: usize,
    max: usize,
    parse: impl FnMut(&str) -> Result<T, InvalidText>,
) -> Result<Vec<T>, Invalid> {
    let items: &[Value] = match args.get(name) {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(Invalid::field(name, "must be a list of strings")),
    };
    if items.len() < min || items.len() > max {
        return Err(Invalid::field(name, format!("must list {min} to {max} items")));
    }
    let mut texts = Vec::new();
    for item in items {
        match item {
            Value::String(text) => texts.push(text.as_str()),
            _ => return Err(Invalid::field(name, "must be a list of strings")),
        }
    }
    fields::each(texts, parse)
}

fn parse_reason(reason: &str) -> Result<String, InvalidText> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.contains('\0') {
        return Err(InvalidText::new(
            "reason",
            format!("must be 1 to {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason.to_string())
}

/// Where a proposed action stands. Only a proposed one may be confirmed or declined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    #[default]
    Proposed,
    Confirmed,
    Declined,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Confirmed => "confirmed",
            Self::Declined => "declined",
        }
    }
}

/// An action a reply proposed, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedAction {
    /// Unique in the conversation: the tool call's id, or `action-<n>` (see
    /// [`proposed_actions`], and [`ConversationCommand::RecordReply`] for clashes).
    pub id: String,
    pub action: Action,
    pub status: ActionStatus,
    /// What it would change, read when it was proposed (the target's state before and
    /// after), for the person deciding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Value>,
    /// What running it produced, once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

/// A tool call that did not become an action: an unknown tool or invalid arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedCall {
    pub id: String,
    pub name: String,
    /// Each invalid argument, as `field: reason`.
    pub errors: Vec<String>,
}

/// Splits a reply's tool calls into the actions they propose and the calls refused (with
/// why), in their order. A call without an id gets `action-<n>`, `n` being its position
/// among the calls from 1, so that reading the same calls again gives the same ids.
pub fn proposed_actions(calls: &[ToolCall]) -> (Vec<ProposedAction>, Vec<RefusedCall>) {
    let mut actions = Vec::new();
    let mut refused = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        let id = if call.id.is_empty() {
            format!("action-{}", index + 1)
        } else {
            call.id.clone()
        };
        match parse_action(call) {
            Ok(action) => actions.push(ProposedAction {
                id,
                action,
                status: ActionStatus::Proposed,
                preview: None,
                outcome: None,
            }),
            Err(invalid) => refused.push(RefusedCall {
                id,
                name: call.name.clone(),
                errors: invalid.errors().iter().map(ToString::to_string).collect(),
            }),
        }
    }
    (actions, refused)
}

/// Which messages a call sends, from the prompt's rendered template (`system`) and the
/// conversation's `turns` ([`Conversation::history`] followed by the new user message),
/// within the model's context window.
///
/// The rule:
///
/// - The rendered prompt template is the system message. It comes first on every call and
///   is never dropped.
/// - The budget is `context_window - reserved_output` tokens ([`DEFAULT_CONTEXT_WINDOW`],
///   8,192, when the model's window is not known), less the system message's.
/// - The turns are grouped: a user message with the replies that follow it. Groups are
///   taken from the newest back while their estimated tokens
///   ([`estimated_message_tokens`]) fit in what is left of the budget; the first that does
///   not fit ends the history, so the oldest turns are dropped first, whole: a user
///   message is never sent without its reply, nor a reply without its message.
/// - The newest group (the new user message) is always sent, even when it alone exceeds
///   the budget: the provider then refuses the call, rather than aipm answering something
///   other than what was asked.
///
/// Tokens are estimated: the provider's own count may be higher, which `reserved_output`
/// has to absorb too.
pub fn context_messages(
    system: Option<&str>,
    turns: &[ChatMessage],
    context_window: Option<u32>,
    reserved_output: u32,
) -> Vec<ChatMessage> {
    let system = system.map(|text| ChatMessage::text(Role::System, text));
    let window = context_window.unwrap_or(DEFAULT_CONTEXT_WINDOW);
    let mut budget = u64::from(window.saturating_sub(reserved_output))
        .saturating_sub(system.as_ref().map_or(0, estimated_message_tokens));
    let mut group_starts: Vec<usize> = turns
        .iter()
        .enumerate()
        .filter(|(index, message)| *index == 0 || message.role == Role::User)
        .map(|(index, _)| index)
        .collect();
    group_starts.reverse();
    let mut kept_from = turns.len();
    for (newest_first, start) in group_starts.into_iter().enumerate() {
        let tokens: u64 = turns[start..kept_from].iter().map(estimated_message_tokens).sum();
        if newest_first > 0 && tokens > budget {
            break;
        }
        budget = budget.saturating_sub(tokens);
        kept_from = start;
    }
    system
        .into_iter()
        .chain(turns[kept_from..].iter().cloned())
        .collect()
}

/// A reply of the model as the transcript shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub content: String,
    /// The reference of the model that answered.
    pub model: String,
    /// The version of the conversation's prompt the call was made with.
    pub prompt_version: u32,
    /// The id of the call's usage record.
    pub run_id: String,
    pub usage: TokenUsage,
    /// `None` when the model had no price for the call's time.
    pub cost: Option<Cost>,
    pub latency_ms: u32,
    pub actions: Vec<ProposedAction>,
    pub refused_calls: Vec<RefusedCall>,
}

/// One message of the transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum TranscriptMessage {
    User {
        content: String,
        images: Vec<ImageRecord>,
    },
    Assistant(Reply),
    /// The call answering the message before failed.
    Failed {
        run_id: String,
        status: String,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConversationCommand {
    /// `label` is the prompt's label the calls resolve (its version then goes with each
    /// reply); `subject` is who the calls are for, as usage records and experiments know
    /// subjects.
    StartConversation {
        tenant: String,
        prompt_id: Uuid,
        label: Option<Slug>,
        subject: Option<String>,
        binding: Option<Binding>,
        /// The prompt template's variables, filled at every turn.
        variables: Map<String, Value>,
    },
    /// Only when no message awaits its reply.
    AddUserMessage {
        content: String,
        images: Vec<ImageRecord>,
    },
    /// The reply to the message awaiting one. Its actions are recorded as proposed whatever
    /// status they carry; an id empty or already used in the conversation is made unique:
    /// empty becomes `action-<n>` (its position in the reply, from 1), and a used one takes
    /// the first free suffix `-2`, `-3`, ….
    RecordReply {
        content: String,
        model: String,
        prompt_version: u32,
        run_id: String,
        usage: TokenUsage,
        cost: Option<Cost>,
        latency_ms: u32,
        proposed_actions: Vec<ProposedAction>,
        refused_calls: Vec<RefusedCall>,
    },
    /// The call answering the message awaiting a reply failed (no model answered); the
    /// message stays in the transcript unanswered, and the next message may follow it.
    RecordFailedReply {
        run_id: String,
        status: String,
        error: String,
    },
    /// Records that a proposed action ran, and what it produced (the target's new version,
    /// the incident opened).
    ConfirmAction {
        action_id: String,
        outcome: Value,
    },
    DeclineAction {
        action_id: String,
    },
}

/// Facts about a conversation. Stored in `events.event_type` by variant name: never rename
/// one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConversationEvent {
    ConversationStarted {
        tenant: String,
        prompt_id: Uuid,
        label: Option<String>,
        subject: Option<String>,
        binding: Option<Binding>,
        #[serde(default)]
        variables: Map<String, Value>,
    },
    UserMessageAdded {
        content: String,
        images: Vec<ImageRecord>,
    },
    AssistantReplied {
        content: String,
        model: String,
        prompt_version: u32,
        run_id: String,
        usage: TokenUsage,
        cost: Option<Cost>,
        latency_ms: u32,
        proposed_actions: Vec<ProposedAction>,
        refused_calls: Vec<RefusedCall>,
    },
    ReplyFailed {
        run_id: String,
        status: String,
        error: String,
    },
    ActionConfirmed {
        action_id: String,
        outcome: Value,
    },
    ActionDeclined {
        action_id: String,
    },
}

impl DomainEvent for ConversationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ConversationStarted { .. } => "ConversationStarted",
            Self::UserMessageAdded { .. } => "UserMessageAdded",
            Self::AssistantReplied { .. } => "AssistantReplied",
            Self::ReplyFailed { .. } => "ReplyFailed",
            Self::ActionConfirmed { .. } => "ActionConfirmed",
            Self::ActionDeclined { .. } => "ActionDeclined",
        }
        .to_string()
    }

    // Three parts: cqrs-es upcasters silently skip versions like "1.0".
    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("no such conversation")]
    NotFound,
    #[error("a conversation with this id already exists")]
    AlreadyExists,
    #[error("the last message still awaits its reply")]
    AwaitingReply,
    #[error("no message awaits a reply")]
    NothingToReplyTo,
    #[error("the conversation has no action {0:?}")]
    UnknownAction(String),
    #[error("action {action_id:?} is already {}", .status.as_str())]
    ActionSettled { action_id: String, status: ActionStatus },
}

/// Checks what starting a conversation takes from a client: `label` a [`Slug`], `subject`
/// 1–200 characters, `binding` a kind and an id; every invalid field at once.
pub fn parse_start(
    tenant: String,
    prompt_id: Uuid,
    label: Option<&str>,
    subject: Option<&str>,
    binding: Option<(&str, &str)>,
    variables: Map<String, Value>,
) -> Result<ConversationCommand, Invalid> {
    let (label, subject, binding) = (
        label.map(|label| Slug::parse("label", label)).transpose(),
        subject.map(parse_subject).transpose(),
        binding.map(|(kind, id)| Binding::parse(kind, id)).transpose(),
    )
        .all_valid()?;
    Ok(ConversationCommand::StartConversation {
        tenant,
        prompt_id,
        label,
        subject,
        binding,
        variables,
    })
}

/// Who calls are for (a user, a session), as usage records and experiments know subjects:
/// 1–200 characters without NUL.
pub fn parse_subject(subject: &str) -> Result<String, InvalidText> {
    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT_CHARS || subject.contains('\0') {
        return Err(InvalidText::new(
            "subject",
            format!("must be 1 to {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    Ok(subject.to_string())
}

/// Checks a user message: text of at most [`MAX_MESSAGE_CHARS`] without NUL, not blank
/// unless it carries images, at most [`MAX_IMAGES_PER_MESSAGE`] images, each record valid
/// ([`ImageRecord::parse`]); every invalid field at once.
pub fn parse_user_message(content: &str, images: Vec<ImageRecord>) -> Result<ConversationCommand, Invalid> {
    let mut invalid = Invalid::default();
    if content.trim().is_empty() && images.is_empty() {
        invalid.push(InvalidText::new("content", "must not be empty without images"));
    }
    if content.chars().count() > MAX_MESSAGE_CHARS || content.contains('\0') {
        invalid.push(InvalidText::new(
            "content",
            format!("must be at most {MAX_MESSAGE_CHARS} characters, without NUL"),
        ));
    }
    if images.len() > MAX_IMAGES_PER_MESSAGE {
        invalid.push(InvalidText::new(
            "images",
            format!("must be at most {MAX_IMAGES_PER_MESSAGE}"),
        ));
    }
    for image in &images {
        if let Err(errors) = ImageRecord::parse(
            &image.sha256,
            image.size_bytes,
            &image.media_type,
            image.url.as_deref(),
        ) {
            invalid.extend(errors);
        }
    }
    invalid.into_result()?;
    Ok(ConversationCommand::AddUserMessage {
        content: content.to_string(),
        images,
    })
}

/// The state of a conversation: what `GET /v1/conversations/{id}` shows, and what its
/// commands are decided on.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub tenant: Option<String>,
    pub prompt_id: Option<Uuid>,
    pub label: Option<String>,
    pub subject: Option<String>,
    pub binding: Option<Binding>,
    pub variables: Map<String, Value>,
    /// Oldest first; a user message, then its reply (or the failure of its call), and so on.
    pub messages: Vec<TranscriptMessage>,
}

impl Conversation {
    /// Whether the last message is a user message without its reply yet.
    pub fn awaiting_reply(&self) -> bool {
        matches!(self.messages.last(), Some(TranscriptMessage::User { .. }))
    }

    /// Every action proposed in the conversation, oldest first.
    pub fn actions(&self) -> impl Iterator<Item = &ProposedAction> {
        self.messages.iter().flat_map(|message| match message {
            TranscriptMessage::Assistant(reply) => reply.actions.as_slice(),
            TranscriptMessage::User { .. } | TranscriptMessage::Failed { .. } => &[],
        })
    }

    pub fn action(&self, action_id: &str) -> Option<&ProposedAction> {
        self.actions().find(|action| action.id == action_id)
    }

    /// Refuses to settle `action_id` unless it is proposed and not yet settled.
    fn check_proposed(&self, action_id: &str) -> Result<(), ConversationError> {
        let action = self
            .action(action_id)
            .ok_or_else(|| ConversationError::UnknownAction(action_id.to_string()))?;
        match action.status {
            ActionStatus::Proposed => Ok(()),
            status => Err(ConversationError::ActionSettled {
                action_id: action_id.to_string(),
                status,
            }),
        }
    }

    fn action_mut(&mut self, action_id: &str) -> Option<&mut ProposedAction> {
        self.messages
            .iter_mut()
            .filter_map(|message| match message {
                TranscriptMessage::Assistant(reply) => Some(reply.actions.iter_mut()),
                TranscriptMessage::User { .. } | TranscriptMessage::Failed { .. } => None,
            })
            .flatten()
            .find(|action| action.id == action_id)
    }

    /// The chat so far, as the next call's turns (before [`context_messages`] trims them):
    ///
    /// - a user message is its text, then one text part per image, `[image sha256:<first
    ///   12 hex digits> omitted]`: the bytes are not kept, so an image is seen by the model
    ///   in the call it came with only (the caller sends the new message's images itself);
    /// - a reply is its text, then a line per action it proposed — `[action <id>:
    ///   <action as JSON> <status>]`, with the outcome once confirmed — and per tool call
    ///   refused, with why, so that the model knows what became of them. The tool calls
    ///   themselves are not replayed: a provider expects a tool's result after each, and
    ///   the actions' results are these lines;
    /// - a message whose call failed is left out with its failure, so that the chat
    ///   alternates as providers require.
    pub fn history(&self) -> Vec<ChatMessage> {
        let answered = |index: usize| {
            !matches!(
                self.messages.get(index + 1),
                Some(TranscriptMessage::Failed { .. })
            )
        };
        self.messages
            .iter()
            .enumerate()
            .filter(|(index, message)| {
                !matches!(message, TranscriptMessage::Failed { .. }) && answered(*index)
            })
            .map(|(_, message)| message)
            .filter_map(|message| match message {
                TranscriptMessage::User { content, images } => {
                    let text = (!content.is_empty()).then(|| Part::Text(content.clone()));
                    let images = images.iter().map(|image| Part::Text(image.placeholder()));
                    Some(ChatMessage {
                        role: Role::User,
                        content: text.into_iter().chain(images).collect(),
                        tool_calls: Vec::new(),
                    })
                }
                TranscriptMessage::Assistant(reply) => {
                    Some(ChatMessage::text(Role::Assistant, reply_text(reply)))
                }
                TranscriptMessage::Failed { .. } => None,
            })
            .collect()
    }
}

fn reply_text(reply: &Reply) -> String {
    let actions = reply.actions.iter().map(|proposed| {
        let action = serde_json::to_string(&proposed.action).unwrap_or_default();
        let outcome = proposed
            .outcome
            .as_ref()
            .map(|outcome| format!(", outcome {outcome}"))
            .unwrap_or_default();
        format!(
            "[action {}: {action} {}{outcome}]",
            proposed.id,
            proposed.status.as_str()
        )
    });
    let refused = reply.refused_calls.iter().map(|call| {
        format!(
            "[tool call {} {} refused: {}]",
            call.id,
            call.name,
            call.errors.join("; ")
        )
    });
    let notes: Vec<String> = actions.chain(refused).collect();
    match (reply.content.is_empty(), notes.is_empty()) {
        (_, true) => reply.content.clone(),
        (true, false) => notes.join("\n"),
        (false, false) => format!("{}\n\n{}", reply.content, notes.join("\n")),
    }
}

/// `proposed`'s ids made unique among `taken` and each other, statuses reset to proposed;
/// see [`ConversationCommand::RecordReply`].
fn settle_ids(proposed: Vec<ProposedAction>, mut taken: BTreeSet<String>) -> Vec<ProposedAction> {
    proposed
        .into_iter()
        .enumerate()
        .map(|(index, action)| {
            let base = if action.id.is_empty() {
                format!("action-{}", index + 1)
            } else {
                action.id
            };
            let id = if taken.contains(&base) {
                (2..)
                    .map(|suffix| format!("{base}-{suffix}"))
                    .find(|candidate| !taken.contains(candidate))
                    .unwrap_or_default()
            } else {
                base
            };
            taken.insert(id.clone());
            ProposedAction {
                id,
                status: ActionStatus::Proposed,
                outcome: None,
                ..action
            }
        })
        .collect()
}

impl Aggregate for Conversation {
    /// Keys every stored conversation event: changing it orphans the history.
    const TYPE: &'static str = "conversation";
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ConversationCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ConversationError> {
        use ConversationCommand::*;
        let event = match command {
            StartConversation { .. } if self.tenant.is_some() => {
                return Err(ConversationError::AlreadyExists)
            }
            StartConversation {
                tenant,
                prompt_id,
                label,
                subject,
                binding,
                variables,
            } => ConversationEvent::ConversationStarted {
                tenant,
                prompt_id,
                label: label.map(|label| label.to_string()),
                subject,
                binding,
                variables,
            },
            _ if self.tenant.is_none() => return Err(ConversationError::NotFound),
            AddUserMessage { .. } if self.awaiting_reply() => return Err(ConversationError::AwaitingReply),
            AddUserMessage { content, images } => ConversationEvent::UserMessageAdded { content, images },
            RecordReply { .. } if !self.awaiting_reply() => return Err(ConversationError::NothingToReplyTo),
            RecordReply {
                content,
                model,
                prompt_version,
                run_id,
                usage,
                cost,
                latency_ms,
                proposed_actions,
                refused_calls,
            } => {
                let taken = self.actions().map(|action| action.id.clone()).collect();
                ConversationEvent::AssistantReplied {
                    content,
                    model,
                    prompt_version,
                    run_id,
                    usage,
                    cost,
                    latency_ms,
                    proposed_actions: settle_ids(proposed_actions, taken),
                    refused_calls,
                }
            }
            RecordFailedReply { .. } if !self.awaiting_reply() => {
                return Err(ConversationError::NothingToReplyTo)
            }
            RecordFailedReply {
                run_id,
                status,
                error,
            } => ConversationEvent::ReplyFailed {
                run_id,
                status,
                error,
            },
            ConfirmAction { action_id, outcome } => {
                self.check_proposed(&action_id)?;
                ConversationEvent::ActionConfirmed { action_id, outcome }
            }
            DeclineAction { action_id } => {
                self.check_proposed(&action_id)?;
                ConversationEvent::ActionDeclined { action_id }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ConversationEvent) {
        match event {
            ConversationEvent::ConversationStarted {
                tenant,
                prompt_id,
                label,
                subject,
                binding,
                variables,
            } => {
                self.variables = variables;
                self.tenant = Some(tenant);
                self.prompt_id = Some(prompt_id);
                self.label = label;
                self.subject = subject;
                self.binding = binding;
            }
            ConversationEvent::UserMessageAdded { content, images } => {
                self.messages.push(TranscriptMessage::User { content, images });
            }
            ConversationEvent::AssistantReplied {
                content,
                model,
                prompt_version,
                run_id,
                usage,
                cost,
                latency_ms,
                proposed_actions,
                refused_calls,
            } => self.messages.push(TranscriptMessage::Assistant(Reply {
                content,
                model,
                prompt_version,
                run_id,
                usage,
                cost,
                latency_ms,
                actions: proposed_actions,
                refused_calls,
            })),
            ConversationEvent::ReplyFailed {
                run_id,
                status,
                error,
            } => {
                self.messages.push(TranscriptMessage::Failed {
                    run_id,
                    status,
                    error,
                });
            }
            ConversationEvent::ActionConfirmed { action_id, outcome } => {
                if let Some(action) = self.action_mut(&action_id) {
                    action.status = ActionStatus::Confirmed;
                    action.outcome = Some(outcome);
                }
            }
            ConversationEvent::ActionDeclined { action_id } => {
                if let Some(action) = self.action_mut(&action_id) {
                    action.status = ActionStatus::Declined;
                }
            }
        }
    }
}

/// A conversation claims no names and no references. Its prompt must be the tenant's, but
/// prompts are never deleted (only archived) and are not registered as referable, so, as
/// for an experiment's prompt, the prompt is checked where the conversation starts — which
/// reads it anyway, to render its template.
impl Governed for Conversation {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    const PROMPT: Uuid = Uuid::from_u128(1);
    const INCIDENT: Uuid = Uuid::from_u128(9);
    const EXPERIMENT: Uuid = Uuid::from_u128(5);
    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn started() -> ConversationEvent {
        ConversationEvent::ConversationStarted {
            tenant: "acme".into(),
            prompt_id: PROMPT,
            label: Some("production".into()),
            subject: Some("user-7".into()),
            binding: Some(Binding::Incident(INCIDENT)),
            variables: Map::new(),
        }
    }

    fn asked(content: &str) -> ConversationEvent {
        ConversationEvent::UserMessageAdded {
            content: content.into(),
            images: vec![],
        }
    }

    fn ask(content: &str) -> ConversationCommand {
        ConversationCommand::AddUserMessage {
            content: content.into(),
            images: vec![],
        }
    }

    fn tag(id: &str, tag: &str) -> ProposedAction {
        ProposedAction {
            id: id.into(),
            action: Action::TagPrompt {
                prompt_id: PROMPT,
                tags: [Slug::parse("tags", tag).unwrap()].into(),
            },
            status: ActionStatus::Proposed,
            preview: None,
            outcome: None,
        }
    }

    fn usd(amount: &str) -> Cost {
        Cost {
            amount: amount.parse().unwrap(),
            currency: "USD".into(),
        }
    }

    fn replied(content: &str, proposed_actions: Vec<ProposedAction>) -> ConversationEvent {
        ConversationEvent::AssistantReplied {
            content: content.into(),
            model: "openai/gpt-4o-mini".into(),
            prompt_version: 3,
            run_id: "run-1".into(),
            usage: TokenUsage {
                input_tokens: 120,
                output_tokens: 30,
                cached_input_tokens: 0,
            },
            cost: Some(usd("0.000036")),
            latency_ms: 850,
            proposed_actions,
            refused_calls: vec![],
        }
    }

    fn reply(content: &str, proposed_actions: Vec<ProposedAction>) -> ConversationCommand {
        let ConversationEvent::AssistantReplied {
            content,
            model,
            prompt_version,
            run_id,
            usage,
            cost,
            latency_ms,
            proposed_actions,
            refused_calls,
        } = replied(content, proposed_actions)
        else {
            unreachable!()
        };
        ConversationCommand::RecordReply {
            content,
            model,
            prompt_version,
            run_id,
            usage,
            cost,
            latency_ms,
            proposed_actions,
            refused_calls,
        }
    }

    fn conversation() -> TestFramework<Conversation> {
        TestFramework::with(())
    }

    #[test]
    fn starting_records_the_prompt_label_subject_and_binding() {
        conversation()
            .given_no_previous_events()
            .when(ConversationCommand::StartConversation {
                tenant: "acme".into(),
                prompt_id: PROMPT,
                label: Some(Slug::parse("label", "production").unwrap()),
                subject: Some("user-7".into()),
                binding: Some(Binding::Incident(INCIDENT)),
                variables: Map::new(),
            })
            .then_expect_events(vec![started()]);
    }

    #[test]
    fn a_failed_call_leaves_its_message_unanswered_and_out_of_the_history() {
        let failed = ConversationEvent::ReplyFailed {
            run_id: "r1".into(),
            status: "server_error".into(),
            error: "503".into(),
        };
        conversation()
            .given(vec![started(), asked("first")])
            .when(ConversationCommand::RecordFailedReply {
                run_id: "r1".into(),
                status: "server_error".into(),
                error: "503".into(),
            })
            .then_expect_events(vec![failed.clone()]);
        conversation()
            .given(vec![started()])
            .when(ConversationCommand::RecordFailedReply {
                run_id: "r1".into(),
                status: "server_error".into(),
                error: "503".into(),
            })
            .then_expect_error(ConversationError::NothingToReplyTo);
        let mut conversation = Conversation::default();
        for event in [started(), asked("first"), failed, asked("second")] {
            conversation.apply(event);
        }
        assert!(conversation.awaiting_reply());
        let history = conversation.history();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].joined_text(), "second");
    }

    #[test]
    fn a_conversation_starts_once() {
        conversation()
            .given(vec![started()])
            .when(ConversationCommand::StartConversation {
                tenant: "acme".into(),
                prompt_id: PROMPT,
                label: None,
                subject: None,
                binding: None,
                variables: Map::new(),
            })
            .then_expect_error(ConversationError::AlreadyExists);
    }

    #[test]
    fn commands_on_a_conversation_never_started_are_not_found() {
        for command in [
            ask("hi"),
            reply("hello", vec![]),
            ConversationCommand::ConfirmAction {
                action_id: "call_1".into(),
                outcome: json!({}),
            },
            ConversationCommand::DeclineAction {
                action_id: "call_1".into(),
            },
        ] {
            conversation()
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ConversationError::NotFound);
        }
    }

    #[test]
    fn a_user_message_follows_the_start_or_a_reply() {
        conversation()
            .given(vec![started()])
            .when(ask("Why did latency jump?"))
            .then_expect_events(vec![asked("Why did latency jump?")]);
        conversation()
            .given(vec![started(), asked("a"), replied("b", vec![])])
            .when(ask("c"))
            .then_expect_events(vec![asked("c")]);
    }

    #[test]
    fn a_user_message_awaiting_its_reply_takes_no_other() {
        conversation()
            .given(vec![started(), asked("a")])
            .when(ask("b"))
            .then_expect_error(ConversationError::AwaitingReply);
    }

    #[test]
    fn a_reply_needs_a_user_message_awaiting_it() {
        conversation()
            .given(vec![started()])
            .when(reply("hello", vec![]))
            .then_expect_error(ConversationError::NothingToReplyTo);
        conversation()
            .given(vec![started(), asked("a"), replied("b", vec![])])
            .when(reply("again", vec![]))
            .then_expect_error(ConversationError::NothingToReplyTo);
    }

    #[test]
    fn a_reply_records_its_actions_as_proposed_with_ids_unique_in_the_conversation() {
        let mut already_confirmed = tag("call_1", "beta");
        already_confirmed.status = ActionStatus::Confirmed;
        already_confirmed.outcome = Some(json!({"version": 2}));
        conversation()
            .given(vec![
                started(),
                asked("a"),
                replied("b", vec![tag("call_1", "alpha")]),
                asked("c"),
            ])
            .when(reply(
                "d",
                vec![
                    already_confirmed,
                    tag("", "gamma"),
                    tag("call_1", "delta"),
                    tag("call_9", "epsilon"),
                ],
            ))
            .then_expect_events(vec![replied(
                "d",
                vec![
                    tag("call_1-2", "beta"),
                    tag("action-2", "gamma"),
                    tag("call_1-3", "delta"),
                    tag("call_9", "epsilon"),
                ],
            )]);
    }

    fn with_one_action() -> Vec<ConversationEvent> {
        vec![
            started(),
            asked("tag it beta"),
            replied("Proposed.", vec![tag("call_1", "beta")]),
        ]
    }

    #[test]
    fn confirming_an_action_records_what_running_it_produced() {
        conversation()
            .given(with_one_action())
            .when(ConversationCommand::ConfirmAction {
                action_id: "call_1".into(),
                outcome: json!({"version": 4}),
            })
            .then_expect_events(vec![ConversationEvent::ActionConfirmed {
                action_id: "call_1".into(),
                outcome: json!({"version": 4}),
            }]);
    }

    #[test]
    fn declining_an_action_records_it() {
        conversation()
            .given(with_one_action())
            .when(ConversationCommand::DeclineAction {
                action_id: "call_1".into(),
            })
            .then_expect_events(vec![ConversationEvent::ActionDeclined {
                action_id: "call_1".into(),
            }]);
    }

    #[test]
    fn an_action_never_proposed_cannot_be_settled() {
        conversation()
            .given(with_one_action())
            .when(ConversationCommand::ConfirmAction {
                action_id: "call_2".into(),
                outcome: json!(null),
            })
            .then_expect_error(ConversationError::UnknownAction("call_2".into()));
        conversation()
            .given(with_one_action())
            .when(ConversationCommand::DeclineAction {
                action_id: "call_2".into(),
            })
            .then_expect_error(ConversationError::UnknownAction("call_2".into()));
    }

    #[test]
    fn a_settled_action_is_settled_for_good() {
        let mut confirmed = with_one_action();
        confirmed.push(ConversationEvent::ActionConfirmed {
            action_id: "call_1".into(),
            outcome: json!({"version": 4}),
        });
        conversation()
            .given(confirmed.clone())
            .when(ConversationCommand::DeclineAction {
                action_id: "call_1".into(),
            })
            .then_expect_error(ConversationError::ActionSettled {
                action_id: "call_1".into(),
                status: ActionStatus::Confirmed,
            });
        conversation()
            .given(confirmed)
            .when(ConversationCommand::ConfirmAction {
                action_id: "call_1".into(),
                outcome: json!({"version": 5}),
            })
            .then_expect_error(ConversationError::ActionSettled {
                action_id: "call_1".into(),
                status: ActionStatus::Confirmed,
            });
        let mut declined = with_one_action();
        declined.push(ConversationEvent::ActionDeclined {
            action_id: "call_1".into(),
        });
        conversation()
            .given(declined)
            .when(ConversationCommand::ConfirmAction {
                action_id: "call_1".into(),
                outcome: json!({}),
            })
            .then_expect_error(ConversationError::ActionSettled {
                action_id: "call_1".into(),
                status: ActionStatus::Declined,
            });
        assert_eq!(
            ConversationError::ActionSettled {
                action_id: "call_1".into(),
                status: ActionStatus::Declined,
            }
            .to_string(),
            "action \"call_1\" is already declined"
        );
    }

    fn folded(events: Vec<ConversationEvent>) -> Conversation {
        let mut conversation = Conversation::default();
        for event in events {
            conversation.apply(event);
        }
        conversation
    }

    #[test]
    fn the_transcript_holds_every_message_and_each_action_with_its_status() {
        let mut events = with_one_action();
        events.push(ConversationEvent::ActionConfirmed {
            action_id: "call_1".into(),
            outcome: json!({"version": 4}),
        });
        events.push(asked("and now?"));
        let conversation = folded(events);
        assert_eq!(conversation.tenant(), Some("acme"));
        assert_eq!(conversation.prompt_id, Some(PROMPT));
        assert_eq!(conversation.label.as_deref(), Some("production"));
        assert_eq!(conversation.subject.as_deref(), Some("user-7"));
        assert_eq!(conversation.binding, Some(Binding::Incident(INCIDENT)));
        assert_eq!(conversation.messages.len(), 3);
        assert!(conversation.awaiting_reply());
        let action = conversation.action("call_1").unwrap();
        assert_eq!(action.status, ActionStatus::Confirmed);
        assert_eq!(action.outcome, Some(json!({"version": 4})));
        let TranscriptMessage::Assistant(reply) = &conversation.messages[1] else {
            panic!("{:?}", conversation.messages[1]);
        };
        assert_eq!(
            (
                reply.model.as_str(),
                reply.prompt_version,
                reply.run_id.as_str(),
                reply.latency_ms
            ),
            ("openai/gpt-4o-mini", 3, "run-1", 850)
        );
        assert_eq!(reply.cost, Some(usd("0.000036")));
        // What `GET /v1/conversations/{id}` shows of a message.
        let shown = serde_json::to_value(&conversation.messages[1]).unwrap();
        assert_eq!(shown["role"], "assistant");
        assert_eq!(shown["cost"], json!({"amount": "0.000036", "currency": "USD"}));
        assert_eq!(shown["actions"][0]["status"], "confirmed");
        assert_eq!(shown["actions"][0]["action"]["kind"], "tag_prompt");
        assert_eq!(
            serde_json::to_value(&conversation.messages[0]).unwrap(),
            json!({"role": "user", "content": "tag it beta", "images": []})
        );
    }

    #[test]
    fn a_conversation_claims_nothing_and_belongs_to_its_tenant() {
        let conversation = folded(vec![started()]);
        assert_eq!(Governed::tenant(&conversation), Some("acme"));
        assert_eq!(
            conversation.claims(&[asked("hi")]),
            crate::governed::Claims::default()
        );
        assert_eq!(Governed::tenant(&Conversation::default()), None);
    }

    #[test]
    fn events_are_stored_by_name_and_read_back_unchanged() {
        let events = vec![
            started(),
            ConversationEvent::UserMessageAdded {
                content: "see".into(),
                images: vec![
                    ImageRecord::parse(SHA, 2048, "image/png", Some("https://example.com/a.png")).unwrap(),
                ],
            },
            replied("ok", vec![tag("call_1", "beta")]),
            ConversationEvent::ActionConfirmed {
                action_id: "call_1".into(),
                outcome: json!({"version": 4}),
            },
            ConversationEvent::ActionDeclined {
                action_id: "call_2".into(),
            },
        ];
        let names: Vec<String> = events.iter().map(DomainEvent::event_type).collect();
        assert_eq!(
            names,
            [
                "ConversationStarted",
                "UserMessageAdded",
                "AssistantReplied",
                "ActionConfirmed",
                "ActionDeclined"
            ]
        );
        for event in events {
            assert_eq!(event.event_version(), "1.0.0");
            let stored = serde_json::to_value(&event).unwrap();
            assert_eq!(
                serde_json::from_value::<ConversationEvent>(stored).unwrap(),
                event
            );
        }
    }

    #[test]
    fn a_binding_is_its_kind_and_id() {
        let binding = Binding::Prompt(PROMPT);
        assert_eq!(
            serde_json::to_value(binding).unwrap(),
            json!({"kind": "prompt", "id": "00000000-0000-0000-0000-000000000001"})
        );
        assert_eq!(
            Binding::parse("experiment", "00000000-0000-0000-0000-000000000005"),
            Ok(Binding::Experiment(EXPERIMENT))
        );
        let fields: Vec<&str> = Binding::parse("team", "x")
            .unwrap_err()
            .errors()
            .iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["binding.kind", "binding.id"]);
        assert_eq!((binding.kind(), binding.id()), ("prompt", PROMPT));
    }

    fn fields_of(invalid: Invalid) -> Vec<&'static str> {
        invalid.errors().iter().map(|e| e.field).collect()
    }

    #[test]
    fn starting_reports_every_invalid_field_at_once() {
        let command = parse_start(
            "acme".into(),
            PROMPT,
            Some("production"),
            Some("user-7"),
            Some(("incident", "00000000-0000-0000-0000-000000000009")),
            Map::new(),
        )
        .unwrap();
        let ConversationCommand::StartConversation { binding, label, .. } = command else {
            panic!("{command:?}");
        };
        assert_eq!(binding, Some(Binding::Incident(INCIDENT)));
        assert_eq!(label.map(|l| l.to_string()).as_deref(), Some("production"));
        assert!(parse_start("acme".into(), PROMPT, None, None, None, Map::new()).is_ok());
        let invalid = parse_start(
            "acme".into(),
            PROMPT,
            Some("Prod"),
            Some(""),
            Some(("team", "nope")),
            Map::new(),
        )
        .unwrap_err();
        assert_eq!(
            fields_of(invalid),
            ["label", "subject", "binding.kind", "binding.id"]
        );
        let long = "x".repeat(201);
        assert!(parse_start("acme".into(), PROMPT, None, Some(&long), None, Map::new()).is_err());
    }

    #[test]
    fn an_image_is_kept_as_a_record_of_its_bytes() {
        let image = ImageRecord::parse(SHA, 10, "image/webp", None).unwrap();
        assert_eq!(image.placeholder(), "[image sha256:0123456789ab omitted]");
        assert!(ImageRecord::parse(SHA, 10, "image/png", Some("http://example.com/x.png")).is_ok());
        let invalid =
            ImageRecord::parse(&SHA.to_uppercase(), 0, "image/bmp", Some("file:///etc/passwd")).unwrap_err();
        assert_eq!(
            fields_of(invalid),
            [
                "images.sha256",
                "images.size_bytes",
                "images.media_type",
                "images.url"
            ]
        );
        assert!(ImageRecord::parse(&SHA[1..], 10, "image/png", None).is_err());
        let long_url = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(ImageRecord::parse(SHA, 10, "image/png", Some(&long_url)).is_err());
    }

    #[test]
    fn a_user_message_is_text_or_images_within_limits() {
        let image = ImageRecord::parse(SHA, 10, "image/png", None).unwrap();
        assert!(parse_user_message("hello", vec![]).is_ok());
        assert_eq!(
            parse_user_message("", vec![image.clone()]),
            Ok(ConversationCommand::AddUserMessage {
                content: String::new(),
                images: vec![image.clone()],
            })
        );
        assert_eq!(
            fields_of(parse_user_message("  ", vec![]).unwrap_err()),
            ["content"]
        );
        let mut bad_image = image.clone();
        bad_image.media_type = "text/html".into();
        let mut images = vec![image; MAX_IMAGES_PER_MESSAGE];
        images.push(bad_image);
        let invalid = parse_user_message(&"x".repeat(MAX_MESSAGE_CHARS + 1), images).unwrap_err();
        assert_eq!(fields_of(invalid), ["content", "images", "images.media_type"]);
        assert!(parse_user_message("a\0b", vec![]).is_err());
    }

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            name: name.into(),
            arguments,
        }
    }

    fn valid_arguments() -> Vec<(&'static str, Value)> {
        vec![
            (
                "tag_prompt",
                json!({"prompt_id": PROMPT.to_string(), "tags": ["beta", "eu", "beta"]}),
            ),
            (
                "move_prompt_label",
                json!({"prompt_id": PROMPT.to_string(), "label": "production", "version": 2}),
            ),
            (
                "pause_experiment",
                json!({"experiment_id": EXPERIMENT.to_string(), "reason": "error rate doubled in treatment"}),
            ),
            (
                "open_incident",
                json!({
                    "title": "Checkout answers time out",
                    "severity": "sev2",
                    "models": ["openai/gpt-4o-mini"],
                    "features": ["checkout"],
                    "providers": ["openai"],
                }),
            ),
        ]
    }

    #[test]
    fn each_tool_call_becomes_the_action_of_its_command() {
        let actions: Vec<Action> = valid_arguments()
            .into_iter()
            .map(|(name, arguments)| parse_action(&call(name, arguments)).unwrap())
            .collect();
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(
            actions,
            [
                Action::TagPrompt {
                    prompt_id: PROMPT,
                    tags: ["beta", "eu"].map(|t| Slug::parse("tags", t).unwrap()).into(),
                },
                Action::MovePromptLabel {
                    prompt_id: PROMPT,
                    label: Slug::parse("label", "production").unwrap(),
                    version: 2,
                },
                Action::PauseExperiment {
                    experiment_id: EXPERIMENT,
                    reason: "error rate doubled in treatment".into(),
                },
                Action::OpenIncident {
                    title: DisplayName::parse("title", "Checkout answers time out").unwrap(),
                    severity: Severity::Sev2,
                    models: set(&["openai/gpt-4o-mini"]),
                    features: set(&["checkout"]),
                    providers: set(&["openai"]),
                },
            ]
        );
        // Stored as the tool's arguments, named by the tool.
        assert_eq!(
            serde_json::to_value(&actions[1]).unwrap(),
            json!({"kind": "move_prompt_label", "prompt_id": PROMPT.to_string(), "label": "production", "version": 2})
        );
        // Whole numbers written as decimals are whole numbers; what an incident affects is optional.
        let version = |v: Value| {
            parse_action(&call(
                "move_prompt_label",
                json!({"prompt_id": PROMPT.to_string(), "label": "production", "version": v}),
            ))
        };
        assert!(version(json!(2.0)).is_ok());
        assert!(parse_action(&call(
            "open_incident",
            json!({"title": "Down", "severity": "sev1"})
        ))
        .is_ok());
    }

    fn refused(name: &str, arguments: Value) -> Vec<&'static str> {
        fields_of(parse_action(&call(name, arguments)).unwrap_err())
    }

    #[test]
    fn tag_prompt_reports_every_invalid_argument() {
        assert_eq!(
            refused(
                "tag_prompt",
                json!({"prompt_id": "42", "tags": ["ok", "Bad", "also bad!"], "force": true})
            ),
            ["arguments", "prompt_id", "tags", "tags"]
        );
        assert_eq!(refused("tag_prompt", json!({})), ["prompt_id", "tags"]);
        assert_eq!(
            refused("tag_prompt", json!({"prompt_id": PROMPT.to_string(), "tags": []})),
            ["tags"]
        );
        let many: Vec<String> = (0..=MAX_TAGS_PER_ACTION).map(|n| format!("t{n}")).collect();
        assert_eq!(
            refused(
                "tag_prompt",
                json!({"prompt_id": PROMPT.to_string(), "tags": many})
            ),
            ["tags"]
        );
        assert_eq!(
            refused(
                "tag_prompt",
                json!({"prompt_id": PROMPT.to_string(), "tags": ["a", 1]})
            ),
            ["tags"]
        );
        assert_eq!(
            refused(
                "tag_prompt",
                json!({"prompt_id": PROMPT.to_string(), "tags": "beta"})
            ),
            ["tags"]
        );
    }

    #[test]
    fn move_prompt_label_reports_every_invalid_argument() {
        assert_eq!(
            refused("move_prompt_label", json!({"label": "Prod", "version": 0})),
            ["prompt_id", "label", "version"]
        );
        for version in [
            json!(-1),
            json!(1.5),
            json!("2"),
            json!(u64::from(u32::MAX) + 1),
            json!(null),
        ] {
            assert_eq!(
                refused(
                    "move_prompt_label",
                    json!({"prompt_id": PROMPT.to_string(), "label": "production", "version": version})
                ),
                ["version"],
                "{version}"
            );
        }
        assert_eq!(
            refused(
                "move_prompt_label",
                json!({"prompt_id": PROMPT.to_string(), "label": 7, "version": 1})
            ),
            ["label"]
        );
    }

    #[test]
    fn pause_experiment_reports_every_invalid_argument() {
        assert_eq!(
            refused("pause_experiment", json!({"experiment_id": 5, "reason": "  "})),
            ["experiment_id", "reason"]
        );
        assert_eq!(
            refused(
                "pause_experiment",
                json!({"experiment_id": EXPERIMENT.to_string(), "reason": "x".repeat(MAX_REASON_CHARS + 1)})
            ),
            ["reason"]
        );
        assert_eq!(
            refused(
                "pause_experiment",
                json!({"experiment_id": EXPERIMENT.to_string()})
            ),
            ["reason"]
        );
    }

    #[test]
    fn open_incident_reports_every_invalid_argument() {
        assert_eq!(
            refused(
                "open_incident",
                json!({
                    "title": " ",
                    "severity": "critical",
                    "models": ["has space"],
                    "features": ["Checkout"],
                    "providers": "openai",
                    "summary": "extra",
                })
            ),
            [
                "arguments",
                "title",
                "severity",
                "models",
                "features",
                "providers"
            ]
        );
        assert_eq!(refused("open_incident", json!({})), ["title", "severity"]);
        let too_many: Vec<String> = (0..=MAX_AFFECTED).map(|n| format!("f{n}")).collect();
        assert_eq!(
            refused(
                "open_incident",
                json!({"title": "t", "severity": "sev3", "features": too_many})
            ),
            ["features"]
        );
        assert_eq!(
            refused(
                "open_incident",
                json!({"title": "x".repeat(201), "severity": "sev4"})
            ),
            ["title"]
        );
    }

    #[test]
    fn an_unknown_tool_or_arguments_that_are_no_object_are_refused() {
        assert_eq!(refused("delete_prompt", json!({})), ["name"]);
        assert_eq!(refused("tag_prompt", json!("{\"prompt_id\": ")), ["arguments"]);
        assert_eq!(refused("tag_prompt", json!(["beta"])), ["arguments"]);
    }

    #[test]
    fn the_tools_offered_are_the_actions_with_valid_schemas_of_their_arguments() {
        let tools = tool_definitions();
        let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tag_prompt",
                "move_prompt_label",
                "pause_experiment",
                "open_incident"
            ]
        );
        for ((name, arguments), tool) in valid_arguments().into_iter().zip(&tools) {
            assert_eq!(tool.name, name);
            let schema = jsonschema::draft202012::new(&tool.parameters).unwrap();
            assert!(schema.is_valid(&arguments), "{name}: {arguments}");
            let action = parse_action(&call(name, arguments)).unwrap();
            assert_eq!(action.tool_name(), name);
        }
        // What the schemas refuse, the parser refuses too.
        let schema_of = |name: &str| {
            let tool = tools.iter().find(|tool| tool.name == name).unwrap();
            jsonschema::draft202012::new(&tool.parameters).unwrap()
        };
        for (name, arguments) in [
            (
                "tag_prompt",
                json!({"prompt_id": PROMPT.to_string(), "tags": ["Bad"]}),
            ),
            ("tag_prompt", json!({"prompt_id": PROMPT.to_string(), "tags": []})),
            (
                "move_prompt_label",
                json!({"prompt_id": PROMPT.to_string(), "label": "production", "version": 0}),
            ),
            (
                "pause_experiment",
                json!({"experiment_id": EXPERIMENT.to_string(), "reason": ""}),
            ),
            ("open_incident", json!({"title": "t", "severity": "sev5"})),
            (
                "open_incident",
                json!({"title": "t", "severity": "sev1", "summary": "s"}),
            ),
        ] {
            assert!(!schema_of(name).is_valid(&arguments), "{name}: {arguments}");
            assert!(
                parse_action(&call(name, arguments.clone())).is_err(),
                "{name}: {arguments}"
            );
        }
    }

    #[test]
    fn tool_calls_split_into_proposed_actions_and_refused_calls_with_stable_ids() {
        let (name, arguments) = valid_arguments().remove(0);
        let calls = vec![
            ToolCall {
                id: "call_a".into(),
                name: name.into(),
                arguments: arguments.clone(),
            },
            ToolCall {
                id: String::new(),
                name: "open_incident".into(),
                arguments: json!({"title": "t", "severity": "sev9"}),
            },
            ToolCall {
                id: String::new(),
                name: name.into(),
                arguments,
            },
        ];
        let (actions, refused_calls) = proposed_actions(&calls);
        let ids: Vec<&str> = actions.iter().map(|action| action.id.as_str()).collect();
        assert_eq!(ids, ["call_a", "action-3"]);
        assert!(actions
            .iter()
            .all(|action| action.status == ActionStatus::Proposed));
        assert_eq!(
            refused_calls,
            [RefusedCall {
                id: "action-2".into(),
                name: "open_incident".into(),
                errors: vec!["severity: must be one of sev1, sev2, sev3, sev4".into()],
            }]
        );
        assert_eq!(proposed_actions(&calls), (actions, refused_calls));
    }

    /// A message of `tokens` estimated tokens (four framing tokens included).
    fn message(role: Role, tokens: u64) -> ChatMessage {
        ChatMessage::text(role, "x".repeat(((tokens - 4) * 4) as usize))
    }

    fn roles_and_tokens(messages: &[ChatMessage]) -> Vec<(Role, u64)> {
        messages
            .iter()
            .map(|m| (m.role, estimated_message_tokens(m)))
            .collect()
    }

    #[test]
    fn the_whole_history_is_sent_when_it_fits() {
        let turns = vec![
            message(Role::User, 100),
            message(Role::Assistant, 100),
            message(Role::User, 100),
        ];
        let system = "s".repeat(96 * 4);
        let sent = context_messages(Some(&system), &turns, Some(10_000), 1_000);
        assert_eq!(sent[0], ChatMessage::text(Role::System, system.clone()));
        assert_eq!(sent[1..], turns[..]);
        assert_eq!(context_messages(None, &turns, Some(10_000), 1_000), turns);
    }

    #[test]
    fn the_oldest_turns_are_dropped_first_and_whole() {
        let turns = vec![
            message(Role::User, 100),
            message(Role::Assistant, 100),
            message(Role::User, 101),
            message(Role::Assistant, 102),
            message(Role::User, 103),
        ];
        let system = "s".repeat(96 * 4);
        // 100 system + 103 + 101 + 102 fit in 406; the first turn does not.
        let sent = context_messages(Some(&system), &turns, Some(456), 50);
        assert_eq!(
            roles_and_tokens(&sent),
            [
                (Role::System, 100),
                (Role::User, 101),
                (Role::Assistant, 102),
                (Role::User, 103)
            ]
        );
        // One token less: the middle turn no longer fits whole, and its reply alone, which
        // would, is not sent without it.
        let sent = context_messages(Some(&system), &turns, Some(455), 50);
        assert_eq!(roles_and_tokens(&sent), [(Role::System, 100), (Role::User, 103)]);
    }

    #[test]
    fn a_smaller_older_turn_is_not_sent_once_a_newer_one_did_not_fit() {
        let turns = vec![
            message(Role::User, 10),
            message(Role::Assistant, 10),
            message(Role::User, 500),
            message(Role::Assistant, 500),
            message(Role::User, 100),
        ];
        let sent = context_messages(None, &turns, Some(400), 0);
        assert_eq!(roles_and_tokens(&sent), [(Role::User, 100)]);
    }

    #[test]
    fn the_newest_user_message_is_sent_even_when_it_alone_exceeds_the_budget() {
        let turns = vec![
            message(Role::User, 10),
            message(Role::Assistant, 10),
            message(Role::User, 50_000),
        ];
        let sent = context_messages(Some("system"), &turns, None, 1_024);
        assert_eq!(roles_and_tokens(&sent), [(Role::System, 6), (Role::User, 50_000)]);
        // No room at all: the output reservation takes the whole window.
        let sent = context_messages(Some("system"), &turns, Some(1_000), 2_000);
        assert_eq!(roles_and_tokens(&sent), [(Role::System, 6), (Role::User, 50_000)]);
        assert_eq!(context_messages(Some("system"), &[], None, 0).len(), 1);
    }

    #[test]
    fn without_a_known_window_the_default_one_is_the_budget() {
        let mut turns = Vec::new();
        for _ in 0..50 {
            turns.push(message(Role::User, 100));
            turns.push(message(Role::Assistant, 100));
        }
        turns.push(message(Role::User, 192));
        // 8,192 - 192 leaves room for exactly 40 turns of 200 tokens.
        let sent = context_messages(None, &turns, None, 0);
        assert_eq!(sent.len(), 1 + 2 * 40);
        assert_eq!(
            sent.iter().map(estimated_message_tokens).sum::<u64>(),
            u64::from(DEFAULT_CONTEXT_WINDOW)
        );
        assert_eq!(context_messages(None, &turns, None, 1).len(), 1 + 2 * 39);
    }

    #[test]
    fn a_reply_before_any_user_message_is_a_turn_of_its_own() {
        let turns = vec![
            message(Role::Assistant, 100),
            message(Role::User, 100),
            message(Role::Assistant, 100),
            message(Role::User, 100),
        ];
        let sent = context_messages(None, &turns, Some(300), 0);
        assert_eq!(sent, turns[1..]);
        let sent = context_messages(None, &turns, Some(400), 0);
        assert_eq!(sent, turns);
    }

    #[test]
    fn history_keeps_image_records_as_placeholders_and_tells_what_became_of_actions() {
        let image = ImageRecord::parse(SHA, 2048, "image/png", None).unwrap();
        let mut reply = replied("Tagging it.", vec![tag("call_1", "beta"), tag("call_3", "gamma")]);
        if let ConversationEvent::AssistantReplied { refused_calls, .. } = &mut reply {
            refused_calls.push(RefusedCall {
                id: "call_2".into(),
                name: "open_incident".into(),
                errors: vec!["severity: must be one of sev1, sev2, sev3, sev4".into()],
            });
        }
        let conversation = folded(vec![
            started(),
            ConversationEvent::UserMessageAdded {
                content: "What is wrong here?".into(),
                images: vec![image.clone(), image.clone()],
            },
            reply,
            ConversationEvent::ActionConfirmed {
                action_id: "call_1".into(),
                outcome: json!({"version": 3}),
            },
            ConversationEvent::ActionDeclined {
                action_id: "call_3".into(),
            },
            ConversationEvent::UserMessageAdded {
                content: String::new(),
                images: vec![image],
            },
        ]);
        let placeholder = Part::Text("[image sha256:0123456789ab omitted]".into());
        let history = conversation.history();
        assert_eq!(
            history,
            [
                ChatMessage {
                    role: Role::User,
                    content: vec![
                        Part::Text("What is wrong here?".into()),
                        placeholder.clone(),
                        placeholder.clone()
                    ],
                    tool_calls: vec![],
                },
                ChatMessage::text(
                    Role::Assistant,
                    "Tagging it.\n\n\
                     [action call_1: {\"kind\":\"tag_prompt\",\"prompt_id\":\"00000000-0000-0000-0000-000000000001\",\"tags\":[\"beta\"]} confirmed, outcome {\"version\":3}]\n\
                     [action call_3: {\"kind\":\"tag_prompt\",\"prompt_id\":\"00000000-0000-0000-0000-000000000001\",\"tags\":[\"gamma\"]} declined]\n\
                     [tool call call_2 open_incident refused: severity: must be one of sev1, sev2, sev3, sev4]"
                ),
                ChatMessage {
                    role: Role::User,
                    content: vec![placeholder],
                    tool_calls: vec![],
                },
            ]
        );
        assert!(history.iter().all(|message| !message.has_images()));
        // A reply of actions only is their lines; a plain reply is its text.
        let only_actions = folded(vec![
            started(),
            asked("a"),
            replied("", vec![tag("call_1", "beta")]),
        ]);
        assert!(only_actions.history()[1]
            .joined_text()
            .starts_with("[action call_1: "));
        let plain = folded(vec![started(), asked("a"), replied("b", vec![])]);
        assert_eq!(plain.history()[1], ChatMessage::text(Role::Assistant, "b"));
        // The history and the new message are what `context_messages` trims.
        let mut turns = plain.history();
        turns.push(ChatMessage::text(Role::User, "c"));
        assert_eq!(context_messages(Some("prompt"), &turns, None, 1_024).len(), 4);
    }
}
