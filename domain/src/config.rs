//! The `ConfigEntry` aggregate: one configuration key of a tenant (`limits.max_output_tokens`),
//! its JSON Schema and its value. Schema and value are one aggregate so that a value is
//! always checked against the schema in force when it is set, and a schema is refused while
//! the value it would govern does not satisfy it.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::governed::{Claims, Governed};
use crate::text::InvalidText;

/// Longest key, in characters.
const MAX_KEY_CHARS: usize = 200;

/// A configuration key: dot-separated segments of letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigKey(String);

impl ConfigKey {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        let segment_ok = |segment: &str| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if text.chars().count() > MAX_KEY_CHARS || !text.split('.').all(segment_ok) {
            return Err(InvalidText::new(
                field,
                "must be dot-separated names of letters, digits, _ and - (e.g. limits.max_output_tokens), \
                 at most 200 characters",
            ));
        }
        Ok(Self(text.to_string()))
    }

    /// A prefix of keys (`limits.`): a key, or a key followed by a dot.
    pub fn parse_prefix(field: &'static str, text: &str) -> Result<String, InvalidText> {
        let key = text.strip_suffix('.').unwrap_or(text);
        Self::parse(field, key)?;
        Ok(text.to_string())
    }

    /// The id of the aggregate holding this key in `tenant`: keys are names, not ids, and
    /// each tenant has its own.
    pub fn aggregate_id(&self, tenant: &str) -> String {
        format!("{tenant}:{}", self.0)
    }

    /// The key an aggregate id made by [`aggregate_id`](Self::aggregate_id) names.
    pub fn in_aggregate_id(aggregate_id: &str) -> &str {
        aggregate_id.split_once(':').map_or(aggregate_id, |(_, key)| key)
    }
}

impl AsRef<str> for ConfigKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A JSON Schema (draft 2020-12) that compiles: checked when declared, and again whenever a
/// value is set (a stored schema always compiles, since it was checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigSchema(Value);

impl ConfigSchema {
    pub fn parse(field: &'static str, schema: Value) -> Result<Self, InvalidText> {
        match jsonschema::draft202012::new(&schema) {
            Ok(_) => Ok(Self(schema)),
            Err(error) => Err(InvalidText::new(
                field,
                format!("is not a valid JSON Schema (draft 2020-12): {error}"),
            )),
        }
    }

    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// Where and how `value` breaks the schema: (JSON pointer into the value, message).
    pub fn violations(&self, value: &Value) -> Vec<Violation> {
        match jsonschema::draft202012::new(&self.0) {
            Ok(validator) => validator
                .iter_errors(value)
                .map(|error| Violation {
                    path: error.instance_path().to_string(),
                    message: error.to_string(),
                })
                .collect(),
            Err(error) => vec![Violation {
                path: String::new(),
                message: format!("the key's schema no longer compiles: {error}"),
            }],
        }
    }
}

/// One way a value breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the value (`/items/1/qty`); empty for the value itself.
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigCommand {
    DeclareSchema {
        tenant: String,
        key: ConfigKey,
        schema: ConfigSchema,
    },
    SetValue {
        tenant: String,
        key: ConfigKey,
        value: Value,
    },
    ClearValue,
    /// Sets `value` at `at`, unless the value changes before then.
    ScheduleValue {
        tenant: String,
        key: ConfigKey,
        schedule: Uuid,
        value: Value,
        at: DateTime<Utc>,
    },
    /// Applies a schedule whose time has come (`now` is the scheduler's clock).
    ApplySchedule {
        schedule: Uuid,
        now: DateTime<Utc>,
    },
    CancelSchedule {
        schedule: Uuid,
    },
}

/// Why a scheduled change was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBecause {
    /// Someone cancelled it.
    Cancelled,
    /// The value changed after it was scheduled.
    Conflict,
    /// By its time, the key's schema no longer admitted the value.
    SchemaChanged,
}

/// A change waiting for its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingSchedule {
    pub id: Uuid,
    pub value: Value,
    pub at: DateTime<Utc>,
}

