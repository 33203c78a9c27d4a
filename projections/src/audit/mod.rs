//! `audit_entry`: the tamper-evident audit log. One entry per event, in the global order,
//! hash-chained per tenant.
//!
//! An entry is the JSON object of [`AuditEntry`]: where the event stands (`tenant`, its
//! place in the tenant's chain `sequence`, the global `cursor`, `recorded_at`), who caused
//! it (`actor_key_id`, `actor_name`, `request_id`, `client_addr`, `user_agent`, `reason`,
//! and the whole `metadata`), what it is (`aggregate_type`, `aggregate_id`,
//! `aggregate_version`, `event_type`, `event_version`, `payload`) and what it changed
//! (`changes`). Entries are chained per tenant:
//!
//! ```text
//! hash_0 = "0000…0000" (64 zeros)
//! hash_n = hex(SHA-256(hash_{n-1} || canonical_json(entry_n)))
//! ```
//!
//! where `hash_{n-1}` is the 64 lower-case hex characters and `canonical_json` is RFC 8785
//! ([`crate::canonical`]); both are fed to SHA-256 as UTF-8 bytes.
//!
//! `changes` comes from folding the domain aggregates: the projection keeps each
//! aggregate's state (`audit_aggregate_state`), applies the event with the aggregate's own
//! `apply`, and records every top-level field of the serialised state that differs, as
//! `{"field": {"before": …, "after": …}}`. An aggregate's first event is compared with its
//! empty (`Default`) state. Event types this build cannot fold or decode get `null`.
//!
//! The same functions build the entries here and in [`verify`], which recomputes the chain
//! from the event log and compares it with the table, and with the [`anchor`]s: signed
//! chain heads kept outside the database. [`queries`] reads the entries; [`permissions`]
//! folds the key events into who held which role at an instant.

pub mod anchor;
pub mod permissions;
pub mod queries;
pub mod verify;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use domain::access::{ApiKey, Tenant};
use domain::approval::{ChangeRequest, Protection};
use domain::audit::ReadRecord;
use domain::budget::Budget;
use domain::category::PromptCategory;
use domain::config::ConfigEntry;
use domain::conversation::Conversation;
use domain::experiment::Experiment;
use domain::export::ExportJob;
use domain::flag::Flag;
use domain::health::ProviderHealth;
use domain::incident::Incident;
use domain::model::Model;
use domain::position::GlobalCursor;
use domain::prompt::Prompt;
use domain::provider::Provider;
use domain::upcast;
use serde::de::Error as _;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use eventlog::StoredEvent;
use eventlog::{Projection, ProjectionError};

/// The projection's name (its checkpoint's key).
pub const NAME: &str = "audit";

/// `prev_hash` of a tenant's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Columns of `audit_entry` in the order [`ChainedEntry`] reads them; JSON columns come as
/// text so that they are parsed exactly as the event log's are.
pub const ENTRY_COLUMNS: &str =
    "tenant_id, chain_seq, transaction_id, position, origin_cursor, recorded_at, actor_key_id, \
     actor_name, request_id, client_addr, user_agent, reason, aggregate_type, aggregate_id, \
     aggregate_version, event_type, event_version, metadata::text as metadata, payload::text as payload, \
     changes::text as changes, prev_hash, hash";

/// The fields of an entry, in the order of the CSV export.
pub const ENTRY_FIELDS: [&str; 20] = [
    "tenant",
    "sequence",
    "cursor",
    "recorded_at",
    "actor_key_id",
    "actor_name",
    "request_id",
    "client_addr",
    "user_agent",
    "reason",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "event_type",
    "event_version",
    "metadata",
    "payload",
    "changes",
    "prev_hash",
    "hash",
];

/// One event as the audit log records it; what its hash covers.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub tenant: String,
    pub sequence: i64,
    /// The event's place in this database's log.
    pub cursor: GlobalCursor,
    /// For a restored event, its place in the log it was first written to.
    pub origin: Option<GlobalCursor>,
    pub recorded_at: DateTime<Utc>,
    pub actor_key_id: Option<String>,
    pub actor_name: Option<String>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub reason: Option<String>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub aggregate_version: i64,
    pub event_type: String,
    pub event_version: String,
    pub metadata: Value,
    pub payload: Value,
    pub changes: Value,
}

