//! Provider health: how a provider is probed ([`HealthCheck`], [`probe_url`]), how a state
//! is decided from its latest probes ([`assess`]), and the `ProviderHealth` aggregate, which
//! records each change of state once.
//!
//! Probes themselves are telemetry (the `provider_probe` table), not events: only a change
//! of state is a fact worth the log.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::fields::Invalid;
use crate::governed::Governed;
use crate::provider::ProviderKind;
use crate::text::InvalidText;

/// Failed probes in a row that make a provider `down`.
pub const DOWN_AFTER: usize = 3;

/// How a provider is probed. Every field has a default, so a provider nobody configured is
/// probed too, and an event or snapshot written before a field existed still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// Seconds between two probes of the provider (10 to 86 400).
    pub interval_seconds: u32,
    /// A probe not answered within this many milliseconds failed (100 to 60 000).
    pub timeout_ms: u32,
    /// A successful probe slower than this many milliseconds makes the provider `degraded`
    /// (at most `timeout_ms`).
    pub degraded_latency_ms: u32,
    /// Open an incident when the provider goes `down`.
    pub open_incident_on_down: bool,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval_seconds: 60,
            timeout_ms: 5_000,
            degraded_latency_ms: 2_000,
            open_incident_on_down: false,
        }
    }
}

impl HealthCheck {
    /// Checks the bounds of each field; every field at fault is reported.
    pub fn validate(self) -> Result<Self, Invalid> {
        let mut errors = Invalid::default();
        if !(10..=86_400).contains(&self.interval_seconds) {
            errors.push(InvalidText::new("interval_seconds", "must be from 10 to 86400"));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            errors.push(InvalidText::new("timeout_ms", "must be from 100 to 60000"));
        }
        if self.degraded_latency_ms == 0 || self.degraded_latency_ms > self.timeout_ms {
            errors.push(InvalidText::new(
                "degraded_latency_ms",
                "must be from 1 to timeout_ms",
            ));
        }
        errors.into_result().map(|()| self)
    }
}

/// What a probe asks for: `GET` on this URL, without credentials.
///
/// - `openai`, `azure-openai`: `{base_url}/models` (the model listing every
///   OpenAI-compatible server has);
/// - `anthropic`: `{base_url}/v1/models`, as Anthropic's base URL carries no version;
/// - `custom`: the base URL itself.
///
/// The base URL's query (Azure's `api-version`) is kept. As no credential is sent, any
/// answer below 500 (a 401 included) shows that the service is there and answering.
pub fn probe_url(kind: ProviderKind, base_url: &str) -> Result<String, InvalidText> {
    let mut url = url::Url::parse(base_url).map_err(|_| InvalidText::new("base_url", "is not a URL"))?;
    let suffix = match kind {
        ProviderKind::Openai | ProviderKind::AzureOpenai => "models",
        ProviderKind::Anthropic => "v1/models",
        ProviderKind::Custom => return Ok(url.to_string()),
    };
    let path = format!("{}/{suffix}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url.to_string())
}

/// A provider's state, decided by [`assess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Not probed yet.
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// One probe's outcome, as [`assess`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// It got an answer below 500 in time.
    pub ok: bool,
    pub latency_ms: u32,
}

