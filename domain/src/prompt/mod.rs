//! The `Prompt` aggregate: a named prompt, its immutable numbered versions and the labels
//! (`production`, `staging`, …) that point at them; [`diff`] compares two versions.

pub mod diff;

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::category::PromptCategory;
use crate::fields::{self, Invalid};
use crate::governed::{Claims, Governed};
use crate::template::extract_variables;
use crate::text::{parse_line, DisplayName, InvalidText, Slug};
use crate::upcast::Fields;

/// Scope of the per-tenant unique prompt name.
pub const PROMPT_NAME_SCOPE: &str = "prompt_name";
/// Most tags one prompt may carry.
pub const MAX_TAGS: usize = 32;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Longest version message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2_000;

/// A template with its variables, checked to have balanced placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub text: String,
    pub variables: Vec<String>,
}

impl Template {
    /// Largest accepted template, in characters.
    pub const MAX_CHARS: usize = 100_000;

    pub fn parse(text: &str) -> Result<Self, InvalidText> {
        if text.trim().is_empty() {
            return Err(InvalidText::new("template", "must not be empty"));
        }
        if text.chars().count() > Self::MAX_CHARS {
            return Err(InvalidText::new(
                "template",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        let variables = extract_variables(text)?;
        Ok(Self {
            text: text.to_string(),
            variables,
        })
    }
}

/// A free-text description or commit message: at most `max_chars`, may be empty.
pub fn parse_note(field: &'static str, value: &str, max_chars: usize) -> Result<String, InvalidText> {
    if value.chars().count() > max_chars {
        return Err(InvalidText::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(value.to_string())
}

/// The model a version is written for, as the model registry names it: the provider's name
/// and that provider's id of the model (`openai` and `gpt-4o-mini` for the reference
/// `openai/gpt-4o-mini`; the id may itself hold `/`, as `meta-llama/Llama-3-8B` does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelName {
    /// `None` for a model named without a provider (`gpt-4o`): accepted since the first
    /// version, though the registry, whose references all name one, cannot run it.
    pub provider: Option<String>,
    pub model_id: String,
}

impl ModelName {
    /// Split at the first `/`. Versions 1.0.0 of `PromptVersionPublished` stored the text;
    /// the API and the upcaster both read it here, so they agree.
    pub fn from_reference(reference: &str) -> Self {
        match reference.split_once('/') {
            Some((provider, model_id)) => Self {
                provider: Some(provider.to_string()),
                model_id: model_id.to_string(),
            },
            None => Self {
                provider: None,
                model_id: reference.to_string(),
            },
        }
    }

    /// `<provider>/<model id>`: how the registry, usage records and budgets name a model.
    pub fn reference(&self) -> String {
        match &self.provider {
            Some(provider) => format!("{provider}/{}", self.model_id),
            None => self.model_id.clone(),
        }
    }
}

/// A model reference such as `openai/gpt-4o`.
pub fn parse_model(value: &str) -> Result<ModelName, InvalidText> {
    parse_line("model", value, 200).map(|reference| ModelName::from_reference(&reference))
}

/// `PromptVersionPublished` 1.0.0 to 2.0.0 (registered in [`crate::upcast`]): `model` was
/// the reference text, and is now a [`ModelName`], split as the API splits a request's.
pub fn split_version_model(mut fields: Fields) -> Result<Fields, String> {
    let model = match fields.remove("model") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(reference)) => serde_json::to_value(ModelName::from_reference(&reference))
            .map_err(|e| format!("`model` {reference:?}: {e}"))?,
        Some(other) => return Err(format!("`model` must be text or null, not {other}")),
    };
    fields.insert("model".into(), model);
    Ok(fields)
}

/// Tags (`field`): each a [`Slug`]; duplicates count once.
pub fn parse_tags(field: &'static str, tags: &[String]) -> Result<BTreeSet<Slug>, Invalid> {
    fields::each(tags, |tag| Slug::parse(field, tag)).map(|tags| tags.into_iter().collect())
}

/// Model parameters (`field`): a JSON object, or absent (`null` too).
pub fn parse_params(field: &'static str, params: Option<Value>) -> Result<Option<Value>, InvalidText> {
    match params {
        None | Some(Value::Null) => Ok(None),
        Some(params @ Value::Object(_)) => Ok(Some(params)),
        Some(_) => Err(InvalidText::new(field, "must be a JSON object")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PromptCommand {
    CreatePrompt {
        tenant: String,
        name: DisplayName,
        category: Option<Uuid>,
        description: String,
        tags: BTreeSet<Slug>,
    },
    UpdatePromptMetadata {
        name: Option<DisplayName>,
        description: Option<String>,
    },
    TagPrompt {
        tags: BTreeSet<Slug>,
    },
    UntagPrompt {
        tags: BTreeSet<Slug>,
    },
    MovePromptToCategory {
        category: Option<Uuid>,
    },
    ArchivePrompt,
    RestorePrompt,
    PublishPromptVersion {
        template: Template,
        model: Option<ModelName>,
        params: Option<Value>,
        message: String,
    },
    MovePromptLabel {
        label: Slug,
        version: u32,
    },
    RemovePromptLabel {
        label: Slug,
    },
}

/// Facts about a prompt. Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PromptEvent {
    PromptCreated {
        tenant: String,
        name: String,
        category: Option<Uuid>,
        description: String,
        tags: Vec<String>,
    },
    PromptMetadataUpdated {
        name: String,
        description: String,
    },
    PromptTagged {
        tags: Vec<String>,
    },
    PromptUntagged {
        tags: Vec<String>,
    },
    PromptMovedToCategory {
        category: Option<Uuid>,
    },
    PromptArchived,
    PromptRestored,
    /// Version 2.0.0; 1.0.0 stored `model` as its reference text (see [`split_version_model`]).
    PromptVersionPublished {
        version: u32,
        template: String,
        variables: Vec<String>,
        model: Option<ModelName>,
        params: Option<Value>,
        message: String,
    },
    PromptLabelMoved {
        label: String,
        version: u32,
        previous_version: Option<u32>,
    },
    PromptLabelRemoved {
        label: String,
        previous_version: u32,
    },
}

impl DomainEvent for PromptEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PromptCreated { .. } => "PromptCreated",
            Self::PromptMetadataUpdated { .. } => "PromptMetadataUpdated",
            Self::PromptTagged { .. } => "PromptTagged",
            Self::PromptUntagged { .. } => "PromptUntagged",
            Self::PromptMovedToCategory { .. } => "PromptMovedToCategory",
            Self::PromptArchived => "PromptArchived",
            Self::PromptRestored => "PromptRestored",
            Self::PromptVersionPublished { .. } => "PromptVersionPublished",
            Self::PromptLabelMoved { .. } => "PromptLabelMoved",
            Self::PromptLabelRemoved { .. } => "PromptLabelRemoved",
        }
        .to_string()
    }

    // Three parts: cqrs-es upcasters silently skip versions like "1.0". A new major version
    // comes with its upcaster in `crate::upcast::UPCASTERS`.
    fn event_version(&self) -> String {
        match self {
            Self::PromptVersionPublished { .. } => "2.0.0",
            _ => "1.0.0",
        }
        .to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("no such prompt")]
    NotFound,
    #[error("a prompt with this id already exists")]
    AlreadyExists,
    #[error("the prompt is archived; restore it first")]
    Archived,
    #[error("the prompt is not archived")]
    NotArchived,
    #[error("version {0} does not exist")]
    NoSuchVersion(u32),
    #[error("label {0:?} is not set")]
    NoSuchLabel(String),
    #[error("a prompt may carry at most {MAX_TAGS} tags")]
    TooManyTags,
}

/// The decision state of a prompt; also what a point-in-time read renders.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub tenant: Option<String>,
    pub name: String,
    pub category: Option<Uuid>,
    pub description: String,
    pub tags: BTreeSet<String>,
    pub archived: bool,
    pub latest_version: u32,
    pub labels: BTreeMap<String, u32>,
}