/// Stored in `events.event_type` by variant name: never rename one. Value events carry the
/// value before, so the history reads old → new without folding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConfigEvent {
    ConfigSchemaDeclared {
        tenant: String,
        key: String,
        schema: Value,
        previous: Option<Value>,
    },
    ConfigValueSet {
        tenant: String,
        key: String,
        value: Value,
        previous: Option<Value>,
    },
    ConfigValueCleared {
        previous: Value,
    },
    ConfigChangeScheduled {
        tenant: String,
        key: String,
        schedule: Uuid,
        value: Value,
        at: DateTime<Utc>,
    },
    /// A schedule's value set at its time.
    ConfigScheduleApplied {
        schedule: Uuid,
        value: Value,
        previous: Option<Value>,
    },
    ConfigScheduleCancelled {
        schedule: Uuid,
        because: CancelledBecause,
        /// For a conflict: the key's version whose change conflicted.
        conflicting_version: Option<u64>,
    },
}

impl DomainEvent for ConfigEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ConfigSchemaDeclared { .. } => "ConfigSchemaDeclared",
            Self::ConfigValueSet { .. } => "ConfigValueSet",
            Self::ConfigValueCleared { .. } => "ConfigValueCleared",
            Self::ConfigChangeScheduled { .. } => "ConfigChangeScheduled",
            Self::ConfigScheduleApplied { .. } => "ConfigScheduleApplied",
            Self::ConfigScheduleCancelled { .. } => "ConfigScheduleCancelled",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the configuration key has no value")]
    NotSet,
    #[error("the value does not match the key's schema")]
    ValueDoesNotMatch(Vec<Violation>),
    #[error("the key's current value does not match this schema; change or clear the value first")]
    CurrentValueDoesNotMatch(Vec<Violation>),
    #[error("a change cannot be scheduled in the past")]
    ScheduledInThePast,
    #[error("no such pending schedule")]
    NoSuchSchedule,
}

/// The decision state of a key; also what a point-in-time read renders.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigEntry {
    pub tenant: Option<String>,
    pub key: String,
    pub schema: Option<ConfigSchema>,
    pub value: Option<Value>,
    /// Scheduled changes not yet applied or cancelled.
    pub schedules: Vec<PendingSchedule>,
    /// The number of events so far: the version a conflicting change is recorded at.
    pub version: u64,
}

impl ConfigEntry {
    /// Events cancelling every pending schedule: the value changed under them.
    fn conflicts(&self) -> Vec<ConfigEvent> {
        self.schedules
            .iter()
            .map(|pending| ConfigEvent::ConfigScheduleCancelled {
                schedule: pending.id,
                because: CancelledBecause::Conflict,
                conflicting_version: Some(self.version + 1),
            })
            .collect()
    }

    fn violations(&self, value: &Value) -> Vec<Violation> {
        self.schema
            .as_ref()
            .map(|s| s.violations(value))
            .unwrap_or_default()
    }
}

