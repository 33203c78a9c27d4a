//! What the assistant's model may do in a conversation, and what it is sent: the quick
//! actions it proposes through tool calls, which a person then confirms or declines, and
//! which turns of the conversation a call sends.
//!
//! - [`tool_definitions`] are the tools offered to the model; [`parse_action`] and
//!   [`proposed_actions`] read its tool calls into [`Action`]s, each the input of one
//!   existing command.
//! - [`context_messages`] decides which turns a call sends.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::chat::{estimated_message_tokens, ChatMessage, Role, ToolCall, ToolDefinition};
use crate::fields::{self, AllValid, Invalid};
use crate::incident::Severity;
use crate::model::parse_model_id;
use crate::text::{DisplayName, InvalidText, Slug};

/// The context window assumed when the model's is not known, in tokens.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 8_192;
/// Most tags one `tag_prompt` action adds.
pub const MAX_TAGS_PER_ACTION: usize = 20;
/// Most models, features or providers an `open_incident` action names (as the incidents'
/// API accepts).
pub const MAX_AFFECTED: usize = 50;
/// Longest reason of a `pause_experiment` action, in characters (as any change's reason).
pub const MAX_REASON_CHARS: usize = 1_000;

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

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: Uuid = Uuid::from_u128(1);
    const EXPERIMENT: Uuid = Uuid::from_u128(5);

    fn fields_of(invalid: Invalid) -> Vec<&'static str> {
        invalid.errors().iter().map(|e| e.field).collect()
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
}