impl Aggregate for Prompt {
    /// Keys every stored prompt event: changing it orphans the history.
    const TYPE: &'static str = "prompt";
    type Command = PromptCommand;
    type Event = PromptEvent;
    type Error = PromptError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PromptCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PromptError> {
        use PromptCommand::*;
        match command {
            CreatePrompt { .. } if self.tenant.is_some() => return Err(PromptError::AlreadyExists),
            CreatePrompt {
                tenant,
                name,
                category,
                description,
                tags,
            } => {
                if tags.len() > MAX_TAGS {
                    return Err(PromptError::TooManyTags);
                }
                let tags = tags.into_iter().map(|t| t.to_string()).collect();
                let name = name.as_ref().to_string();
                sink.write(
                    PromptEvent::PromptCreated {
                        tenant,
                        name,
                        category,
                        description,
                        tags,
                    },
                    self,
                )
                .await;
            }
            _ if self.tenant.is_none() => return Err(PromptError::NotFound),
            RestorePrompt if !self.archived => return Err(PromptError::NotArchived),
            RestorePrompt => sink.write(PromptEvent::PromptRestored, self).await,
            _ if self.archived => return Err(PromptError::Archived),
            ArchivePrompt => sink.write(PromptEvent::PromptArchived, self).await,
            UpdatePromptMetadata { name, description } => {
                let name = name.map_or_else(|| self.name.clone(), |n| n.as_ref().to_string());
                let description = description.unwrap_or_else(|| self.description.clone());
                if name != self.name || description != self.description {
                    sink.write(PromptEvent::PromptMetadataUpdated { name, description }, self)
                        .await;
                }
            }
            TagPrompt { tags } => {
                let added: Vec<String> = tags
                    .iter()
                    .map(ToString::to_string)
                    .filter(|t| !self.tags.contains(t))
                    .collect();
                if self.tags.len() + added.len() > MAX_TAGS {
                    return Err(PromptError::TooManyTags);
                }
                if !added.is_empty() {
                    sink.write(PromptEvent::PromptTagged { tags: added }, self).await;
                }
            }
            UntagPrompt { tags } => {
                let removed: Vec<String> = tags
                    .iter()
                    .map(ToString::to_string)
                    .filter(|t| self.tags.contains(t))
                    .collect();
                if !removed.is_empty() {
                    sink.write(PromptEvent::PromptUntagged { tags: removed }, self)
                        .await;
                }
            }
            MovePromptToCategory { category } => {
                if category != self.category {
                    sink.write(PromptEvent::PromptMovedToCategory { category }, self)
                        .await;
                }
            }
            PublishPromptVersion {
                template,
                model,
                params,
                message,
            } => {
                let event = PromptEvent::PromptVersionPublished {
                    version: self.latest_version + 1,
                    template: template.text,
                    variables: template.variables,
                    model,
                    params,
                    message,
                };
                sink.write(event, self).await;
            }
            MovePromptLabel { label, version } => {
                if version == 0 || version > self.latest_version {
                    return Err(PromptError::NoSuchVersion(version));
                }
                let previous_version = self.labels.get(label.as_ref()).copied();
                if previous_version != Some(version) {
                    let label = label.to_string();
                    sink.write(
                        PromptEvent::PromptLabelMoved {
                            label,
                            version,
                            previous_version,
                        },
                        self,
                    )
                    .await;
                }
            }
            RemovePromptLabel { label } => {
                let Some(previous_version) = self.labels.get(label.as_ref()).copied() else {
                    return Err(PromptError::NoSuchLabel(label.to_string()));
                };
                sink.write(
                    PromptEvent::PromptLabelRemoved {
                        label: label.to_string(),
                        previous_version,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: PromptEvent) {
        match event {
            PromptEvent::PromptCreated {
                tenant,
                name,
                category,
                description,
                tags,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.category = category;
                self.description = description;
                self.tags = tags.into_iter().collect();
            }
            PromptEvent::PromptMetadataUpdated { name, description } => {
                self.name = name;
                self.description = description;
            }
            PromptEvent::PromptTagged { tags } => self.tags.extend(tags),
            PromptEvent::PromptUntagged { tags } => {
                for tag in tags {
                    self.tags.remove(&tag);
                }
            }
            PromptEvent::PromptMovedToCategory { category } => self.category = category,
            PromptEvent::PromptArchived => self.archived = true,
            PromptEvent::PromptRestored => self.archived = false,
            PromptEvent::PromptVersionPublished { version, .. } => self.latest_version = version,
            PromptEvent::PromptLabelMoved { label, version, .. } => {
                self.labels.insert(label, version);
            }
            PromptEvent::PromptLabelRemoved { label, .. } => {
                self.labels.remove(&label);
            }
        }
    }
}

impl Governed for Prompt {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The prompt's name, unique per tenant, and its category, which must exist and cannot
    /// be deleted while the prompt is in it.
    fn claims(&self, events: &[PromptEvent]) -> Claims {
        let mut name = self.name.clone();
        let mut category = self.category.map(|c| c.to_string());
        let mut claims = Claims::default();
        for event in events {
            match event {
                PromptEvent::PromptCreated {
                    name: new_name,
                    category: new_category,
                    ..
                } => {
                    claims = claims.claim(PROMPT_NAME_SCOPE, new_name);
                    name = new_name.clone();
                    let new_category = new_category.map(|c| c.to_string());
                    claims = claims.move_reference(PromptCategory::TYPE, None, new_category.as_deref());
                    category = new_category;
                }
                PromptEvent::PromptMetadataUpdated { name: new_name, .. } => {
                    claims = claims.rename(PROMPT_NAME_SCOPE, &name, new_name);
                    name = new_name.clone();
                }
                PromptEvent::PromptMovedToCategory {
                    category: new_category,
                } => {
                    let new_category = new_category.map(|c| c.to_string());
                    claims = claims.move_reference(
                        PromptCategory::TYPE,
                        category.as_deref(),
                        new_category.as_deref(),
                    );
                    category = new_category;
                }
                _ => {}
            }
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    fn created(name: &str) -> PromptEvent {
        PromptEvent::PromptCreated {
            tenant: "acme".into(),
            name: name.into(),
            category: None,
            description: String::new(),
            tags: vec![],
        }
    }

    fn published(version: u32, text: &str) -> PromptEvent {
        let template = Template::parse(text).unwrap();
        PromptEvent::PromptVersionPublished {
            version,
            template: template.text,
            variables: template.variables,
            model: None,
            params: None,
            message: String::new(),
        }
    }

    fn publish(text: &str) -> PromptCommand {
        PromptCommand::PublishPromptVersion {
            template: Template::parse(text).unwrap(),
            model: None,
            params: None,
            message: String::new(),
        }
    }

    /// Prompt events as the build before `PromptVersionPublished` 2.0.0 stored them.
    const FIXTURE_1_0_0: &str = include_str!("../../../tests/fixtures/events/prompt-1.0.0.json");

    /// Every event of the 1.0.0 fixture, read as this build reads stored events.
    fn fixture_events() -> Vec<PromptEvent> {
        let fixture: Value = serde_json::from_str(FIXTURE_1_0_0).unwrap();
        let rows = fixture["events"].as_array().unwrap();
        rows.iter()
            .map(|row| {
                let schema = crate::upcast::Schema {
                    aggregate_type: row["aggregate_type"].as_str().unwrap(),
                    event_type: row["event_type"].as_str().unwrap(),
                    event_version: row["event_version"].as_str().unwrap(),
                };
                crate::upcast::decode_value(schema, row["payload"].clone()).unwrap()
            })
            .collect()
    }

    fn published_1_0_0(model: Value) -> Value {
        json!({"PromptVersionPublished": {
            "model": model, "params": null, "message": "", "version": 1,
            "template": "Hi", "variables": []
        }})
    }

    fn schema(event_version: &str) -> crate::upcast::Schema<'_> {
        crate::upcast::Schema {
            aggregate_type: Prompt::TYPE,
            event_type: "PromptVersionPublished",
            event_version,
        }
    }

    #[test]
    fn a_1_0_0_version_reads_its_model_split_into_provider_and_model_id() {
        let events = fixture_events();
        let models: Vec<Option<ModelName>> = events
            .iter()
            .filter_map(|event| match event {
                PromptEvent::PromptVersionPublished { model, .. } => Some(model.clone()),
                _ => None,
            })
            .collect();
        let named = |provider: Option<&str>, model_id: &str| {
            Some(ModelName {
                provider: provider.map(str::to_string),
                model_id: model_id.into(),
            })
        };
        assert_eq!(
            models,
            vec![named(Some("openai"), "gpt-4o-mini"), None, named(None, "gpt-4o")]
        );
        // Read back, a 1.0.0 version names the same model as it did.
        assert_eq!(
            models[0].as_ref().map(ModelName::reference).as_deref(),
            Some("openai/gpt-4o-mini")
        );
        assert_eq!(
            models[2].as_ref().map(ModelName::reference).as_deref(),
            Some("gpt-4o")
        );
    }

    #[test]
    fn a_1_0_0_version_and_a_2_0_0_one_of_the_same_request_read_alike() {
        let old = published_1_0_0(json!("vllm/meta-llama/Llama-3-8B"));
        let (upcast, version) = crate::upcast::upcast(schema("1.0.0"), old).unwrap();
        let new = PromptEvent::PromptVersionPublished {
            version: 1,
            template: "Hi".into(),
            variables: vec![],
            model: Some(parse_model("vllm/meta-llama/Llama-3-8B").unwrap()),
            params: None,
            message: String::new(),
        };
        assert_eq!(version, new.event_version());
        assert_eq!(upcast, serde_json::to_value(&new).unwrap());
        assert!(!crate::upcast::is_outdated(schema(&new.event_version())));
    }

    #[test]
    fn the_history_of_a_1_0_0_prompt_folds_and_takes_new_versions() {
        TestFramework::<Prompt>::with(())
            .given(fixture_events())
            .when(publish("Hello {{name}}"))
            .then_expect_events(vec![published(4, "Hello {{name}}")]);
    }

    #[test]
    fn a_payload_the_upcaster_cannot_read_is_an_error_that_says_why() {
        let error = crate::upcast::upcast(schema("1.0.0"), published_1_0_0(json!(42))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "prompt event PromptVersionPublished 1.0.0 cannot be upcast to 2.0.0: `model` must be \
             text or null, not 42"
        );
        let not_the_event = json!({"PromptArchived": {"model": "openai/gpt-4o"}});
        let error = crate::upcast::upcast(schema("1.0.0"), not_the_event).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("the payload is not a PromptVersionPublished object"),
            "{error}"
        );
        let error = crate::upcast::upcast(schema("1.0"), published_1_0_0(json!(null))).unwrap_err();
        assert!(
            error.to_string().contains("\"1.0\", which is not three numbers"),
            "{error}"
        );
        // Through `decode`, the same reason, as a decoding error rather than a panic.
        let payload = published_1_0_0(json!(["openai", "gpt-4o"])).to_string();
        let error = crate::upcast::decode::<PromptEvent>(schema("1.0.0"), &payload).unwrap_err();
        assert!(
            error.to_string().contains("`model` must be text or null"),
            "{error}"
        );
    }

    #[test]
    fn publishing_after_one_version_yields_version_two() {
        TestFramework::<Prompt>::with(())
            .given(vec![created("greeting"), published(1, "Hi")])
            .when(publish("Hello {{name}}"))
            .then_expect_events(vec![published(2, "Hello {{name}}")]);
    }

    #[test]
    fn publishing_to_an_archived_prompt_is_rejected() {
        TestFramework::<Prompt>::with(())
            .given(vec![created("greeting"), PromptEvent::PromptArchived])
            .when(publish("Hi"))
            .then_expect_error(PromptError::Archived);
    }

    #[test]
    fn a_label_can_only_point_at_an_existing_version() {
        let label = Slug::parse("label", "production").unwrap();
        TestFramework::<Prompt>::with(())
            .given(vec![created("greeting"), published(1, "Hi")])
            .when(PromptCommand::MovePromptLabel { label, version: 2 })
            .then_expect_error(PromptError::NoSuchVersion(2));
    }

    #[test]
    fn moving_a_label_back_is_a_rollback_that_records_the_previous_version() {
        let label = Slug::parse("label", "production").unwrap();
        let moved = |version, previous_version| PromptEvent::PromptLabelMoved {
            label: "production".into(),
            version,
            previous_version,
        };
        TestFramework::<Prompt>::with(())
            .given(vec![
                created("g"),
                published(1, "a"),
                published(2, "b"),
                moved(1, None),
                moved(2, Some(1)),
            ])
            .when(PromptCommand::MovePromptLabel { label, version: 1 })
            .then_expect_events(vec![moved(1, Some(2))]);
    }

    #[test]
    fn commands_on_a_prompt_that_was_never_created_are_not_found() {
        TestFramework::<Prompt>::with(())
            .given_no_previous_events()
            .when(PromptCommand::ArchivePrompt)
            .then_expect_error(PromptError::NotFound);
    }

    #[test]
    fn renaming_moves_the_unique_name_claim_unless_only_the_case_changes() {
        let mut prompt = Prompt::default();
        prompt.apply(created("Greeting"));
        let renamed = |name: &str| PromptEvent::PromptMetadataUpdated {
            name: name.into(),
            description: String::new(),
        };
        let claims = prompt.claims(&[renamed("Welcome")]);
        assert_eq!(claims.released, vec![(PROMPT_NAME_SCOPE, "greeting".to_string())]);
        assert_eq!(claims.claimed, vec![(PROMPT_NAME_SCOPE, "welcome".to_string())]);
        assert_eq!(prompt.claims(&[renamed("GREETING")]), Claims::default());
    }

    #[test]
    fn a_prompt_refers_to_its_category_and_a_move_moves_the_reference() {
        let first = Uuid::now_v7();
        let second = Uuid::now_v7();
        let mut prompt = Prompt::default();
        let created_in = PromptEvent::PromptCreated {
            tenant: "acme".into(),
            name: "greeting".into(),
            category: Some(first),
            description: String::new(),
            tags: vec![],
        };
        let claims = prompt.claims(std::slice::from_ref(&created_in));
        assert_eq!(claims.referenced, vec![(PromptCategory::TYPE, first.to_string())]);
        prompt.apply(created_in);
        let moved = |category| PromptEvent::PromptMovedToCategory { category };
        let claims = prompt.claims(&[moved(Some(second))]);
        assert_eq!(
            claims.unreferenced,
            vec![(PromptCategory::TYPE, first.to_string())]
        );
        assert_eq!(
            claims.referenced,
            vec![(PromptCategory::TYPE, second.to_string())]
        );
        let claims = prompt.claims(&[moved(None)]);
        assert_eq!(
            claims.unreferenced,
            vec![(PromptCategory::TYPE, first.to_string())]
        );
        assert!(claims.referenced.is_empty());
    }
}
