//! The `Provider` aggregate: a service that serves models (an OpenAI-compatible server,
//! Anthropic, Azure OpenAI), where it is and where its secret lives. The secret itself never
//! enters the log: only a reference to it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::governed::{Claims, Governed};
use crate::health::HealthCheck;
use crate::text::{InvalidText, Slug};

/// Scope of the per-tenant unique provider name.
pub const PROVIDER_NAME_SCOPE: &str = "provider_name";
/// Longest base URL or credential reference, in characters.
const MAX_LOCATION_CHARS: usize = 2_000;

/// How aipm talks to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Any server speaking OpenAI's chat completions (OpenAI, vLLM, Ollama, LM Studio, …).
    Openai,
    Anthropic,
    AzureOpenai,
    Custom,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Openai,
        ProviderKind::Anthropic,
        ProviderKind::AzureOpenai,
        ProviderKind::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::AzureOpenai => "azure-openai",
            ProviderKind::Custom => "custom",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        Self::ALL.into_iter().find(|k| k.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
            InvalidText::new(field, format!("must be one of {}", names.join(", ")))
        })
    }
}

/// Where a provider's secret lives: `env:<VARIABLE>` or `file:<absolute path>`, read when a
/// call is made. Anything else is refused, so that a key pasted here never reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CredentialRef(String);

impl CredentialRef {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        let invalid = || {
            InvalidText::new(
                field,
                "must say where the secret lives, as env:VARIABLE (capitals, digits and _) or \
                 file:/absolute/path; the secret itself is never stored",
            )
        };
        if text.chars().count() > MAX_LOCATION_CHARS {
            return Err(invalid());
        }
        if let Some(variable) = text.strip_prefix("env:") {
            let valid = variable
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && variable
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            return if valid {
                Ok(Self(text.to_string()))
            } else {
                Err(invalid())
            };
        }
        if let Some(path) = text.strip_prefix("file:") {
            let valid = path.starts_with('/')
                && path.len() > 1
                && !path.chars().any(|c| c.is_control() || c.is_whitespace())
                && !path.split('/').any(|part| part == "..");
            return if valid {
                Ok(Self(text.to_string()))
            } else {
                Err(invalid())
            };
        }
        Err(invalid())
    }
}

impl AsRef<str> for CredentialRef {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A provider's endpoint: an `http` or `https` URL without user information or any query
/// parameter that looks like a credential (`api-version` is fine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        if text.chars().count() > MAX_LOCATION_CHARS {
            return Err(InvalidText::new(field, "must be at most 2000 characters"));
        }
        let url = url::Url::parse(text).map_err(|_| {
            InvalidText::new(field, "must be an absolute URL, e.g. https://api.openai.com/v1")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(InvalidText::new(
                field,
                "must be an http or https URL with a host",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidText::new(
                field,
                "must not carry user information: give the secret as credential_ref",
            ));
        }
        if let Some((name, _)) = url.query_pairs().find(|(name, _)| looks_like_a_credential(name)) {
            return Err(InvalidText::new(
                field,
                format!("must not carry the query parameter {name:?}: give the secret as credential_ref"),
            ));
        }
        Ok(Self(text.to_string()))
    }
}

impl AsRef<str> for BaseUrl {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whether a query parameter's name says it carries a secret.
fn looks_like_a_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace(['-', '_'], "");
    name != "apiversion"
        && ([
            "key",
            "token",
            "secret",
            "password",
            "passwd",
            "signature",
            "credential",
            "auth",
        ]
        .iter()
        .any(|word| name.contains(word))
            || matches!(name.as_str(), "sig" | "code"))
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderCommand {
    RegisterProvider {
        tenant: String,
        name: Slug,
        kind: ProviderKind,
        base_url: BaseUrl,
        credential_ref: CredentialRef,
        enabled: bool,
    },
    /// Changes what is given; the name cannot change (models are referred to by it).
    UpdateProvider {
        kind: Option<ProviderKind>,
        base_url: Option<BaseUrl>,
        credential_ref: Option<CredentialRef>,
        enabled: Option<bool>,
    },
    /// How the provider is probed (`crate::health`); nothing is recorded when it is already so.
    SetHealthCheck { health_check: HealthCheck },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProviderEvent {
    ProviderRegistered {
        tenant: String,
        name: String,
        kind: ProviderKind,
        base_url: String,
        credential_ref: String,
        enabled: bool,
    },
    /// The provider's settings after the change (all of them, changed or not).
    ProviderUpdated {
        kind: ProviderKind,
        base_url: String,
        credential_ref: String,
        enabled: bool,
    },
    /// How the provider is probed from now on.
    ProviderHealthCheckSet { health_check: HealthCheck },
}

impl DomainEvent for ProviderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ProviderRegistered { .. } => "ProviderRegistered",
            Self::ProviderUpdated { .. } => "ProviderUpdated",
            Self::ProviderHealthCheckSet { .. } => "ProviderHealthCheckSet",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("no such provider")]
    NotFound,
    #[error("a provider with this id already exists")]
    AlreadyExists,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub tenant: Option<String>,
    pub name: String,
    pub kind: Option<ProviderKind>,
    pub base_url: String,
    pub credential_ref: String,
    pub enabled: bool,
    /// Absent from snapshots taken before health checks existed: the defaults then.
    #[serde(default)]
    pub health_check: HealthCheck,
}