/// The state the latest probes (newest first) say the provider is in:
///
/// - `down`: the last [`DOWN_AFTER`] probes all failed (an error, a timeout or a 5xx);
/// - `degraded`: the latest probe failed, or succeeded slower than `degraded_latency_ms`,
///   but fewer than [`DOWN_AFTER`] probes in a row failed;
/// - `healthy`: the latest probe succeeded in time; one good probe ends a failure spell;
/// - `unknown`: no probe yet.
pub fn assess(latest: &[Probe], degraded_latency_ms: u32) -> HealthState {
    let Some(last) = latest.first() else {
        return HealthState::Unknown;
    };
    if latest.len() >= DOWN_AFTER && latest[..DOWN_AFTER].iter().all(|probe| !probe.ok) {
        HealthState::Down
    } else if !last.ok || last.latency_ms > degraded_latency_ms {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderHealthCommand {
    /// Records `state` as the provider's, if it is not already: the aggregate's optimistic
    /// concurrency makes two processes that assess the same change record it once.
    RecordAssessment {
        tenant: String,
        provider: String,
        state: HealthState,
        /// The latest probe's latency and, for a failure, what went wrong.
        latency_ms: Option<u32>,
        detail: Option<String>,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProviderHealthEvent {
    ProviderHealthChanged {
        tenant: String,
        /// The provider's name.
        provider: String,
        from: HealthState,
        to: HealthState,
        latency_ms: Option<u32>,
        detail: Option<String>,
    },
}

impl DomainEvent for ProviderHealthEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ProviderHealthChanged { .. } => "ProviderHealthChanged".to_string(),
        }
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderHealthError {}

/// A provider's health; its id is the provider's.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderHealth {
    pub tenant: Option<String>,
    pub state: HealthState,
}

impl Aggregate for ProviderHealth {
    /// Keys every stored provider health event: changing it orphans the history.
    const TYPE: &'static str = "provider_health";
    type Command = ProviderHealthCommand;
    type Event = ProviderHealthEvent;
    type Error = ProviderHealthError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ProviderHealthCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ProviderHealthError> {
        match command {
            ProviderHealthCommand::RecordAssessment {
                tenant,
                provider,
                state,
                latency_ms,
                detail,
            } => {
                if state != self.state {
                    let event = ProviderHealthEvent::ProviderHealthChanged {
                        tenant,
                        provider,
                        from: self.state,
                        to: state,
                        latency_ms,
                        detail,
                    };
                    sink.write(event, self).await;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: ProviderHealthEvent) {
        match event {
            ProviderHealthEvent::ProviderHealthChanged { tenant, to, .. } => {
                self.tenant = Some(tenant);
                self.state = to;
            }
        }
    }
}

impl Governed for ProviderHealth {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    const OK: Probe = Probe {
        ok: true,
        latency_ms: 50,
    };
    const SLOW: Probe = Probe {
        ok: true,
        latency_ms: 3_000,
    };
    const FAILED: Probe = Probe {
        ok: false,
        latency_ms: 5_000,
    };

    #[test]
    fn three_failures_in_a_row_are_down_fewer_are_degraded_one_success_heals() {
        use HealthState::*;
        assert_eq!(assess(&[], 2_000), Unknown);
        assert_eq!(assess(&[OK], 2_000), Healthy);
        assert_eq!(assess(&[SLOW, OK], 2_000), Degraded);
        assert_eq!(assess(&[FAILED], 2_000), Degraded);
        assert_eq!(assess(&[FAILED, FAILED], 2_000), Degraded);
        assert_eq!(assess(&[FAILED, FAILED, OK], 2_000), Degraded);
        assert_eq!(assess(&[FAILED, FAILED, FAILED], 2_000), Down);
        assert_eq!(assess(&[FAILED, FAILED, FAILED, OK], 2_000), Down);
        assert_eq!(assess(&[OK, FAILED, FAILED, FAILED], 2_000), Healthy);
        assert_eq!(assess(&[SLOW, FAILED, FAILED, FAILED], 2_000), Degraded);
        assert_eq!(assess(&[SLOW], 5_000), Healthy);
    }

    #[test]
    fn the_probe_url_follows_the_kind_and_keeps_the_query() {
        let url = |kind, base| probe_url(kind, base).unwrap();
        assert_eq!(
            url(ProviderKind::Openai, "https://api.openai.com/v1"),
            "https://api.openai.com/v1/models"
        );
        assert_eq!(
            url(ProviderKind::Openai, "http://127.0.0.1:8000/v1/"),
            "http://127.0.0.1:8000/v1/models"
        );
        assert_eq!(
            url(ProviderKind::Anthropic, "https://api.anthropic.com"),
            "https://api.anthropic.com/v1/models"
        );
        assert_eq!(
            url(
                ProviderKind::AzureOpenai,
                "https://x.openai.azure.com/openai?api-version=2024-06-01"
            ),
            "https://x.openai.azure.com/openai/models?api-version=2024-06-01"
        );
        assert_eq!(
            url(ProviderKind::Custom, "https://llm.internal/health"),
            "https://llm.internal/health"
        );
    }

    #[test]
    fn health_check_settings_are_bounded() {
        assert_eq!(HealthCheck::default().validate(), Ok(HealthCheck::default()));
        let bad = HealthCheck {
            interval_seconds: 1,
            timeout_ms: 50,
            degraded_latency_ms: 100,
            open_incident_on_down: true,
        };
        let fields: Vec<&str> = bad
            .validate()
            .unwrap_err()
            .errors()
            .iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["interval_seconds", "timeout_ms", "degraded_latency_ms"]);
        let from_empty: HealthCheck = serde_json::from_str("{}").unwrap();
        assert_eq!(from_empty, HealthCheck::default());
    }

    #[test]
    fn a_state_is_recorded_once_per_change() {
        let record = |state| ProviderHealthCommand::RecordAssessment {
            tenant: "acme".into(),
            provider: "openai".into(),
            state,
            latency_ms: Some(10),
            detail: None,
        };
        let changed = |from, to| ProviderHealthEvent::ProviderHealthChanged {
            tenant: "acme".into(),
            provider: "openai".into(),
            from,
            to,
            latency_ms: Some(10),
            detail: None,
        };
        TestFramework::<ProviderHealth>::with(())
            .given_no_previous_events()
            .when(record(HealthState::Healthy))
            .then_expect_events(vec![changed(HealthState::Unknown, HealthState::Healthy)]);
        TestFramework::<ProviderHealth>::with(())
            .given(vec![changed(HealthState::Unknown, HealthState::Healthy)])
            .when(record(HealthState::Healthy))
            .then_expect_events(vec![]);
        TestFramework::<ProviderHealth>::with(())
            .given(vec![changed(HealthState::Unknown, HealthState::Healthy)])
            .when(record(HealthState::Down))
            .then_expect_events(vec![changed(HealthState::Healthy, HealthState::Down)]);
    }
}