impl AuditEntry {
    /// The entry of `event`, the `sequence`-th of its tenant.
    ///
    /// A restored event's original place is taken out of the metadata into `origin`, so that
    /// the entry, and its hash, are those the event had before the restore.
    pub fn from_event(event: &StoredEvent, sequence: i64, changes: Value) -> Self {
        let mut metadata = parse_json(&event.metadata);
        let origin = metadata
            .as_object_mut()
            .and_then(|object| object.remove(eventlog::ORIGINAL_CURSOR_KEY))
            .and_then(|cursor| cursor.as_str().and_then(|text| text.parse().ok()));
        let meta = |key: &str| metadata.get(key).and_then(Value::as_str).map(str::to_string);
        Self {
            tenant: event.tenant_id.clone(),
            sequence,
            cursor: event.cursor,
            origin,
            recorded_at: event.recorded_at,
            actor_key_id: meta("actor_key_id"),
            actor_name: meta("actor_name"),
            request_id: meta("request_id"),
            client_addr: meta("client_addr"),
            user_agent: meta("user_agent"),
            reason: meta("reason"),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            aggregate_version: event.sequence,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: parse_json(&event.payload),
            changes,
            metadata,
        }
    }

    /// The place the entry states and its hash covers: where the event was first written
    /// (a restore does not change it).
    pub fn stated_cursor(&self) -> GlobalCursor {
        self.origin.unwrap_or(self.cursor)
    }

    /// The entry as the JSON object that is hashed (and exported).
    pub fn to_json(&self) -> Map<String, Value> {
        let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::String);
        let mut object = Map::new();
        object.insert("tenant".into(), Value::String(self.tenant.clone()));
        object.insert("sequence".into(), Value::from(self.sequence));
        object.insert("cursor".into(), Value::String(self.stated_cursor().to_string()));
        object.insert("recorded_at".into(), Value::String(format_time(self.recorded_at)));
        object.insert("actor_key_id".into(), text(&self.actor_key_id));
        object.insert("actor_name".into(), text(&self.actor_name));
        object.insert("request_id".into(), text(&self.request_id));
        object.insert("client_addr".into(), text(&self.client_addr));
        object.insert("user_agent".into(), text(&self.user_agent));
        object.insert("reason".into(), text(&self.reason));
        object.insert(
            "aggregate_type".into(),
            Value::String(self.aggregate_type.clone()),
        );
        object.insert("aggregate_id".into(), Value::String(self.aggregate_id.clone()));
        object.insert("aggregate_version".into(), Value::from(self.aggregate_version));
        object.insert("event_type".into(), Value::String(self.event_type.clone()));
        object.insert("event_version".into(), Value::String(self.event_version.clone()));
        object.insert("metadata".into(), self.metadata.clone());
        object.insert("payload".into(), self.payload.clone());
        object.insert("changes".into(), self.changes.clone());
        object
    }

    /// `canonical_json(entry)`: the exact text the chain hashes.
    pub fn canonical_json(&self) -> String {
        crate::canonical::to_string(&Value::Object(self.to_json()))
    }

    /// `hash_n` of this entry chained after `prev_hash`.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(self.canonical_json().as_bytes());
        hex::encode(hasher.finalize())
    }

    /// Which aggregate version this entry records.
    pub fn identity(&self) -> (&str, &str, i64) {
        (&self.aggregate_type, &self.aggregate_id, self.aggregate_version)
    }
}

/// Times as the entry writes them: RFC 3339 in UTC with microseconds, e.g.
/// `2026-11-27T09:30:00.123456Z`.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Stored JSON as a value. PostgreSQL only stores valid JSON; a number too large for a
/// double is kept as its text so that parsing can never fail, here or in verification.
fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// An entry with its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainedEntry {
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

impl ChainedEntry {
    /// The entry's fields plus `prev_hash` and `hash`: what the API returns for an entry.
    /// Dropping those two keys and canonicalising the rest gives the hashed text.
    pub fn to_json(&self) -> Value {
        let mut object = self.entry.to_json();
        object.insert("prev_hash".into(), Value::String(self.prev_hash.clone()));
        object.insert("hash".into(), Value::String(self.hash.clone()));
        Value::Object(object)
    }

