//! The `Incident` aggregate: something is broken for the tenant, how badly, what it affects,
//! the updates while it is worked on, and how it ended. When it opens, the changes of the
//! 24 hours before it that touch what it affects are recorded with it ([`relates`]), so
//! "what changed before it broke?" has one stable, auditable answer.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::governed::Governed;
use crate::text::{DisplayName, InvalidText};

/// How far back from an incident's opening its related changes are looked for.
pub const RELATED_WINDOW_HOURS: i64 = 24;
/// Most related changes recorded with an incident: the latest ones.
pub const MAX_RELATED: usize = 200;
/// Longest update message or resolution summary, in characters.
const MAX_NOTE_CHARS: usize = 2_000;

/// How bad an incident is: `sev1` (an outage of something critical) to `sev4` (minor, a
/// workaround exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Sev1,
    Sev2,
    Sev3,
    Sev4,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Self::Sev1, Self::Sev2, Self::Sev3, Self::Sev4];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sev1 => "sev1",
            Self::Sev2 => "sev2",
            Self::Sev3 => "sev3",
            Self::Sev4 => "sev4",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| InvalidText::new(field, "must be one of sev1, sev2, sev3, sev4"))
    }
}

/// Where an incident stands. It opens `investigating`; updates may move it between the
/// first three; only resolving makes it `resolved`, and a resolved incident is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    #[default]
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

impl IncidentStatus {
    pub const ALL: [IncidentStatus; 4] = [
        Self::Investigating,
        Self::Identified,
        Self::Monitoring,
        Self::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Investigating => "investigating",
            Self::Identified => "identified",
            Self::Monitoring => "monitoring",
            Self::Resolved => "resolved",
        }
    }

    /// Any status, as a listing filters by.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        Self::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            InvalidText::new(
                field,
                "must be one of investigating, identified, monitoring, resolved",
            )
        })
    }

    /// A status an update may set: any but `resolved` (resolving says how it ended).
    pub fn parse_update(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        match Self::parse(field, text) {
            Ok(Self::Resolved) | Err(_) => Err(InvalidText::new(
                field,
                "must be one of investigating, identified, monitoring (resolve the incident to end it)",
            )),
            Ok(status) => Ok(status),
        }
    }
}

/// Who opened an incident: a person (an API key) or aipm, when a provider went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenedBy {
    Manual,
    Auto,
}

impl OpenedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Auto => "auto",
        }
    }
}

/// What an incident affects: models by reference, features by name, providers by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affected {
    #[serde(default)]
    pub models: BTreeSet<String>,
    #[serde(default)]
    pub features: BTreeSet<String>,
    #[serde(default)]
    pub providers: BTreeSet<String>,
}

impl Affected {
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.features.is_empty() && self.providers.is_empty()
    }
}

/// A message posted to an incident, or its resolution summary: 1 to 2000 characters.
pub fn parse_note(field: &'static str, text: &str) -> Result<String, InvalidText> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(InvalidText::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > MAX_NOTE_CHARS {
        return Err(InvalidText::new(
            field,
            format!("must be at most {MAX_NOTE_CHARS} characters"),
        ));
    }
    Ok(trimmed.to_string())
}

/// The models and providers an incident's related changes are looked for on: what it names,
/// each affected provider's models, and each affected model's provider (a change to the
/// provider serving a model can break the model).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub models: BTreeSet<String>,
    pub providers: BTreeSet<String>,
    pub features: BTreeSet<String>,
}

impl Scope {
    /// `affected` widened with `registry`: every `(model reference, provider name)` of the
    /// tenant.
    pub fn of(affected: &Affected, registry: &[(String, String)]) -> Self {
        let mut scope = Scope {
            models: affected.models.clone(),
            providers: affected.providers.clone(),
            features: affected.features.clone(),
        };
        for (model, provider) in registry {
            if affected.providers.contains(provider) {
                scope.models.insert(model.clone());
            }
            if affected.models.contains(model) {
                scope.providers.insert(provider.clone());
            }
        }
        scope
    }
}

/// What a change in the log is about, as far as relating it to an incident goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A change of a model (status, default parameters, prices).
    Model { reference: String },
    /// A change of a provider's settings.
    Provider { name: String },
    /// A prompt label moved or removed; `models` are those of the versions it left and now
    /// points at.
    PromptLabel { models: Vec<String> },
    /// A configuration value set, cleared or scheduled, or a flag changed; `payload` is the
    /// event's JSON text.
    Configuration { payload: String },
}

