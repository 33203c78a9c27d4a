//! Reads of `api_key`: the candidates a request's key is checked against, and the keys as
//! an admin lists them. The table is [`super::AccessProjection`]'s.

use chrono::{DateTime, Utc};
use domain::access::ApiKeyEvent;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// An active key as authentication needs it. Its hash is compared by the caller, in
/// constant time.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActiveKey {
    pub key_id: Uuid,
    pub name: String,
    pub tenant_id: String,
    pub role: String,
    pub key_hash: String,
    pub rate_limit_per_second: Option<f64>,
    pub rate_limit_burst: Option<i32>,
}

/// The active keys whose display prefix is `prefix` (normally one).
pub async fn active_keys_with_prefix(pool: &PgPool, prefix: &str) -> sqlx::Result<Vec<ActiveKey>> {
    sqlx::query_as(
        "select key_id, name, tenant_id, role, key_hash, rate_limit_per_second, rate_limit_burst
         from api_key where key_prefix = $1 and revoked_at is null",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
}

/// An API key, without its secret.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = RoleName))]
    pub role: String,
    /// The first characters of the key, to recognise it by.
    #[cfg_attr(feature = "openapi", schema(example = "aipm_1a2b3c4d"))]
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    /// The name of the key that issued it.
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's own rate limit (`requests_per_second`, `burst`); `null`: the default.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<KeyRateLimit>))]
    pub rate_limit: Option<sqlx::types::Json<serde_json::Value>>,
}

impl KeyView {
    /// The key an `ApiKeyIssued` event records, as listed; `None` for any other event.
    pub fn issued(
        id: Uuid,
        event: ApiKeyEvent,
        created_at: DateTime<Utc>,
        created_by: String,
    ) -> Option<Self> {
        let ApiKeyEvent::ApiKeyIssued {
            name,
            role,
            key_prefix,
            ..
        } = event
        else {
            return None;
        };
        Some(Self {
            id,
            name,
            role: role.as_str().to_string(),
            prefix: key_prefix,
            created_at,
            created_by,
            revoked_at: None,
            rate_limit: None,
        })
    }
}

/// A key's own rate limit.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the JSON `KEY_COLUMNS` builds
pub struct KeyRateLimit {
    requests_per_second: f64,
    burst: u32,
}

/// A role an API key can have.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // describes `domain::access::Role` as text
pub enum RoleName {
    Admin,
    Editor,
    Viewer,
    Auditor,
    Ingest,
}

const KEY_COLUMNS: &str = "key_id as id, name, role, key_prefix as prefix, created_at, created_by, revoked_at,
     case when rate_limit_per_second is null then null
          else json_build_object('requests_per_second', rate_limit_per_second, 'burst', rate_limit_burst) end as rate_limit";

/// A key of `tenant`.
pub async fn key(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<KeyView>> {
    let sql = format!("select {KEY_COLUMNS} from api_key where key_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// Every key of `tenant`, revoked ones included, oldest first.
pub async fn keys(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<KeyView>> {
    let sql = format!("select {KEY_COLUMNS} from api_key where tenant_id = $1 order by key_id");
    sqlx::query_as(&sql).bind(tenant).fetch_all(pool).await
}

#[cfg(all(test, feature = "openapi"))]
mod tests {
    use utoipa::PartialSchema;

    use super::RoleName;

    #[test]
    fn the_role_schema_lists_every_role() {
        let schema = serde_json::to_value(RoleName::schema()).unwrap();
        let names: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap())
            .collect();
        let roles: Vec<&str> = domain::access::Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, roles);
    }
}
