//! Applying the log to a projection's copies in a schema of their own (see [`crate::schema`]).
//!
//! The bulk is applied in many short transactions, one per batch, each reading the settled
//! log (`global_order::read_for`): nobody else reads the copies, so a half-built state is
//! never seen, and no transaction stays open long enough to hold back the horizon that every
//! other reader of the log waits for. The last events are applied by [`apply_tail`], inside
//! the caller's transaction.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use domain::position::GlobalCursor;
use eventlog::Projection;
use indicatif::ProgressBar;
use projections::global_order::{self, Wanted};
use projections::{ProjectionError, StoredEvent};
use sqlx::{PgConnection, PgPool};

use crate::schema::{self, SchemaName};

/// Events read and applied per batch while building.
const BUILD_BATCH: i64 = 20_000;

/// Where a build stops: the events at or before `cursor` and recorded at or before
/// `instant` (each, when absent, no bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    pub cursor: Option<GlobalCursor>,
    pub instant: Option<DateTime<Utc>>,
}

impl Point {
    /// Every settled event.
    pub const END: Point = Point {
        cursor: None,
        instant: None,
    };

    fn includes(&self, event: &StoredEvent) -> bool {
        self.cursor.is_none_or(|cursor| event.cursor <= cursor)
            && self.instant.is_none_or(|instant| event.recorded_at <= instant)
    }

    fn is_past(&self, cursor: GlobalCursor) -> bool {
        self.cursor.is_some_and(|end| cursor > end)
    }
}

impl FromStr for Point {
    type Err = String;

    /// A global cursor (`<transaction>-<position>`) or an RFC 3339 instant.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(cursor) = text.parse::<GlobalCursor>() {
            return Ok(Point {
                cursor: Some(cursor),
                instant: None,
            });
        }
        match DateTime::parse_from_rfc3339(text) {
            Ok(instant) => Ok(Point {
                cursor: None,
                instant: Some(instant.with_timezone(&Utc)),
            }),
            Err(_) => Err(format!(
                "invalid point {text:?}: expected a cursor <transaction>-<position> or an RFC 3339 instant such as 2026-12-01T12:00:00Z"
            )),
        }
    }
}

/// How far a build got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Applied {
    /// Every settled event at or before it has been read.
    pub cursor: GlobalCursor,
    /// Events applied (those the point includes).
    pub events: u64,
}

/// Applies to `projection`'s copies in `schema` the settled events after `from.cursor` that
/// `point` includes, a batch per transaction; reading and decoding run a batch ahead on a
/// connection of their own, so that the database and this process work at the same time.
pub(crate) async fn apply_settled(
    pool: &PgPool,
    projection: &dyn Projection,
    schema: &SchemaName,
    from: Applied,
    point: Point,
    bar: &ProgressBar,
) -> Result<Applied, ProjectionError> {
    let (batches, mut incoming) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_ahead(
        pool.clone(),
        from.cursor,
        point,
        Wanted::by(projection),
        batches,
    ));
    let mut applied = from;
    let result = async {
        while let Some(batch) = incoming.recv().await {
            let (events, read_up_to) = batch?;
            if !events.is_empty() {
                let mut tx = eventlog::begin(pool).await?;
                schema::search_path(&mut tx, schema).await?;
                projection.apply(&mut tx, &events).await?;
                tx.commit().await?;
            }
            applied.cursor = read_up_to;
            applied.events += events.len() as u64;
            bar.inc(events.len() as u64);
        }
        Ok(applied)
    }
    .await;
    reader.abort();
    result
}

type Batch = Result<(Vec<StoredEvent>, GlobalCursor), sqlx::Error>;

/// Sends the settled log after `after` in batches (the events `point` includes, and how far
/// each batch read), and stops at its end, past the point, or at the first error.
async fn read_ahead(
    pool: PgPool,
    mut after: GlobalCursor,
    point: Point,
    wanted: Wanted,
    batches: tokio::sync::mpsc::Sender<Batch>,
) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(error) => {
            let _ = batches.send(Err(error)).await;
            return;
        }
    };
    loop {
        let read = global_order::read_for(&mut conn, after, BUILD_BATCH, wanted).await;
        let (batch, done) = match read {
            Ok(events) => {
                let full = events.len() as i64 == BUILD_BATCH;
                let (events, past) = within(events, point);
                if let Some(last) = events.last() {
                    after = last.cursor.max(after);
                }
                let done = !full || past;
                let events = events.into_iter().filter(|e| point.includes(e)).collect();
                (Ok((events, after)), done)
            }
            Err(error) => (Err(error), true),
        };
        if batches.send(batch).await.is_err() || done {
            return;
        }
    }
}

/// The events at or before the point's cursor, and whether any were past it.
fn within(mut events: Vec<StoredEvent>, point: Point) -> (Vec<StoredEvent>, bool) {
    let kept = events.iter().take_while(|e| !point.is_past(e.cursor)).count();
    let past = kept < events.len();
    events.truncate(kept);
    (events, past)
}

/// Applies, inside `tx` (whose search path is already the schema's), the events after
/// `from.cursor` up to `until` (all when `None`): every committed one with `committed`, else
/// the settled ones. Returns how far it got.
pub(crate) async fn apply_tail(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    from: Applied,
    until: Option<GlobalCursor>,
    committed: bool,
) -> Result<Applied, ProjectionError> {
    let point = Point {
        cursor: until,
        instant: None,
    };
    let mut applied = from;
    let wanted = Wanted::by(projection);
    loop {
        let read = if committed {
            global_order::read_committed_for(tx, applied.cursor, BUILD_BATCH, wanted).await?
        } else {
            global_order::read_for(tx, applied.cursor, BUILD_BATCH, wanted).await?
        };
        let full = read.len() as i64 == BUILD_BATCH;
        let (events, past) = within(read, point);
        let Some(last) = events.last().map(|e| e.cursor) else {
            return Ok(applied);
        };
        projection.apply(tx, &events).await?;
        applied.cursor = last;
        applied.events += events.len() as u64;
        if !full || past {
            return Ok(applied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_a_cursor_or_an_instant() {
        assert_eq!(
            "42-7".parse::<Point>().unwrap().cursor,
            Some(GlobalCursor::new(42, 7))
        );
        let instant = "2026-12-01T12:00:00+01:00".parse::<Point>().unwrap();
        assert_eq!(instant.cursor, None);
        assert_eq!(instant.instant.unwrap().to_rfc3339(), "2026-12-01T11:00:00+00:00");
        let error = "yesterday".parse::<Point>().unwrap_err();
        assert!(error.contains("RFC 3339"), "{error}");
    }
}