/// Why a change relates to an incident in `scope`, or `None` when it does not:
///
/// - a model change, when the model is in scope;
/// - a provider change, when the provider is in scope;
/// - a prompt label move, when a version it leaves or points at uses a model in scope, or
///   when the incident affects features (features resolve their prompts through labels);
/// - a configuration or flag change, when the incident affects features (configuration
///   and flags are what features read; no key names the feature it serves), or when the
///   change's value names a model in scope.
pub fn relates(scope: &Scope, subject: &Subject) -> Option<String> {
    match subject {
        Subject::Model { reference } => scope
            .models
            .contains(reference)
            .then(|| format!("changes the model {reference}")),
        Subject::Provider { name } => scope
            .providers
            .contains(name)
            .then(|| format!("changes the provider {name}")),
        Subject::PromptLabel { models } => match models.iter().find(|m| scope.models.contains(*m)) {
            Some(model) => Some(format!("moves a label to or from a version using {model}")),
            None => (!scope.features.is_empty())
                .then(|| "moves a prompt label while features are affected".to_string()),
        },
        Subject::Configuration { payload } => {
            if !scope.features.is_empty() {
                return Some("changes configuration while features are affected".to_string());
            }
            scope
                .models
                .iter()
                .find(|model| payload.contains(&format!("\"{model}\"")))
                .map(|model| format!("changes configuration naming {model}"))
        }
    }
}

