//! API keys: generating them, hashing them and authenticating requests with them.
//!
//! A key is `aipm_` and 64 hex digits. Its first characters (the display prefix) are not
//! secret: they are shown in key listings and select the candidate rows; the SHA-256 of
//! the whole key is then compared in constant time, so that nothing secret-derived is
//! compared by a routine that stops at the first differing byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use domain::access::{Permission, RateLimit, Role};
use projections::access::queries::{self as keys, ActiveKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::consistency::PendingReadAfter;
use crate::error::ApiError;
use crate::hardening::{AuthFailure, Guards, RateLimitSlot, RouteBudget};

/// Every key starts with this, so that leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "aipm_";
/// Hex digits of a key after [`KEY_PREFIX`].
const KEY_HEX_DIGITS: usize = 64;
/// Characters of a key shown to identify it (and used to find it).
const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;

/// A freshly generated key: the secret is shown once and only its hash is stored.
pub struct GeneratedKey {
    pub secret: String,
    pub hash: String,
    /// The first characters of the secret, safe to display to identify the key.
    pub display_prefix: String,
}

/// 256 random bits from the operating system, hex-encoded behind [`KEY_PREFIX`].
pub fn generate_key() -> Result<GeneratedKey, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let secret = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let hash = hash_key(&secret);
    let display_prefix = secret[..DISPLAY_PREFIX_LEN].to_string();
    Ok(GeneratedKey {
        secret,
        hash,
        display_prefix,
    })
}

/// SHA-256 of the whole key. Keys carry 256 bits of entropy, so a fast hash is enough.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: Uuid,
    pub key_name: String,
    pub tenant: String,
    pub role: Role,
    /// The key's own rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
}

impl Caller {
    /// Refuses with 403 unless the caller's role grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            return Ok(());
        }
        let action = match permission {
            Permission::Read => "read",
            Permission::Write => "make changes",
            Permission::ReadAudit => "read the audit history",
            Permission::ManageKeys => "manage API keys",
            Permission::IngestUsage => "write usage",
            Permission::RunPrompts => "run prompts",
            Permission::Operate => "see system state",
            Permission::ManageRegistry => "manage the model registry",
            Permission::ReviewChanges => "protect scopes or review changes",
            Permission::ManageBudgets => "manage budgets",
            Permission::CheckBudgets => "check budgets",
        };
        Err(ApiError::Forbidden {
            role: self.role.as_str(),
            action,
        })
    }
}

/// What authenticating a request takes: the keys' read model and the limiters. Any
/// application state that can hand one out ([`FromRef`]) can have [`Caller`]s extracted.
#[derive(Clone)]
pub struct Authenticator {
    pool: PgPool,
    guards: Arc<Guards>,
}

impl Authenticator {
    pub fn new(pool: PgPool, guards: Arc<Guards>) -> Self {
        Self { pool, guards }
    }