impl Aggregate for Provider {
    /// Keys every stored provider event: changing it orphans the history.
    const TYPE: &'static str = "provider";
    type Command = ProviderCommand;
    type Event = ProviderEvent;
    type Error = ProviderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ProviderCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ProviderError> {
        match command {
            ProviderCommand::RegisterProvider { .. } if self.tenant.is_some() => {
                Err(ProviderError::AlreadyExists)
            }
            ProviderCommand::RegisterProvider {
                tenant,
                name,
                kind,
                base_url,
                credential_ref,
                enabled,
            } => {
                let event = ProviderEvent::ProviderRegistered {
                    tenant,
                    name: name.to_string(),
                    kind,
                    base_url: base_url.as_ref().to_string(),
                    credential_ref: credential_ref.as_ref().to_string(),
                    enabled,
                };
                sink.write(event, self).await;
                Ok(())
            }
            _ if self.tenant.is_none() => Err(ProviderError::NotFound),
            ProviderCommand::UpdateProvider {
                kind,
                base_url,
                credential_ref,
                enabled,
            } => {
                let kind = kind.or(self.kind).unwrap_or(ProviderKind::Custom);
                let base_url = base_url.map_or_else(|| self.base_url.clone(), |u| u.as_ref().to_string());
                let credential_ref =
                    credential_ref.map_or_else(|| self.credential_ref.clone(), |c| c.as_ref().to_string());
                let enabled = enabled.unwrap_or(self.enabled);
                let unchanged = Some(kind) == self.kind
                    && base_url == self.base_url
                    && credential_ref == self.credential_ref
                    && enabled == self.enabled;
                if !unchanged {
                    let event = ProviderEvent::ProviderUpdated {
                        kind,
                        base_url,
                        credential_ref,
                        enabled,
                    };
                    sink.write(event, self).await;
                }
                Ok(())
            }
            ProviderCommand::SetHealthCheck { health_check } => {
                if health_check != self.health_check {
                    sink.write(ProviderEvent::ProviderHealthCheckSet { health_check }, self)
                        .await;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: ProviderEvent) {
        match event {
            ProviderEvent::ProviderRegistered {
                tenant,
                name,
                kind,
                base_url,
                credential_ref,
                enabled,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.kind = Some(kind);
                self.base_url = base_url;
                self.credential_ref = credential_ref;
                self.enabled = enabled;
            }
            ProviderEvent::ProviderUpdated {
                kind,
                base_url,
                credential_ref,
                enabled,
            } => {
                self.kind = Some(kind);
                self.base_url = base_url;
                self.credential_ref = credential_ref;
                self.enabled = enabled;
            }
            ProviderEvent::ProviderHealthCheckSet { health_check } => {
                self.health_check = health_check;
            }
        }
    }
}

impl Governed for Provider {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Its name, unique per tenant; models refer to it from its registration on.
    fn claims(&self, events: &[ProviderEvent]) -> Claims {
        let mut claims = Claims::default();
        for event in events {
            if let ProviderEvent::ProviderRegistered { name, .. } = event {
                claims = claims.claim(PROVIDER_NAME_SCOPE, name).register(Self::TYPE);
            }
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn registered() -> ProviderEvent {
        ProviderEvent::ProviderRegistered {
            tenant: "acme".into(),
            name: "openai".into(),
            kind: ProviderKind::Openai,
            base_url: "https://api.openai.com/v1".into(),
            credential_ref: "env:OPENAI_API_KEY".into(),
            enabled: true,
        }
    }

    #[test]
    fn credentials_are_references_never_secrets() {
        assert!(CredentialRef::parse("c", "env:OPENAI_API_KEY").is_ok());
        assert!(CredentialRef::parse("c", "file:/run/secrets/openai").is_ok());
        for bad in [
            "sk-proj-abc123",
            "env:openai_key",
            "env:",
            "file:relative/path",
            "file:/run/../etc/passwd",
            "file:/",
            "ENV:X",
        ] {
            assert!(CredentialRef::parse("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base_urls_carry_no_user_information_and_no_credential_parameters() {
        assert!(BaseUrl::parse("u", "https://api.openai.com/v1").is_ok());
        assert!(BaseUrl::parse("u", "https://x.openai.azure.com/openai?api-version=2024-06-01").is_ok());
        assert!(BaseUrl::parse("u", "http://127.0.0.1:11434/v1").is_ok());
        for bad in [
            "https://user:pass@api.example.com",
            "https://api.example.com/v1?key=abc",
            "https://api.example.com/v1?api-key=abc",
            "https://api.example.com/v1?access_token=abc",
            "https://api.example.com/v1?client_secret=abc",
            "ftp://files.example.com",
            "not a url",
            "/v1",
        ] {
            assert!(BaseUrl::parse("u", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_update_records_the_provider_as_it_becomes_and_nothing_when_nothing_changes() {
        TestFramework::<Provider>::with(())
            .given(vec![registered()])
            .when(ProviderCommand::UpdateProvider {
                kind: None,
                base_url: None,
                credential_ref: None,
                enabled: Some(false),
            })
            .then_expect_events(vec![ProviderEvent::ProviderUpdated {
                kind: ProviderKind::Openai,
                base_url: "https://api.openai.com/v1".into(),
                credential_ref: "env:OPENAI_API_KEY".into(),
                enabled: false,
            }]);
        TestFramework::<Provider>::with(())
            .given(vec![registered()])
            .when(ProviderCommand::UpdateProvider {
                kind: Some(ProviderKind::Openai),
                base_url: None,
                credential_ref: None,
                enabled: Some(true),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_registered_provider_holds_its_name_and_can_be_referred_to() {
        let claims = Provider::default().claims(&[registered()]);
        assert_eq!(claims.claimed, vec![(PROVIDER_NAME_SCOPE, "openai".to_string())]);
        assert_eq!(claims.registered, vec![Provider::TYPE]);
    }
}
