//! Rebuilding read models from the event log.
//!
//! A rebuild empties a projection's tables, resets its checkpoint and applies the whole
//! log again, all in one transaction holding the projection's lock, so a half-done rebuild
//! is never visible and a running server's runner waits rather than interleaving. Commands
//! that write an inline projection's tables wait for its rebuild in the same way.
//!
//! The cost of that simplicity: while it runs, reads of the rebuilt tables wait (TRUNCATE
//! locks them) and, because its transaction stays open, no projection on the same
//! PostgreSQL server sees events committed after it began until it commits. Rebuilding into
//! shadow tables and swapping them in would avoid both.

use std::time::Instant;

use domain::position::GlobalCursor;
use eventlog::Projection;
use indicatif::{ProgressBar, ProgressStyle};
use projections::{ProjectionError, StoredEvent};
use sqlx::PgPool;

/// Events applied per batch during a rebuild.
const REBUILD_BATCH: i64 = 10_000;

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub events: u64,
    pub seconds: f64,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Rebuilds `projection` from the start of the log. With `progress`, draws a progress bar
/// on stderr.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: bool,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let mut tx = eventlog::begin(pool).await?;
    projections::runner::lock_projection(&mut tx, projection.name()).await?;
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&mut *tx)
        .await?;
    let bar = if progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(projection.name());
    for table in projection.tables() {
        sqlx::query(&format!("truncate table {table}"))
            .execute(&mut *tx)
            .await?;
    }
    // Reading and decoding the log runs on its own connection, a batch ahead of applying,
    // so that both cores work. For a projection with a runner it sees only events of
    // transactions older than this one, and the checkpoint saved below is the last event
    // applied: the runner goes on from there once the rebuild commits. An inline
    // projection has no runner to go on: the emptied tables stay locked until the commit,
    // so every event written with them is committed now and read, or waits for the commit.
    let (batches, mut incoming) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_ahead(
        pool.clone(),
        projection.aggregate_types(),
        projection.inline(),
        batches,
    ));
    let mut cursor = GlobalCursor::START;
    let mut events = 0u64;
    while let Some(batch) = incoming.recv().await {
        let batch: Vec<StoredEvent> = batch?;
        let Some(last) = batch.last().map(|e| e.cursor) else {
            break;
        };
        projection.apply(&mut tx, &batch).await?;
        events += batch.len() as u64;
        bar.inc(batch.len() as u64);
        cursor = last;
    }
    reader.abort();
    if !projection.inline() {
        projections::runner::save_checkpoint(&mut tx, projection.name(), cursor).await?;
    }
    tx.commit().await?;
    bar.finish();
    Ok(RebuildReport {
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Sends the whole log in batches, then an empty batch; stops at the first error. With
/// `committed`, every committed event (see `global_order::read_committed_for`).
async fn read_ahead(
    pool: PgPool,
    aggregate_types: Option<&'static [&'static str]>,
    committed: bool,
    batches: tokio::sync::mpsc::Sender<Result<Vec<StoredEvent>, sqlx::Error>>,
) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(error) => {
            let _ = batches.send(Err(error)).await;
            return;
        }
    };
    let mut cursor = GlobalCursor::START;
    loop {
        let batch = if committed {
            projections::global_order::read_committed_for(&mut conn, cursor, REBUILD_BATCH, aggregate_types)
                .await
        } else {
            projections::global_order::read_for(&mut conn, cursor, REBUILD_BATCH, aggregate_types).await
        };
        let done = match &batch {
            Ok(events) => match events.last() {
                Some(last) => {
                    cursor = last.cursor;
                    false
                }
                None => true,
            },
            Err(_) => true,
        };
        if batches.send(batch).await.is_err() || done {
            return;
        }
    }
}
