//! Who may do what: tenants and the API keys that act in them.

use std::str::FromStr;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::governed::Governed;
use crate::text::{DisplayName, InvalidText, Slug};

/// What an API key may do inside its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in its tenant, including keys.
    Admin,
    /// Change prompts and the like.
    Editor,
    /// Read.
    Viewer,
    /// Read, including the audit history.
    Auditor,
    /// Only write usage.
    Ingest,
}

/// A right that a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
    ReadAudit,
    ManageKeys,
    IngestUsage,
    /// See system-wide operational state (projection lag spans every tenant's events).
    Operate,
    /// Register providers and models, change their status and prices.
    ManageRegistry,
    /// Protect scopes, and approve or reject changes to them.
    ReviewChanges,
    /// Define, change and delete budgets.
    ManageBudgets,
    /// Ask whether a call is within its budgets (what an application does before one).
    CheckBudgets,
    /// Run prompts and converse through aipm's gateway (calls models, records their usage).
    RunPrompts,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Editor,
        Role::Viewer,
        Role::Auditor,
        Role::Ingest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Ingest => "ingest",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Editor => matches!(permission, Read | Write | IngestUsage | CheckBudgets | RunPrompts),
            Role::Viewer => matches!(permission, Read | CheckBudgets),
            Role::Auditor => matches!(permission, Read | ReadAudit),
            Role::Ingest => matches!(permission, IngestUsage | CheckBudgets | RunPrompts),
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == value)
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {value:?}; expected one of {}", names.join(", "))
            })
    }
}

// ---------------------------------------------------------------------------------------
// Tenant

#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    CreateTenant { slug: Slug },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    TenantCreated { slug: String },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TenantCreated { .. } => "TenantCreated".to_string(),
        }
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("the tenant already exists")]
    AlreadyExists,
}

/// A tenant: the isolation boundary. Its aggregate id is its slug.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub slug: Option<String>,
}

