//! Permission history: which keys held which role in a tenant at a past instant, folded
//! from the `api_key` events recorded up to it (not read from the `api_key` table, which
//! only knows the present).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::access::ApiKey;
use domain::position::GlobalCursor;
use domain::upcast::{self, Schema};
use serde::Serialize;
use sqlx::PgPool;

use eventlog::ProjectionError;

/// A key as it stood at the instant asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPermission {
    pub key_id: String,
    pub name: String,
    /// `None` only for a key whose events this build cannot read.
    pub role: Option<String>,
    /// Issued and not revoked at that instant.
    pub active: bool,
    pub issued_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every key of `tenant` issued at or before `at`, as it stood then, ordered by key id.
pub async fn as_of(
    pool: &PgPool,
    tenant: &str,
    at: DateTime<Utc>,
) -> Result<Vec<KeyPermission>, ProjectionError> {
    type Row = (String, String, String, String, DateTime<Utc>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "select aggregate_id, event_type, event_version, payload::text, recorded_at,
                transaction_id::text::bigint, position
         from events
         where aggregate_type = $1 and tenant_id = $2 and recorded_at <= $3
         order by aggregate_id, sequence",
    )
    .bind(ApiKey::TYPE)
    .bind(tenant)
    .bind(at)
    .fetch_all(pool)
    .await?;
    /// A key folded so far, with when it was issued and revoked.
    struct Folded {
        key: ApiKey,
        issued_at: DateTime<Utc>,
        revoked_at: Option<DateTime<Utc>>,
    }
    let mut keys: BTreeMap<String, Folded> = BTreeMap::new();
    for (key_id, event_type, event_version, payload, recorded_at, transaction_id, position) in rows {
        let schema = Schema {
            aggregate_type: ApiKey::TYPE,
            event_type: &event_type,
            event_version: &event_version,
        };
        let event = upcast::decode(schema, &payload).map_err(|source| ProjectionError::Undecodable {
            cursor: GlobalCursor::new(transaction_id, position),
            event_type,
            source,
        })?;
        let folded = keys.entry(key_id).or_insert_with(|| Folded {
            key: ApiKey::default(),
            issued_at: recorded_at,
            revoked_at: None,
        });
        let was_revoked = folded.key.revoked;
        folded.key.apply(event);
        if folded.key.revoked && !was_revoked {
            folded.revoked_at = Some(recorded_at);
        }
    }
    Ok(keys
        .into_iter()
        .map(|(key_id, folded)| KeyPermission {
            key_id,
            role: folded.key.role.map(|r| r.as_str().to_string()),
            active: folded.key.tenant.is_some() && !folded.key.revoked,
            name: folded.key.name,
            issued_at: folded.issued_at,
            revoked_at: folded.revoked_at,
        })
        .collect())
}