impl Aggregate for ConfigEntry {
    /// Keys every stored configuration event: changing it orphans the history.
    const TYPE: &'static str = "config";
    type Command = ConfigCommand;
    type Event = ConfigEvent;
    type Error = ConfigError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ConfigCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ConfigError> {
        match command {
            ConfigCommand::DeclareSchema { tenant, key, schema } => {
                if let Some(value) = &self.value {
                    let violations = schema.violations(value);
                    if !violations.is_empty() {
                        return Err(ConfigError::CurrentValueDoesNotMatch(violations));
                    }
                }
                if self.schema.as_ref() != Some(&schema) {
                    let event = ConfigEvent::ConfigSchemaDeclared {
                        tenant,
                        key: key.as_ref().to_string(),
                        schema: schema.as_value().clone(),
                        previous: self.schema.as_ref().map(|s| s.as_value().clone()),
                    };
                    sink.write(event, self).await;
                }
            }
            ConfigCommand::SetValue { tenant, key, value } => {
                let violations = self.violations(&value);
                if !violations.is_empty() {
                    return Err(ConfigError::ValueDoesNotMatch(violations));
                }
                if self.value.as_ref() != Some(&value) {
                    let conflicts = self.conflicts();
                    let event = ConfigEvent::ConfigValueSet {
                        tenant,
                        key: key.as_ref().to_string(),
                        previous: self.value.clone(),
                        value,
                    };
                    sink.write(event, self).await;
                    for conflict in conflicts {
                        sink.write(conflict, self).await;
                    }
                }
            }
            ConfigCommand::ClearValue => {
                let Some(previous) = self.value.clone() else {
                    return Err(ConfigError::NotSet);
                };
                let conflicts = self.conflicts();
                sink.write(ConfigEvent::ConfigValueCleared { previous }, self)
                    .await;
                for conflict in conflicts {
                    sink.write(conflict, self).await;
                }
            }
            ConfigCommand::ScheduleValue {
                tenant,
                key,
                schedule,
                value,
                at,
            } => {
                let violations = self.violations(&value);
                if !violations.is_empty() {
                    return Err(ConfigError::ValueDoesNotMatch(violations));
                }
                if at <= Utc::now() {
                    return Err(ConfigError::ScheduledInThePast);
                }
                let event = ConfigEvent::ConfigChangeScheduled {
                    tenant,
                    key: key.as_ref().to_string(),
                    schedule,
                    value,
                    at,
                };
                sink.write(event, self).await;
            }
            ConfigCommand::ApplySchedule { schedule, now } => {
                // Already applied or cancelled, or not due: nothing to do (a scheduler on
                // another process may have been first).
                let Some(pending) = self.schedules.iter().find(|p| p.id == schedule && p.at <= now) else {
                    return Ok(());
                };
                let event = if self.violations(&pending.value).is_empty() {
                    ConfigEvent::ConfigScheduleApplied {
                        schedule,
                        value: pending.value.clone(),
                        previous: self.value.clone(),
                    }
                } else {
                    ConfigEvent::ConfigScheduleCancelled {
                        schedule,
                        because: CancelledBecause::SchemaChanged,
                        conflicting_version: None,
                    }
                };
                sink.write(event, self).await;
            }
            ConfigCommand::CancelSchedule { schedule } => {
                if !self.schedules.iter().any(|p| p.id == schedule) {
                    return Err(ConfigError::NoSuchSchedule);
                }
                let event = ConfigEvent::ConfigScheduleCancelled {
                    schedule,
                    because: CancelledBecause::Cancelled,
                    conflicting_version: None,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ConfigEvent) {
        self.version += 1;
        match event {
            ConfigEvent::ConfigSchemaDeclared {
                tenant, key, schema, ..
            } => {
                self.tenant = Some(tenant);
                self.key = key;
                self.schema = Some(ConfigSchema(schema));
            }
            ConfigEvent::ConfigValueSet {
                tenant, key, value, ..
            } => {
                self.tenant = Some(tenant);
                self.key = key;
                self.value = Some(value);
            }
            ConfigEvent::ConfigValueCleared { .. } => self.value = None,
            ConfigEvent::ConfigChangeScheduled {
                tenant,
                key,
                schedule,
                value,
                at,
            } => {
                self.tenant = Some(tenant);
                self.key = key;
                self.schedules.push(PendingSchedule {
                    id: schedule,
                    value,
                    at,
                });
            }
            ConfigEvent::ConfigScheduleApplied { schedule, value, .. } => {
                self.schedules.retain(|p| p.id != schedule);
                self.value = Some(value);
            }
            ConfigEvent::ConfigScheduleCancelled { schedule, .. } => {
                self.schedules.retain(|p| p.id != schedule)
            }
        }
    }
}

impl Governed for ConfigEntry {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Keys are named by their aggregate id, which holds the tenant: nothing to claim.
    fn claims(&self, _: &[ConfigEvent]) -> Claims {
        Claims::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    fn key() -> ConfigKey {
        ConfigKey::parse("key", "limits.max_output_tokens").unwrap()
    }

    fn schema() -> ConfigSchema {
        ConfigSchema::parse(
            "schema",
            json!({ "type": "integer", "minimum": 1, "maximum": 32000 }),
        )
        .unwrap()
    }

    fn declared() -> ConfigEvent {
        ConfigEvent::ConfigSchemaDeclared {
            tenant: "acme".into(),
            key: "limits.max_output_tokens".into(),
            schema: schema().as_value().clone(),
            previous: None,
        }
    }

    #[test]
    fn keys_are_dotted_names_and_schemas_must_compile() {
        for good in ["limits.max_output_tokens", "a", "feature-x.v2"] {
            assert!(ConfigKey::parse("key", good).is_ok(), "{good}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a/b", "ü"] {
            assert!(ConfigKey::parse("key", bad).is_err(), "{bad:?}");
        }
        assert_eq!(ConfigKey::parse_prefix("prefix", "limits.").unwrap(), "limits.");
        assert!(ConfigSchema::parse("schema", json!({ "type": 12 })).is_err());
        assert!(ConfigSchema::parse("schema", json!({ "minimum": "one" })).is_err());
    }

    #[test]
    fn a_value_is_checked_against_the_schema_and_names_the_failing_path() {
        let nested = ConfigSchema::parse(
            "schema",
            json!({ "type": "object", "properties": { "models": { "type": "array", "items": { "type": "string" } } } }),
        )
        .unwrap();
        let violations = nested.violations(&json!({ "models": ["a", 7] }));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].path, "/models/1");
        TestFramework::<ConfigEntry>::with(())
            .given(vec![declared()])
            .when(ConfigCommand::SetValue {
                tenant: "acme".into(),
                key: key(),
                value: json!(64000),
            })
            .then_expect_error(ConfigError::ValueDoesNotMatch(schema().violations(&json!(64000))));
    }

    #[test]
    fn a_schema_the_current_value_breaks_is_refused_and_changes_record_what_was_before() {
        let set = ConfigEvent::ConfigValueSet {
            tenant: "acme".into(),
            key: "limits.max_output_tokens".into(),
            value: json!(64000),
            previous: None,
        };
        TestFramework::<ConfigEntry>::with(())
            .given(vec![set.clone()])
            .when(ConfigCommand::DeclareSchema {
                tenant: "acme".into(),
                key: key(),
                schema: schema(),
            })
            .then_expect_error(ConfigError::CurrentValueDoesNotMatch(
                schema().violations(&json!(64000)),
            ));
        TestFramework::<ConfigEntry>::with(())
            .given(vec![set])
            .when(ConfigCommand::ClearValue)
            .then_expect_events(vec![ConfigEvent::ConfigValueCleared {
                previous: json!(64000),
            }]);
        TestFramework::<ConfigEntry>::with(())
            .given(vec![declared()])
            .when(ConfigCommand::ClearValue)
            .then_expect_error(ConfigError::NotSet);
    }

    fn scheduled(at: &str) -> ConfigEvent {
        ConfigEvent::ConfigChangeScheduled {
            tenant: "acme".into(),
            key: "limits.max_output_tokens".into(),
            schedule: Uuid::from_u128(1),
            value: json!(8000),
            at: at.parse().unwrap(),
        }
    }

    #[test]
    fn a_change_of_the_value_cancels_pending_schedules_as_a_conflict() {
        TestFramework::<ConfigEntry>::with(())
            .given(vec![declared(), scheduled("2099-01-01T00:00:00Z")])
            .when(ConfigCommand::SetValue {
                tenant: "acme".into(),
                key: key(),
                value: json!(2000),
            })
            .then_expect_events(vec![
                ConfigEvent::ConfigValueSet {
                    tenant: "acme".into(),
                    key: "limits.max_output_tokens".into(),
                    value: json!(2000),
                    previous: None,
                },
                ConfigEvent::ConfigScheduleCancelled {
                    schedule: Uuid::from_u128(1),
                    because: CancelledBecause::Conflict,
                    conflicting_version: Some(3),
                },
            ]);
    }

    #[test]
    fn a_due_schedule_applies_once_and_one_not_due_waits() {
        let due = "2026-01-01T00:00:00Z".parse().unwrap();
        TestFramework::<ConfigEntry>::with(())
            .given(vec![declared(), scheduled("2026-01-01T00:00:00Z")])
            .when(ConfigCommand::ApplySchedule {
                schedule: Uuid::from_u128(1),
                now: due,
            })
            .then_expect_events(vec![ConfigEvent::ConfigScheduleApplied {
                schedule: Uuid::from_u128(1),
                value: json!(8000),
                previous: None,
            }]);
        TestFramework::<ConfigEntry>::with(())
            .given(vec![declared(), scheduled("2026-01-01T00:00:01Z")])
            .when(ConfigCommand::ApplySchedule {
                schedule: Uuid::from_u128(1),
                now: due,
            })
            .then_expect_events(vec![]);
        let applied = ConfigEvent::ConfigScheduleApplied {
            schedule: Uuid::from_u128(1),
            value: json!(8000),
            previous: None,
        };
        TestFramework::<ConfigEntry>::with(())
            .given(vec![declared(), scheduled("2026-01-01T00:00:00Z"), applied])
            .when(ConfigCommand::ApplySchedule {
                schedule: Uuid::from_u128(1),
                now: due,
            })
            .then_expect_events(vec![]);
    }
}