impl Aggregate for Tenant {
    /// Keys every stored tenant event: changing it orphans the history.
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TenantCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), TenantError> {
        match command {
            TenantCommand::CreateTenant { .. } if self.slug.is_some() => Err(TenantError::AlreadyExists),
            TenantCommand::CreateTenant { slug } => {
                sink.write(
                    TenantEvent::TenantCreated {
                        slug: slug.to_string(),
                    },
                    self,
                )
                .await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: TenantEvent) {
        match event {
            TenantEvent::TenantCreated { slug } => self.slug = Some(slug),
        }
    }
}

impl Governed for Tenant {
    fn tenant(&self) -> Option<&str> {
        self.slug.as_deref()
    }
}

// ---------------------------------------------------------------------------------------
// API key

/// A key's own request budget, replacing the server's default: a token bucket refilled at
/// `requests_per_second` that holds at most `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// Highest accepted rate and burst: beyond them a limit means nothing.
    pub const MAX: u32 = 1_000_000;

    /// A rate above 0 (fractions allowed: 0.5 is one request every two seconds) and a
    /// burst of at least 1, both at most [`RateLimit::MAX`].
    pub fn new(requests_per_second: f64, burst: u32) -> Result<Self, InvalidText> {
        if !(requests_per_second.is_finite()
            && requests_per_second > 0.0
            && requests_per_second <= f64::from(Self::MAX))
        {
            return Err(InvalidText::new(
                "requests_per_second",
                format!("must be more than 0 and at most {}", Self::MAX),
            ));
        }
        if !(1..=Self::MAX).contains(&burst) {
            return Err(InvalidText::new(
                "burst",
                format!("must be between 1 and {}", Self::MAX),
            ));
        }
        Ok(Self {
            requests_per_second,
            burst,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeyCommand {
    /// `key_hash` is the SHA-256 of the secret, computed by the caller: the secret itself
    /// never reaches the event log.
    IssueApiKey {
        tenant: String,
        name: DisplayName,
        role: Role,
        key_hash: String,
        key_prefix: String,
    },
    RevokeApiKey,
    /// Gives the key its own rate limit instead of the server's default.
    SetRateLimit {
        limit: RateLimit,
    },
    /// Returns the key to the server's default rate limit.
    ClearRateLimit,
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    ApiKeyIssued {
        tenant: String,
        name: String,
        role: Role,
        key_hash: String,
        key_prefix: String,
    },
    ApiKeyRevoked,
    ApiKeyRateLimitSet {
        requests_per_second: f64,
        burst: u32,
    },
    ApiKeyRateLimitCleared,
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ApiKeyIssued { .. } => "ApiKeyIssued",
            Self::ApiKeyRevoked => "ApiKeyRevoked",
            Self::ApiKeyRateLimitSet { .. } => "ApiKeyRateLimitSet",
            Self::ApiKeyRateLimitCleared => "ApiKeyRateLimitCleared",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("no such API key")]
    NotFound,
    #[error("an API key with this id already exists")]
    AlreadyExists,
    #[error("the API key is already revoked")]
    AlreadyRevoked,
    #[error("the API key is revoked")]
    Revoked,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub tenant: Option<String>,
    pub name: String,
    pub role: Option<Role>,
    pub revoked: bool,
    /// Absent from snapshots taken before keys had their own limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl Aggregate for ApiKey {
    /// Keys every stored API key event: changing it orphans the history.
    const TYPE: &'static str = "api_key";
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ApiKeyCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ApiKeyError> {
        match command {
            ApiKeyCommand::IssueApiKey { .. } if self.tenant.is_some() => Err(ApiKeyError::AlreadyExists),
            ApiKeyCommand::IssueApiKey {
                tenant,
                name,
                role,
                key_hash,
                key_prefix,
            } => {
                let name = name.as_ref().to_string();
                sink.write(
                    ApiKeyEvent::ApiKeyIssued {
                        tenant,
                        name,
                        role,
                        key_hash,
                        key_prefix,
                    },
                    self,
                )
                .await;
                Ok(())
            }
            ApiKeyCommand::RevokeApiKey if self.tenant.is_none() => Err(ApiKeyError::NotFound),
            ApiKeyCommand::RevokeApiKey if self.revoked => Err(ApiKeyError::AlreadyRevoked),
            ApiKeyCommand::RevokeApiKey => {
                sink.write(ApiKeyEvent::ApiKeyRevoked, self).await;
                Ok(())
            }
            ApiKeyCommand::SetRateLimit { .. } | ApiKeyCommand::ClearRateLimit if self.tenant.is_none() => {
                Err(ApiKeyError::NotFound)
            }
            ApiKeyCommand::SetRateLimit { .. } | ApiKeyCommand::ClearRateLimit if self.revoked => {
                Err(ApiKeyError::Revoked)
            }
            ApiKeyCommand::SetRateLimit { limit } => {
                let event = ApiKeyEvent::ApiKeyRateLimitSet {
                    requests_per_second: limit.requests_per_second,
                    burst: limit.burst,
                };
                sink.write(event, self).await;
                Ok(())
            }
            // Clearing a limit that is not set changes nothing, so it records nothing.
            ApiKeyCommand::ClearRateLimit if self.rate_limit.is_none() => Ok(()),
            ApiKeyCommand::ClearRateLimit => {
                sink.write(ApiKeyEvent::ApiKeyRateLimitCleared, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyIssued {
                tenant, name, role, ..
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.role = Some(role);
            }
            ApiKeyEvent::ApiKeyRevoked => self.revoked = true,
            ApiKeyEvent::ApiKeyRateLimitSet {
                requests_per_second,
                burst,
            } => {
                self.rate_limit = Some(RateLimit {
                    requests_per_second,
                    burst,
                })
            }
            ApiKeyEvent::ApiKeyRateLimitCleared => self.rate_limit = None,
        }
    }
}

impl Governed for ApiKey {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    #[test]
    fn each_role_has_exactly_the_rights_it_names() {
        assert!(Role::Admin.allows(Permission::ManageKeys));
        assert!(!Role::Editor.allows(Permission::ManageKeys));
        assert!(Role::Editor.allows(Permission::Write));
        assert!(!Role::Viewer.allows(Permission::Write));
        assert!(Role::Auditor.allows(Permission::ReadAudit));
        assert!(!Role::Viewer.allows(Permission::ReadAudit));
        assert!(!Role::Ingest.allows(Permission::Read));
        assert!(Role::Ingest.allows(Permission::IngestUsage));
        assert!(Role::Admin.allows(Permission::Operate));
        assert!(!Role::Auditor.allows(Permission::Operate));
    }

    fn issued() -> ApiKeyEvent {
        ApiKeyEvent::ApiKeyIssued {
            tenant: "acme".into(),
            name: "ci".into(),
            role: Role::Editor,
            key_hash: "h".into(),
            key_prefix: "aipm_0123".into(),
        }
    }

    #[test]
    fn a_key_gets_its_own_rate_limit_and_loses_it_again() {
        let limit = RateLimit::new(2.5, 10).unwrap();
        TestFramework::<ApiKey>::with(())
            .given(vec![issued()])
            .when(ApiKeyCommand::SetRateLimit { limit })
            .then_expect_events(vec![ApiKeyEvent::ApiKeyRateLimitSet {
                requests_per_second: 2.5,
                burst: 10,
            }]);
        TestFramework::<ApiKey>::with(())
            .given(vec![
                issued(),
                ApiKeyEvent::ApiKeyRateLimitSet {
                    requests_per_second: 2.5,
                    burst: 10,
                },
            ])
            .when(ApiKeyCommand::ClearRateLimit)
            .then_expect_events(vec![ApiKeyEvent::ApiKeyRateLimitCleared]);
        TestFramework::<ApiKey>::with(())
            .given(vec![issued()])
            .when(ApiKeyCommand::ClearRateLimit)
            .then_expect_events(vec![]);
    }

    #[test]
    fn revoked_or_unknown_keys_get_no_rate_limit() {
        let limit = RateLimit::new(1.0, 1).unwrap();
        TestFramework::<ApiKey>::with(())
            .given(vec![issued(), ApiKeyEvent::ApiKeyRevoked])
            .when(ApiKeyCommand::SetRateLimit { limit })
            .then_expect_error(ApiKeyError::Revoked);
        TestFramework::<ApiKey>::with(())
            .given_no_previous_events()
            .when(ApiKeyCommand::ClearRateLimit)
            .then_expect_error(ApiKeyError::NotFound);
    }

    #[test]
    fn rate_limits_must_be_positive_and_bounded() {
        assert!(RateLimit::new(0.5, 1).is_ok());
        assert_eq!(RateLimit::new(0.0, 1).unwrap_err().field, "requests_per_second");
        assert_eq!(
            RateLimit::new(f64::NAN, 1).unwrap_err().field,
            "requests_per_second"
        );
        assert_eq!(RateLimit::new(2e6, 1).unwrap_err().field, "requests_per_second");
        assert_eq!(RateLimit::new(1.0, 0).unwrap_err().field, "burst");
        assert_eq!(RateLimit::new(1.0, 2_000_000).unwrap_err().field, "burst");
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        assert_eq!("auditor".parse::<Role>(), Ok(Role::Auditor));
        assert!("root".parse::<Role>().is_err());
    }
}