    /// The fields in [`ENTRY_FIELDS`] order, as text (JSON values as compact JSON).
    pub fn csv_fields(&self) -> Vec<Option<String>> {
        let e = &self.entry;
        let json = |value: &Value| (!value.is_null()).then(|| value.to_string());
        vec![
            Some(e.tenant.clone()),
            Some(e.sequence.to_string()),
            Some(e.stated_cursor().to_string()),
            Some(format_time(e.recorded_at)),
            e.actor_key_id.clone(),
            e.actor_name.clone(),
            e.request_id.clone(),
            e.client_addr.clone(),
            e.user_agent.clone(),
            e.reason.clone(),
            Some(e.aggregate_type.clone()),
            Some(e.aggregate_id.clone()),
            Some(e.aggregate_version.to_string()),
            Some(e.event_type.clone()),
            Some(e.event_version.clone()),
            json(&e.metadata),
            json(&e.payload),
            json(&e.changes),
            Some(self.prev_hash.clone()),
            Some(self.hash.clone()),
        ]
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ChainedEntry {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let changes: Option<String> = row.try_get("changes")?;
        Ok(Self {
            entry: AuditEntry {
                tenant: row.try_get("tenant_id")?,
                sequence: row.try_get("chain_seq")?,
                cursor: GlobalCursor::new(row.try_get("transaction_id")?, row.try_get("position")?),
                origin: row
                    .try_get::<Option<String>, _>("origin_cursor")?
                    .and_then(|cursor| cursor.parse().ok()),
                recorded_at: row.try_get("recorded_at")?,
                actor_key_id: row.try_get("actor_key_id")?,
                actor_name: row.try_get("actor_name")?,
                request_id: row.try_get("request_id")?,
                client_addr: row.try_get("client_addr")?,
                user_agent: row.try_get("user_agent")?,
                reason: row.try_get("reason")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                aggregate_version: row.try_get("aggregate_version")?,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                metadata: parse_json(row.try_get("metadata")?),
                payload: parse_json(row.try_get("payload")?),
                changes: changes.as_deref().map_or(Value::Null, parse_json),
            },
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }
}

/// The last entry of a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainHead {
    pub sequence: i64,
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        Self {
            sequence: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// The entry of `event` appended to the chain ending at `head`, which then ends at it.
///
/// `state` is the aggregate's folded state (serialised JSON) before the event, `None` if
/// the aggregate has not been seen; it is replaced by the state after. Fails only when a
/// stored `state` cannot be read back.
pub(crate) fn chain_event(
    event: &StoredEvent,
    head: &mut ChainHead,
    state: &mut Option<String>,
) -> Result<ChainedEntry, serde_json::Error> {
    // An event of a newer version than this build reads stops the chain here: recorded as
    // undecodable, its entry would differ from the one the newer build computes.
    upcast::check_known(event.schema()).map_err(serde_json::Error::custom)?;
    // Folded in this build's shape, so that an old event changes what it changed when its
    // entry was written.
    let payload = current_shape(event);
    let changes = match fold(&event.aggregate_type, state.as_deref(), &payload)? {
        Fold::Folded { after, changes } => {
            *state = Some(after);
            changes
        }
        Fold::Unknown | Fold::Undecodable => Value::Null,
    };
    let entry = AuditEntry::from_event(event, head.sequence + 1, changes);
    let hash = entry.chain_hash(&head.hash);
    let prev_hash = std::mem::replace(&mut head.hash, hash.clone());
    head.sequence = entry.sequence;
    Ok(ChainedEntry {
        entry,
        prev_hash,
        hash,
    })
}

enum Fold {
    Folded {
        after: String,
        changes: Value,
    },
    /// Not an aggregate type of this build.
    Unknown,
    /// The payload is not an event of its aggregate type.
    Undecodable,
}

/// The payload of `event` upcast to this build's shape (`domain::upcast`); as stored when
/// it is current, or cannot be upcast (it then folds as undecodable).
fn current_shape(event: &StoredEvent) -> Cow<'_, str> {
    if !upcast::is_outdated(event.schema()) {
        return Cow::Borrowed(&event.payload);
    }
    serde_json::from_str(&event.payload)
        .ok()
        .and_then(|payload| upcast::upcast(event.schema(), payload).ok())
        .map_or(Cow::Borrowed(&event.payload), |(payload, _)| {
            Cow::Owned(payload.to_string())
        })
}

/// Applies `payload` to `state` with the aggregate's own `apply`. Every aggregate type
/// whose changes the audit log shows is listed here.
fn fold(aggregate_type: &str, state: Option<&str>, payload: &str) -> Result<Fold, serde_json::Error> {
    match aggregate_type {
        Prompt::TYPE => fold_as::<Prompt>(state, payload),
        PromptCategory::TYPE => fold_as::<PromptCategory>(state, payload),
        ApiKey::TYPE => fold_as::<ApiKey>(state, payload),
        Tenant::TYPE => fold_as::<Tenant>(state, payload),
        ReadRecord::TYPE => fold_as::<ReadRecord>(state, payload),
        Provider::TYPE => fold_as::<Provider>(state, payload),
        Model::TYPE => fold_as::<Model>(state, payload),
        ConfigEntry::TYPE => fold_as::<ConfigEntry>(state, payload),
        Flag::TYPE => fold_as::<Flag>(state, payload),
        Protection::TYPE => fold_as::<Protection>(state, payload),
        ChangeRequest::TYPE => fold_as::<ChangeRequest>(state, payload),
        Budget::TYPE => fold_as::<Budget>(state, payload),
        ProviderHealth::TYPE => fold_as::<ProviderHealth>(state, payload),
        Incident::TYPE => fold_as::<Incident>(state, payload),
        Experiment::TYPE => fold_as::<Experiment>(state, payload),
        ExportJob::TYPE => fold_as::<ExportJob>(state, payload),
        Conversation::TYPE => fold_as::<Conversation>(state, payload),
        _ => Ok(Fold::Unknown),
    }
}

fn fold_as<A: Aggregate>(state: Option<&str>, payload: &str) -> Result<Fold, serde_json::Error> {
    let mut aggregate: A = match state {
        Some(state) => serde_json::from_str(state)?,
        None => A::default(),
    };
    let Ok(event) = serde_json::from_str::<A::Event>(payload) else {
        return Ok(Fold::Undecodable);
    };
    let before = serde_json::to_value(&aggregate)?;
    aggregate.apply(event);
    let after = serde_json::to_value(&aggregate)?;
    let changes = diff(&before, &after);
    Ok(Fold::Folded {
        after: after.to_string(),
        changes,
    })
}

/// `{"field": {"before": …, "after": …}}` for each top-level field that differs.
fn diff(before: &Value, after: &Value) -> Value {
    let empty = Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let fields: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changes = Map::new();
    for field in fields {
        let (old, new) = (before.get(field), after.get(field));
        if old != new {
            let mut change = Map::new();
            change.insert("before".into(), old.cloned().unwrap_or(Value::Null));
            change.insert("after".into(), new.cloned().unwrap_or(Value::Null));
            changes.insert(field.clone(), Value::Object(change));
        }
    }
    Value::Object(changes)
}

/// Writes the audit log. Reads every event, with a runner: commands do not wait for it
/// (readers of the audit log wait instead), so it adds nothing to a command's response time.
pub struct AuditProjection;

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_entry", "audit_aggregate_state"]
    }

    /// Readers of the audit log wait for it anyway; twenty milliseconds gather the events
    /// of concurrent commands into one batch.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }

    /// Folds the batch in memory from the heads of the chains and the aggregate states it
    /// touches (one query each), then writes the entries with COPY and the states with one
    /// upsert.
    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut heads = load_heads(tx, events).await?;
        let mut states = load_states(tx, events).await?;
        // The aggregates whose state changed, with the version they reached.
        let mut touched: HashMap<(String, String), i64> = HashMap::new();
        let mut copy_text = String::with_capacity(1024 * events.len());
        for event in events {
            let head = heads
                .entry(event.tenant_id.clone())
                .or_insert_with(ChainHead::genesis);
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let state = states.entry(key.clone()).or_default();
            let chained =
                chain_event(event, head, state).map_err(|e| ProjectionError::undecodable(event, e))?;
            if state.is_some() {
                touched.insert(key, event.sequence);
            }
            push_copy_row(&mut copy_text, &chained);
        }
        let mut copy = tx
            .copy_in_raw(
                "copy audit_entry (tenant_id, chain_seq, transaction_id, position, origin_cursor, recorded_at, actor_key_id,
                                   actor_name, request_id, client_addr, user_agent, reason, aggregate_type,
                                   aggregate_id, aggregate_version, event_type, event_version, metadata,
                                   payload, changes, prev_hash, hash) from stdin (format csv)",
            )
            .await?;
        copy.send(copy_text.as_bytes()).await?;
        copy.finish().await?;

