//! An aggregate's history: its events straight from the log, with who made each change,
//! when, why and from where. Every capability's `…/history` route reads it.

use chrono::{DateTime, Utc};
use domain::position::GlobalCursor;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::page::Page;

/// One event of an aggregate with its metadata.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// The event's number within its aggregate, from 1.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    /// The event's place in the global order.
    pub cursor: String,
    /// The key that made the change: `{key_id, name}`.
    pub actor: Value,
    pub request_id: Option<String>,
    pub reason: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// What caused the change, when something other than a request did: the bulk job,
    /// change request or schedule whose id this is.
    pub causation: Option<String>,
    /// The event's fields.
    pub data: Value,
}

type HistoryRow = (i64, String, String, DateTime<Utc>, i64, i64, Value, Value);

/// A page of the events of `aggregate_type`/`aggregate_id` in `tenant` after sequence
/// `after`, oldest first. An aggregate of another tenant has no events here.
pub async fn events(
    pool: &PgPool,
    tenant: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Page<HistoryEntry, i64>> {
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "select sequence, event_type, event_version, recorded_at, transaction_id::text::bigint,
                position, metadata, payload
         from events
         where aggregate_type = $1 and aggregate_id = $2 and tenant_id = $3 and sequence > $4
         order by sequence limit $5",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(tenant)
    .bind(after)
    .bind(Page::<HistoryEntry, i64>::fetch_size(limit))
    .fetch_all(pool)
    .await?;
    let entries = rows.into_iter().map(entry).collect();
    Ok(Page::from_rows(entries, limit, |e: &HistoryEntry| e.sequence))
}

fn entry(row: HistoryRow) -> HistoryEntry {
    let (sequence, event_type, event_version, recorded_at, transaction_id, position, metadata, payload) = row;
    let meta = |key: &str| metadata.get(key).and_then(Value::as_str).map(str::to_string);
    // Stored payloads are tagged with the variant name, which `event_type` already says.
    let data = payload.get(&event_type).cloned().unwrap_or_else(|| json!({}));
    HistoryEntry {
        sequence,
        recorded_at,
        cursor: GlobalCursor::new(transaction_id, position).to_string(),
        actor: json!({ "key_id": meta("actor_key_id"), "name": meta("actor_name") }),
        request_id: meta("request_id"),
        reason: meta("reason"),
        client_addr: meta("client_addr"),
        user_agent: meta("user_agent"),
        causation: meta("causation_id"),
        event_type,
        event_version,
        data,
    }
}

/// The aggregate's version after the last event a command with `request_id` recorded on
/// it, if one did: how a resumed bulk job finds out whether an item it was applying when
/// its process died was applied.
pub async fn version_after_request(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    request_id: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "select max(sequence) from events
         where aggregate_type = $1 and aggregate_id = $2 and metadata ->> 'request_id' = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(request_id)
    .fetch_one(pool)
    .await
}