/// A change recorded before an incident that touches what it affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelatedChange {
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The event's number within its aggregate.
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    /// The name of the key that made the change.
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// Why it relates (see [`relates`]).
    pub why: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IncidentCommand {
    /// `related_changes` are looked up by the caller, from the log before the opening.
    OpenIncident {
        tenant: String,
        severity: Severity,
        title: DisplayName,
        affected: Affected,
        opened_by: OpenedBy,
        related_changes: Vec<RelatedChange>,
    },
    PostUpdate {
        message: String,
        status: Option<IncidentStatus>,
    },
    Resolve {
        summary: String,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IncidentEvent {
    IncidentOpened {
        tenant: String,
        severity: Severity,
        title: String,
        affected: Affected,
        opened_by: OpenedBy,
        related_changes: Vec<RelatedChange>,
    },
    /// A message, and the status from then on when it changes.
    IncidentUpdated {
        message: String,
        status: Option<IncidentStatus>,
    },
    IncidentResolved {
        summary: String,
    },
}

impl DomainEvent for IncidentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::IncidentOpened { .. } => "IncidentOpened",
            Self::IncidentUpdated { .. } => "IncidentUpdated",
            Self::IncidentResolved { .. } => "IncidentResolved",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    #[error("no such incident")]
    NotFound,
    #[error("an incident with this id already exists")]
    AlreadyExists,
    #[error("the incident is resolved; open a new one")]
    Resolved,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub tenant: Option<String>,
    pub severity: Option<Severity>,
    pub title: String,
    pub affected: Affected,
    pub opened_by: Option<OpenedBy>,
    pub status: IncidentStatus,
    pub related_changes: Vec<RelatedChange>,
    /// The updates' messages, oldest first.
    pub updates: Vec<String>,
    pub summary: Option<String>,
}

impl Aggregate for Incident {
    /// Keys every stored incident event: changing it orphans the history.
    const TYPE: &'static str = "incident";
    type Command = IncidentCommand;
    type Event = IncidentEvent;
    type Error = IncidentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: IncidentCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), IncidentError> {
        match command {
            IncidentCommand::OpenIncident { .. } if self.tenant.is_some() => {
                Err(IncidentError::AlreadyExists)
            }
            IncidentCommand::OpenIncident {
                tenant,
                severity,
                title,
                affected,
                opened_by,
                related_changes,
            } => {
                let event = IncidentEvent::IncidentOpened {
                    tenant,
                    severity,
                    title: title.as_ref().to_string(),
                    affected,
                    opened_by,
                    related_changes,
                };
                sink.write(event, self).await;
                Ok(())
            }
            _ if self.tenant.is_none() => Err(IncidentError::NotFound),
            _ if self.status == IncidentStatus::Resolved => Err(IncidentError::Resolved),
            IncidentCommand::PostUpdate { message, status } => {
                let status = status.filter(|s| *s != self.status);
                sink.write(IncidentEvent::IncidentUpdated { message, status }, self)
                    .await;
                Ok(())
            }
            IncidentCommand::Resolve { summary } => {
                sink.write(IncidentEvent::IncidentResolved { summary }, self)
                    .await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: IncidentEvent) {
        match event {
            IncidentEvent::IncidentOpened {
                tenant,
                severity,
                title,
                affected,
                opened_by,
                related_changes,
            } => {
                self.tenant = Some(tenant);
                self.severity = Some(severity);
                self.title = title;
                self.affected = affected;
                self.opened_by = Some(opened_by);
                self.related_changes = related_changes;
            }
            IncidentEvent::IncidentUpdated { message, status } => {
                self.updates.push(message);
                if let Some(status) = status {
                    self.status = status;
                }
            }
            IncidentEvent::IncidentResolved { summary } => {
                self.status = IncidentStatus::Resolved;
                self.summary = Some(summary);
            }
        }
    }
}

impl Governed for Incident {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn opened() -> IncidentEvent {
        IncidentEvent::IncidentOpened {
            tenant: "acme".into(),
            severity: Severity::Sev2,
            title: "chat answers fail".into(),
            affected: Affected::default(),
            opened_by: OpenedBy::Manual,
            related_changes: vec![],
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_scope_takes_in_an_affected_providers_models_and_an_affected_models_provider() {
        let affected = Affected {
            models: set(&["anthropic/claude"]),
            features: set(&[]),
            providers: set(&["openai"]),
        };
        let registry = vec![
            ("openai/gpt-4o".to_string(), "openai".to_string()),
            ("anthropic/claude".to_string(), "anthropic".to_string()),
            ("mistral/large".to_string(), "mistral".to_string()),
        ];
        let scope = Scope::of(&affected, &registry);
        assert_eq!(scope.models, set(&["anthropic/claude", "openai/gpt-4o"]));
        assert_eq!(scope.providers, set(&["anthropic", "openai"]));
    }

    #[test]
    fn changes_relate_by_what_they_touch() {
        let scope = Scope {
            models: set(&["openai/gpt-4o"]),
            providers: set(&["openai"]),
            features: set(&[]),
        };
        let model = |r: &str| Subject::Model { reference: r.into() };
        assert!(relates(&scope, &model("openai/gpt-4o")).is_some());
        assert!(relates(&scope, &model("openai/gpt-4o-mini")).is_none());
        assert!(relates(
            &scope,
            &Subject::Provider {
                name: "openai".into()
            }
        )
        .is_some());
        assert!(relates(&scope, &Subject::Provider { name: "azure".into() }).is_none());
        let label = |models: &[&str]| Subject::PromptLabel {
            models: models.iter().map(|m| m.to_string()).collect(),
        };
        assert!(relates(&scope, &label(&["openai/gpt-4o"])).is_some());
        assert!(relates(&scope, &label(&["anthropic/claude"])).is_none());
        let config = |payload: &str| Subject::Configuration {
            payload: payload.into(),
        };
        assert!(relates(&scope, &config(r#"{"value":{"model":"openai/gpt-4o"}}"#)).is_some());
        assert!(relates(&scope, &config(r#"{"value":{"model":"openai/gpt-4o-mini"}}"#)).is_none());
        let features = Scope {
            features: set(&["checkout"]),
            ..Scope::default()
        };
        assert!(relates(&features, &config(r#"{"value":1}"#)).is_some());
        assert!(relates(&features, &label(&[])).is_some());
        assert!(relates(&features, &model("openai/gpt-4o")).is_none());
    }

    #[test]
    fn a_resolved_incident_takes_no_more_updates() {
        TestFramework::<Incident>::with(())
            .given(vec![
                opened(),
                IncidentEvent::IncidentResolved {
                    summary: "rolled back".into(),
                },
            ])
            .when(IncidentCommand::PostUpdate {
                message: "still?".into(),
                status: None,
            })
            .then_expect_error(IncidentError::Resolved);
    }

    #[test]
    fn an_update_records_a_status_only_when_it_changes() {
        TestFramework::<Incident>::with(())
            .given(vec![opened()])
            .when(IncidentCommand::PostUpdate {
                message: "looking".into(),
                status: Some(IncidentStatus::Investigating),
            })
            .then_expect_events(vec![IncidentEvent::IncidentUpdated {
                message: "looking".into(),
                status: None,
            }]);
    }

    #[test]
    fn updates_cannot_resolve() {
        assert!(IncidentStatus::parse_update("status", "resolved").is_err());
        assert_eq!(
            IncidentStatus::parse_update("status", "monitoring"),
            Ok(IncidentStatus::Monitoring)
        );
    }
}