        let mut kinds = Vec::with_capacity(touched.len());
        let mut ids = Vec::with_capacity(touched.len());
        let mut sequences = Vec::with_capacity(touched.len());
        let mut texts = Vec::with_capacity(touched.len());
        for (key, version) in touched {
            let Some(Some(state)) = states.remove(&key) else {
                continue;
            };
            sequences.push(version);
            kinds.push(key.0);
            ids.push(key.1);
            texts.push(state);
        }
        if !kinds.is_empty() {
            sqlx::query(
                "insert into audit_aggregate_state (aggregate_type, aggregate_id, version, state)
                 select t, i, v, s::jsonb from unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) as r(t, i, v, s)
                 on conflict (aggregate_type, aggregate_id) do update
                 set version = excluded.version, state = excluded.state",
            )
            .bind(&kinds)
            .bind(&ids)
            .bind(&sequences)
            .bind(&texts)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// The head of each chain the batch extends.
async fn load_heads(
    tx: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<HashMap<String, ChainHead>, sqlx::Error> {
    let tenants: Vec<&str> = events
        .iter()
        .map(|e| e.tenant_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "select t.tenant_id, h.chain_seq, h.hash
         from unnest($1::text[]) as t(tenant_id)
         join lateral (select chain_seq, hash from audit_entry a where a.tenant_id = t.tenant_id
                       order by chain_seq desc limit 1) h on true",
    )
    .bind(&tenants)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, sequence, hash)| (tenant, ChainHead { sequence, hash }))
        .collect())
}

