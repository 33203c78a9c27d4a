//! How far each projection is behind the event log.

use serde::Serialize;
use sqlx::PgPool;

/// One projection's position and distance from the head of the log.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionLag {
    /// The checkpoint's name: a projection's name, or `nats_relay:<stream>`.
    pub name: String,
    /// The checkpoint as `<transaction>-<position>`; `inline` for a projection written in the
    /// transaction of the events it reads, which is never behind.
    pub checkpoint: String,
    /// Committed events not yet applied.
    pub events_behind: i64,
    /// Age of the oldest committed event not yet applied (0 when caught up).
    pub seconds_behind: f64,
    pub checkpoint_updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ProjectionLag {
    /// The lag of an inline projection: none.
    pub fn inline(name: &str) -> Self {
        Self {
            name: name.to_string(),
            checkpoint: "inline".to_string(),
            events_behind: 0,
            seconds_behind: 0.0,
            checkpoint_updated_at: None,
        }
    }
}

/// The lag of the checkpoint called `name` (a reader without a checkpoint yet is at the
/// start of the log).
pub async fn lag(pool: &PgPool, name: &str) -> Result<ProjectionLag, sqlx::Error> {
    let row: (i64, i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "select coalesce(c.transaction_id, 0), coalesce(c.position, 0), c.updated_at
         from (select 1) one left join projection_checkpoint c on c.projection_name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    let (events_behind, seconds_behind): (i64, f64) = sqlx::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(recorded_at))::float8, 0)
         from events where (transaction_id, position) > ($1::bigint::text::xid8, $2)",
    )
    .bind(row.0)
    .bind(row.1)
    .fetch_one(pool)
    .await?;
    Ok(ProjectionLag {
        name: name.to_string(),
        checkpoint: format!("{}-{}", row.0, row.1),
        events_behind,
        seconds_behind: seconds_behind.max(0.0),
        checkpoint_updated_at: row.2,
    })
}
