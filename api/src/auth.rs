//! API keys: generating them, hashing them and authenticating requests with them.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use domain::access::{Permission, Role};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Every key starts with this, so that leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "aipm_";

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
    let display_prefix = secret.chars().take(KEY_PREFIX.len() + 8).collect();
    Ok(GeneratedKey {
        secret,
        hash,
        display_prefix,
    })
}

/// SHA-256 of the whole key. Keys carry 256 bits of entropy, so a fast hash is enough; the
/// lookup is by hash equality inside PostgreSQL's index, which does not reveal timing
/// about the secret to the caller.
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
            Permission::Operate => "see system state",
        };
        Err(ApiError::Forbidden {
            role: self.role.as_str(),
            action,
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(secret) = header.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(ApiError::Unauthorized);
        };
        if !secret.starts_with(KEY_PREFIX) || secret.len() > 128 {
            return Err(ApiError::Unauthorized);
        }
        let row: Option<(Uuid, String, String, String)> = sqlx::query_as(
            "select key_id, name, tenant_id, role from api_key where key_hash = $1 and revoked_at is null",
        )
        .bind(hash_key(secret))
        .fetch_optional(&state.pool)
        .await?;
        let Some((key_id, key_name, tenant, role)) = row else {
            tracing::info!("authentication failed");
            return Err(ApiError::Unauthorized);
        };
        let role = role.parse::<Role>().map_err(ApiError::Internal)?;
        Ok(Caller {
            key_id,
            key_name,
            tenant,
            role,
        })
    }
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
}
