//! Four-eyes approval. A [`Protection`] marks a scope of a tenant (a configuration prefix, a
//! prompt's label) as protected; a change to something protected becomes a
//! [`ChangeRequest`], which applies only once another key approves it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::config::ConfigKey;
use crate::governed::{Claims, Governed};
use crate::text::{InvalidText, Slug};

/// What a protection covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProtectedScope {
    /// Every configuration key starting with `prefix` (`config:limits.`).
    Config { prefix: String },
    /// One label of one prompt (`prompt:<id>:production`).
    PromptLabel { prompt: Uuid, label: String },
}

impl ProtectedScope {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        let invalid = || {
            InvalidText::new(
                field,
                "must be config:<key prefix> (config:limits.) or prompt:<prompt id>:<label>",
            )
        };
        if let Some(prefix) = text.strip_prefix("config:") {
            let prefix = ConfigKey::parse_prefix(field, prefix).map_err(|_| invalid())?;
            return Ok(Self::Config { prefix });
        }
        let rest = text.strip_prefix("prompt:").ok_or_else(invalid)?;
        let (prompt, label) = rest.split_once(':').ok_or_else(invalid)?;
        let prompt = prompt.parse::<Uuid>().map_err(|_| invalid())?;
        let label = Slug::parse(field, label).map_err(|_| invalid())?;
        Ok(Self::PromptLabel {
            prompt,
            label: label.to_string(),
        })
    }

    /// The scope as written in paths: `config:limits.`, `prompt:<id>:production`.
    pub fn text(&self) -> String {
        match self {
            Self::Config { prefix } => format!("config:{prefix}"),
            Self::PromptLabel { prompt, label } => format!("prompt:{prompt}:{label}"),
        }
    }

    /// Whether `change` touches what this scope protects.
    pub fn covers(&self, change: &ProposedChange) -> bool {
        match (self, change) {
            (
                Self::Config { prefix },
                ProposedChange::SetConfig { key, .. } | ProposedChange::ClearConfig { key },
            ) => key.starts_with(prefix.as_str()),
            (
                Self::PromptLabel { prompt, label },
                ProposedChange::MovePromptLabel {
                    prompt: target,
                    label: target_label,
                    ..
                }
                | ProposedChange::RemovePromptLabel {
                    prompt: target,
                    label: target_label,
                },
            ) => prompt == target && label == target_label,
            _ => false,
        }
    }
}