    async fn authenticate(&self, headers: &HeaderMap, address: Option<IpAddr>) -> Result<Caller, ApiError> {
        let failures = &self.guards.auth_failures;
        failures.check(address)?;
        let secret = bearer_key(headers).map_err(|failure| failures.fail(address, failure))?;
        match find_key(&self.pool, secret).await? {
            Some(caller) => Ok(caller),
            None => Err(failures.fail(address, AuthFailure::UnknownKey)),
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    /// Authenticates the request, charges it to the key's rate limit, and waits for its
    /// `Aipm-Read-After` ([`PendingReadAfter`]).
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Handlers may ask for the caller more than once (directly and through
        // `CommandContext`): authenticate and charge once per request.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let authenticator = Authenticator::from_ref(state);
        let caller = authenticator
            .authenticate(&parts.headers, client_address(parts))
            .await?;
        let budget = parts.extensions.get::<RouteBudget>().copied().unwrap_or_default();
        if let Some(outcome) =
            authenticator
                .guards
                .rate_limits
                .charge(caller.key_id, caller.rate_limit, budget)
        {
            if let Some(slot) = parts.extensions.get::<RateLimitSlot>() {
                slot.record(outcome);
            }
            if !outcome.allowed {
                return Err(ApiError::RateLimited {
                    retry_after: outcome.retry_after_secs(),
                });
            }
        }
        parts.extensions.insert(caller.clone());
        if let Some(pending) = parts.extensions.get::<PendingReadAfter>().cloned() {
            pending.run().await?;
        }
        Ok(caller)
    }
}

/// The address the request came from (the TCP peer; forwarding headers are not trusted).
pub fn client_address(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The active key whose secret is `secret` (`aipm_` and 64 hex digits), as its caller.
pub async fn find_key(pool: &PgPool, secret: &str) -> Result<Option<Caller>, ApiError> {
    let Some(display_prefix) = secret.get(..DISPLAY_PREFIX_LEN) else {
        return Ok(None);
    };
    let candidates = keys::active_keys_with_prefix(pool, display_prefix).await?;
    let Some(key) = matching_key(&hash_key(secret), candidates) else {
        return Ok(None);
    };
    let role = key.role.parse::<Role>().map_err(ApiError::Internal)?;
    let rate_limit = match (key.rate_limit_per_second, key.rate_limit_burst) {
        (Some(requests_per_second), Some(burst)) => Some(RateLimit {
            requests_per_second,
            burst: u32::try_from(burst).unwrap_or(1),
        }),
        _ => None,
    };
    Ok(Some(Caller {
        key_id: key.key_id,
        key_name: key.name,
        tenant: key.tenant_id,
        role,
        rate_limit,
    }))
}

/// The key of `Authorization: Bearer <key>`, if it has the shape of an aipm key.
fn bearer_key(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthFailure::MissingKey)?;
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(AuthFailure::NotBearer)?;
    let well_formed = secret.len() == KEY_PREFIX.len() + KEY_HEX_DIGITS
        && secret.starts_with(KEY_PREFIX)
        && secret[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit());
    if well_formed {
        Ok(secret)
    } else {
        Err(AuthFailure::MalformedKey)
    }
}

/// The candidate whose hash equals `presented`, comparing every candidate in full.
fn matching_key(presented: &str, candidates: Vec<ActiveKey>) -> Option<ActiveKey> {
    let mut found = None;
    for candidate in candidates {
        if bool::from(candidate.key_hash.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(candidate);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_only_their_hash_matches() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + 64);
        assert_eq!(hash_key(&a.secret), a.hash);
        assert_ne!(hash_key(&b.secret), a.hash);
        assert!(a.secret.starts_with(&a.display_prefix));
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_bearer_tokens_shaped_like_keys_are_looked_up() {
        let key = generate_key().unwrap().secret;
        assert_eq!(bearer_key(&bearer(&format!("Bearer {key}"))), Ok(key.as_str()));
        assert_eq!(bearer_key(&HeaderMap::new()), Err(AuthFailure::MissingKey));
        assert_eq!(
            bearer_key(&bearer(&format!("Basic {key}"))),
            Err(AuthFailure::NotBearer)
        );
        assert_eq!(
            bearer_key(&bearer("Bearer aipm_short")),
            Err(AuthFailure::MalformedKey)
        );
        let not_hex = format!("{KEY_PREFIX}{}", "z".repeat(KEY_HEX_DIGITS));
        assert_eq!(
            bearer_key(&bearer(&format!("Bearer {not_hex}"))),
            Err(AuthFailure::MalformedKey)
        );
    }

    #[test]
    fn the_matching_candidate_is_found_among_several() {
        let row = |hash: &str| ActiveKey {
            key_id: Uuid::new_v4(),
            name: hash.into(),
            tenant_id: "acme".into(),
            role: "viewer".into(),
            key_hash: hash.into(),
            rate_limit_per_second: None,
            rate_limit_burst: None,
        };
        let wanted = hash_key("b");
        let found = matching_key(
            &wanted,
            vec![row(&hash_key("a")), row(&wanted), row(&hash_key("c"))],
        );
        assert_eq!(found.map(|k| k.key_hash), Some(wanted.clone()));
        assert!(matching_key(&wanted, vec![row(&hash_key("a"))]).is_none());
        assert!(matching_key(&wanted, vec![]).is_none());
    }
}