/// The folded state of each aggregate the batch touches.
async fn load_states(
    tx: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<HashMap<(String, String), Option<String>>, sqlx::Error> {
    let keys: HashSet<(&str, &str)> = events
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str()))
        .collect();
    let (kinds, ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "select s.aggregate_type, s.aggregate_id, s.state::text
         from unnest($1::text[], $2::text[]) as wanted(aggregate_type, aggregate_id)
         join audit_aggregate_state s
           on s.aggregate_type = wanted.aggregate_type and s.aggregate_id = wanted.aggregate_id",
    )
    .bind(&kinds)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, id, state)| ((kind, id), Some(state)))
        .collect())
}

/// One `audit_entry` row for COPY, columns as in the COPY statement.
fn push_copy_row(out: &mut String, chained: &ChainedEntry) {
    let fields = chained.csv_fields();
    // CSV export order is the entry's; COPY takes this log's cursor as two columns and the
    // restored event's original one apart.
    let cursor = chained.entry.cursor;
    let (transaction_id, position) = (cursor.transaction_id.to_string(), cursor.position.to_string());
    let origin = chained.entry.origin.map(|origin| origin.to_string());
    let row = [
        fields[0].as_deref(),
        fields[1].as_deref(),
        Some(transaction_id.as_str()),
        Some(position.as_str()),
        origin.as_deref(),
    ]
    .into_iter()
    .chain(fields[3..].iter().map(Option::as_deref));
    crate::csv::push_record(out, row);
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn stored(aggregate_id: &str, sequence: i64, payload: &str) -> StoredEvent {
        StoredEvent {
            cursor: GlobalCursor::new(900, sequence),
            aggregate_type: "prompt".into(),
            aggregate_id: aggregate_id.into(),
            sequence,
            event_type: payload.split('"').nth(1).unwrap_or_default().into(),
            event_version: "1.0.0".into(),
            payload: payload.into(),
            metadata: r#"{"actor_name":"ci","actor_key_id":"k-1","request_id":"r-9","tenant":"acme"}"#.into(),
            tenant_id: "acme".into(),
            recorded_at: Utc.with_ymd_and_hms(2026, 11, 27, 9, 30, 0).unwrap(),
        }
    }

    const CREATED: &str = r#"{"PromptCreated":{"tenant":"acme","name":"greeting","category":null,"description":"","tags":["a"]}}"#;

    #[test]
    fn an_entry_records_the_fields_its_event_changed() {
        let mut head = ChainHead::genesis();
        let mut state = None;
        let first = chain_event(&stored("p-1", 1, CREATED), &mut head, &mut state).unwrap();
        assert_eq!(
            first.entry.changes["name"],
            json!({ "before": "", "after": "greeting" })
        );
        assert_eq!(
            first.entry.changes["tags"],
            json!({ "before": [], "after": ["a"] })
        );
        assert!(first.entry.changes.get("archived").is_none());

        let renamed = r#"{"PromptMetadataUpdated":{"name":"welcome","description":""}}"#;
        let second = chain_event(&stored("p-1", 2, renamed), &mut head, &mut state).unwrap();
        assert_eq!(
            second.entry.changes,
            json!({ "name": { "before": "greeting", "after": "welcome" } })
        );
        assert_eq!(second.entry.sequence, 2);
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(
            head,
            ChainHead {
                sequence: 2,
                hash: second.hash.clone()
            }
        );
    }

    #[test]
    fn the_hash_is_sha256_of_the_previous_hash_and_the_canonical_entry() {
        let mut head = ChainHead::genesis();
        let chained = chain_event(&stored("p-1", 1, CREATED), &mut head, &mut None).unwrap();
        assert_eq!(chained.prev_hash, GENESIS_HASH);
        let text = chained.entry.canonical_json();
        assert!(
            text.starts_with(r#"{"actor_key_id":"k-1","actor_name":"ci","aggregate_id":"p-1","#),
            "{text}"
        );
        assert!(
            text.contains(r#""cursor":"900-1","event_type":"PromptCreated""#),
            "{text}"
        );
        assert!(
            text.contains(r#""recorded_at":"2026-11-27T09:30:00.000000Z""#),
            "{text}"
        );
        let expected = hex::encode(Sha256::digest(format!("{GENESIS_HASH}{text}").as_bytes()));
        assert_eq!(chained.hash, expected);
        // The exported form minus the two hashes is the hashed entry.
        let mut exported = chained.to_json();
        let object = exported.as_object_mut().unwrap();
        object.remove("prev_hash");
        object.remove("hash");
        assert_eq!(crate::canonical::to_string(&exported), text);
    }

    #[test]
    fn an_event_of_an_older_shape_is_folded_upcast_and_recorded_as_stored() {
        // `PromptVersionPublished` 1.0.0 (`model` as text), as `stored` gives it.
        let published = r#"{"PromptVersionPublished":{"model":"openai/gpt-4o-mini","params":null,"message":"","version":1,"template":"Hi","variables":[]}}"#;
        let mut head = ChainHead::genesis();
        let mut state = None;
        chain_event(&stored("p-1", 1, CREATED), &mut head, &mut state).unwrap();
        let chained = chain_event(&stored("p-1", 2, published), &mut head, &mut state).unwrap();
        assert_eq!(
            chained.entry.changes,
            json!({"latest_version": {"before": 0, "after": 1}})
        );
        assert_eq!(chained.entry.event_version, "1.0.0");
        assert_eq!(
            chained.entry.payload["PromptVersionPublished"]["model"],
            "openai/gpt-4o-mini"
        );
    }

    #[test]
    fn an_event_of_a_newer_version_than_this_build_reads_stops_the_chain() {
        let mut head = ChainHead::genesis();
        let mut state = None;
        chain_event(&stored("p-1", 1, CREATED), &mut head, &mut state).unwrap();
        let before = (head.sequence, head.hash.clone(), state.clone());
        let mut newer = stored("p-1", 2, r#"{"PromptVersionPublished":{"version":1}}"#);
        newer.event_version = "3.0.0".into();
        let error = chain_event(&newer, &mut head, &mut state).unwrap_err();
        assert!(error.to_string().contains("a newer aipm wrote it"), "{error}");
        assert_eq!((head.sequence, head.hash, state), before);
    }

    #[test]
    fn events_that_cannot_be_folded_are_recorded_without_changes() {
        let mut head = ChainHead::genesis();
        let mut state = None;
        let garbage = chain_event(&stored("p-1", 1, r#"{"Nonsense":1}"#), &mut head, &mut state).unwrap();
        assert_eq!(garbage.entry.changes, Value::Null);
        assert!(state.is_none());
        let mut other = stored("m-1", 2, r#"{"ModelAdded":{}}"#);
        other.aggregate_type = "model".into();
        let unknown = chain_event(&other, &mut head, &mut state).unwrap();
        assert_eq!(unknown.entry.changes, Value::Null);
        assert_eq!(unknown.entry.sequence, 2);
    }

    #[test]
    fn a_restored_event_states_and_hashes_its_original_cursor_not_its_new_one() {
        let original = stored("p-1", 1, CREATED);
        let mut restored = original.clone();
        restored.cursor = GlobalCursor::new(4, 1);
        restored.metadata = restored
            .metadata
            .replacen('{', r#"{"original_cursor":"900-1","#, 1);
        let chain =
            |event: &StoredEvent| chain_event(event, &mut ChainHead::genesis(), &mut None).expect("chained");
        let (before, after) = (chain(&original), chain(&restored));
        assert_eq!(after.entry.cursor, GlobalCursor::new(4, 1));
        assert_eq!(after.entry.origin, Some(GlobalCursor::new(900, 1)));
        assert_eq!(after.entry.metadata, before.entry.metadata);
        assert_eq!(after.to_json(), before.to_json());
        assert_eq!(after.hash, before.hash);
    }
}