/// A change waiting for approval: what it would do when applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProposedChange {
    SetConfig {
        key: String,
        value: Value,
    },
    ClearConfig {
        key: String,
    },
    MovePromptLabel {
        prompt: Uuid,
        label: String,
        version: u32,
    },
    RemovePromptLabel {
        prompt: Uuid,
        label: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProtectionCommand {
    Protect { tenant: String, scope: ProtectedScope },
    Unprotect,
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProtectionEvent {
    ScopeProtected { tenant: String, scope: ProtectedScope },
    ScopeUnprotected,
}

impl DomainEvent for ProtectionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ScopeProtected { .. } => "ScopeProtected",
            Self::ScopeUnprotected => "ScopeUnprotected",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtectionError {
    #[error("the scope is not protected")]
    NotProtected,
}

/// One protected scope of a tenant; its id is `<tenant>:<scope>`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protection {
    pub tenant: Option<String>,
    pub scope: Option<ProtectedScope>,
    pub active: bool,
}

impl Aggregate for Protection {
    /// Keys every stored protection event: changing it orphans the history.
    const TYPE: &'static str = "protection";
    type Command = ProtectionCommand;
    type Event = ProtectionEvent;
    type Error = ProtectionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ProtectionCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ProtectionError> {
        match command {
            ProtectionCommand::Protect { .. } if self.active => {}
            ProtectionCommand::Protect { tenant, scope } => {
                sink.write(ProtectionEvent::ScopeProtected { tenant, scope }, self)
                    .await
            }
            ProtectionCommand::Unprotect if !self.active => return Err(ProtectionError::NotProtected),
            ProtectionCommand::Unprotect => sink.write(ProtectionEvent::ScopeUnprotected, self).await,
        }
        Ok(())
    }

    fn apply(&mut self, event: ProtectionEvent) {
        match event {
            ProtectionEvent::ScopeProtected { tenant, scope } => {
                self.tenant = Some(tenant);
                self.scope = Some(scope);
                self.active = true;
            }
            ProtectionEvent::ScopeUnprotected => self.active = false,
        }
    }
}

impl Governed for Protection {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    fn claims(&self, _: &[ProtectionEvent]) -> Claims {
        Claims::default()
    }
}

/// Who acted on a change request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviewer {
    pub key_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeRequestCommand {
    Propose {
        tenant: String,
        change: ProposedChange,
        /// The protected scope that made it a request.
        scope: ProtectedScope,
        proposer: Reviewer,
    },
    /// Records the approval of a change already applied as `applied_version` of its target.
    Approve {
        approver: Reviewer,
        applied_version: u64,
    },
    Reject {
        rejecter: Reviewer,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChangeRequestEvent {
    ChangeProposed {
        tenant: String,
        change: ProposedChange,
        scope: ProtectedScope,
        proposer: Reviewer,
    },
    ChangeApproved {
        approver: Reviewer,
        /// The target's version that the approved change produced.
        applied_version: u64,
    },
    ChangeRejected {
        rejecter: Reviewer,
    },
}

impl DomainEvent for ChangeRequestEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ChangeProposed { .. } => "ChangeProposed",
            Self::ChangeApproved { .. } => "ChangeApproved",
            Self::ChangeRejected { .. } => "ChangeRejected",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRequestError {
    #[error("no such change request")]
    NotFound,
    #[error("a change request with this id already exists")]
    AlreadyExists,
    #[error("the change request was already {0}")]
    AlreadyDecided(&'static str),
    #[error("a change cannot be approved by the key that proposed it")]
    OwnApproval,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    #[default]
    Proposed,
    Approved,
    Rejected,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub tenant: Option<String>,
    pub change: Option<ProposedChange>,
    pub proposer: Option<Reviewer>,
    pub state: RequestState,
}

impl ChangeRequest {
    /// Refuses a decision on a request that has one, or an approval by its proposer.
    pub fn check_decision(&self, reviewer: &Reviewer, approving: bool) -> Result<(), ChangeRequestError> {
        if self.tenant.is_none() {
            return Err(ChangeRequestError::NotFound);
        }
        if self.state != RequestState::Proposed {
            return Err(ChangeRequestError::AlreadyDecided(self.state.as_str()));
        }
        if approving
            && self
                .proposer
                .as_ref()
                .is_some_and(|p| p.key_id == reviewer.key_id)
        {
            return Err(ChangeRequestError::OwnApproval);
        }
        Ok(())
    }
}

impl Aggregate for ChangeRequest {
    /// Keys every stored change request event: changing it orphans the history.
    const TYPE: &'static str = "change_request";
    type Command = ChangeRequestCommand;
    type Event = ChangeRequestEvent;
    type Error = ChangeRequestError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ChangeRequestCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ChangeRequestError> {
        match command {
            ChangeRequestCommand::Propose { .. } if self.tenant.is_some() => {
                return Err(ChangeRequestError::AlreadyExists)
            }
            ChangeRequestCommand::Propose {
                tenant,
                change,
                scope,
                proposer,
            } => {
                let event = ChangeRequestEvent::ChangeProposed {
                    tenant,
                    change,
                    scope,
                    proposer,
                };
                sink.write(event, self).await;
            }
            ChangeRequestCommand::Approve {
                approver,
                applied_version,
            } => {
                self.check_decision(&approver, true)?;
                let event = ChangeRequestEvent::ChangeApproved {
                    approver,
                    applied_version,
                };
                sink.write(event, self).await;
            }
            ChangeRequestCommand::Reject { rejecter } => {
                self.check_decision(&rejecter, false)?;
                sink.write(ChangeRequestEvent::ChangeRejected { rejecter }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ChangeRequestEvent) {
        match event {
            ChangeRequestEvent::ChangeProposed {
                tenant,
                change,
                proposer,
                ..
            } => {
                self.tenant = Some(tenant);
                self.change = Some(change);
                self.proposer = Some(proposer);
            }
            ChangeRequestEvent::ChangeApproved { .. } => self.state = RequestState::Approved,
            ChangeRequestEvent::ChangeRejected { .. } => self.state = RequestState::Rejected,
        }
    }
}

impl Governed for ChangeRequest {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    fn claims(&self, _: &[ChangeRequestEvent]) -> Claims {
        Claims::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    fn reviewer(key: &str) -> Reviewer {
        Reviewer {
            key_id: key.into(),
            name: key.into(),
        }
    }

    fn proposed() -> ChangeRequestEvent {
        ChangeRequestEvent::ChangeProposed {
            tenant: "acme".into(),
            change: ProposedChange::SetConfig {
                key: "limits.max_output_tokens".into(),
                value: json!(8000),
            },
            scope: ProtectedScope::parse("scope", "config:limits.").unwrap(),
            proposer: reviewer("alice"),
        }
    }

    #[test]
    fn scopes_are_config_prefixes_or_prompt_labels_and_cover_what_they_name() {
        let limits = ProtectedScope::parse("scope", "config:limits.").unwrap();
        assert_eq!(limits.text(), "config:limits.");
        let set = |key: &str| ProposedChange::SetConfig {
            key: key.into(),
            value: json!(1),
        };
        assert!(limits.covers(&set("limits.max_output_tokens")));
        assert!(!limits.covers(&set("routing.default_model")));
        let prompt = Uuid::from_u128(9);
        let production = ProtectedScope::parse("scope", &format!("prompt:{prompt}:production")).unwrap();
        let moving = |label: &str| ProposedChange::MovePromptLabel {
            prompt,
            label: label.into(),
            version: 2,
        };
        assert!(production.covers(&moving("production")));
        assert!(!production.covers(&moving("staging")));
        for bad in [
            "limits.",
            "config:",
            "config:a..b",
            "prompt:x:production",
            "prompt:00000000-0000-0000-0000-000000000009",
            "other:x",
        ] {
            assert!(ProtectedScope::parse("scope", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn another_key_approves_the_proposer_cannot_and_a_decision_is_final() {
        TestFramework::<ChangeRequest>::with(())
            .given(vec![proposed()])
            .when(ChangeRequestCommand::Approve {
                approver: reviewer("alice"),
                applied_version: 2,
            })
            .then_expect_error(ChangeRequestError::OwnApproval);
        TestFramework::<ChangeRequest>::with(())
            .given(vec![proposed()])
            .when(ChangeRequestCommand::Approve {
                approver: reviewer("bob"),
                applied_version: 2,
            })
            .then_expect_events(vec![ChangeRequestEvent::ChangeApproved {
                approver: reviewer("bob"),
                applied_version: 2,
            }]);
        TestFramework::<ChangeRequest>::with(())
            .given(vec![
                proposed(),
                ChangeRequestEvent::ChangeRejected {
                    rejecter: reviewer("bob"),
                },
            ])
            .when(ChangeRequestCommand::Approve {
                approver: reviewer("carol"),
                applied_version: 2,
            })
            .then_expect_error(ChangeRequestError::AlreadyDecided("rejected"));
    }
}
