//! An event as stored, with its place in the global order.

use chrono::{DateTime, Utc};
use domain::position::GlobalCursor;
use domain::upcast::{self, Schema};
use serde::de::DeserializeOwned;

/// The metadata key under which a restored event keeps its place in the log it was first
/// written to (`<transaction id>-<position>`). A restore appends events under the new
/// cluster's transaction ids; what identifies an event or an audit entry uses this place,
/// so it comes out of a restore unchanged.
pub const ORIGINAL_CURSOR_KEY: &str = "original_cursor";

/// One row of the event log.
///
/// Payload and metadata are kept as the JSON text PostgreSQL sent: a projection decodes
/// the payload straight into its event type, and most events are never decoded at all by
/// most projections, so building a generic JSON tree for each would be wasted work.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub cursor: GlobalCursor,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
    pub tenant_id: String,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The payload as the aggregate's event enum, upcast first when it was stored in an
    /// older shape (`domain::upcast`); `payload` itself stays as stored.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        upcast::decode(self.schema(), &self.payload)
    }

    /// Which shape the payload is stored in.
    pub fn schema(&self) -> Schema<'_> {
        Schema {
            aggregate_type: &self.aggregate_type,
            event_type: &self.event_type,
            event_version: &self.event_version,
        }
    }

    /// A metadata value (`actor_name`, `request_id`, …) if present.
    pub fn meta(&self, key: &str) -> Option<String> {
        let metadata: std::collections::HashMap<&str, std::borrow::Cow<'_, str>> =
            serde_json::from_str(&self.metadata).ok()?;
        metadata.get(key).map(|value| value.to_string())
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for StoredEvent {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            cursor: GlobalCursor::new(row.try_get("transaction_id")?, row.try_get("position")?),
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            tenant_id: row.try_get("tenant_id")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}
