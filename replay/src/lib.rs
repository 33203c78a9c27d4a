//! Rebuilding read models from the event log, checking them against it, and building them
//! as of a past point.
//!
//! # Layout
//! - [`schema`]: copies of a projection's tables in a schema of their own, and swapping
//!   them in for the live ones.
//! - [`build`]: applying the log to those copies, in short transactions, up to a [`Point`].
//! - [`verify`]: rebuilding into a scratch schema and comparing with the live tables.
//!
//! [`rebuild`] builds a projection's tables beside the live ones (`aipm_rebuild_<name>`),
//! from the settled log in short transactions, so that reads, commands and every other
//! projection go on meanwhile. It then takes the live tables' locks (and, for a projection
//! with a runner, the projection's lock) in one short transaction, applies the events
//! committed since its last read, and swaps the rebuilt tables in. An inline projection's
//! tables are written by commands in their own transactions: once the locks are held every
//! command that wrote them has committed, and its events are in that tail; a command
//! waiting for them writes the rebuilt tables once they are in. Each waits at most
//! [`LOCK_WAIT`] for the locks, less than PostgreSQL's deadlock timeout, so that a command
//! is never chosen to fail: the rebuild gives way and tries again.
//!
//! [`rebuild_in_place`] is the old way, for a database without room for a second copy: it
//! empties the live tables and applies the log in one transaction, during which reads of
//! them wait and no projection sees events committed after it began.
//!
//! [`rebuild_at`] builds read models as of a past [`Point`] into a schema for inspection;
//! [`verify::verify`] compares a rebuild with the live tables.

pub mod build;
pub mod schema;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::position::GlobalCursor;
use eventlog::Projection;
use indicatif::ProgressStyle;
use projections::global_order::{self, Wanted};
use projections::{ProjectionError, StoredEvent};
use sqlx::PgPool;

pub use build::Point;
pub use indicatif::ProgressBar;
pub use schema::SchemaName;
pub use verify::{verify, Difference, VerifyReport};

use build::Applied;

/// Events applied per batch during an in-place rebuild.
const REBUILD_BATCH: i64 = 10_000;

/// How long the swap waits for the live tables' locks before giving way and trying again.
/// Below `deadlock_timeout` (1 s by default), so that in a deadlock with a command the
/// rebuild times out first and the command goes on.
pub const LOCK_WAIT: Duration = Duration::from_millis(200);
/// How many times the swap tries to take the locks before giving up (the live tables are
/// then left as they were).
const LOCK_ATTEMPTS: u32 = 50;
/// Catching up outside the locks stops once a pass applies fewer events than this, so
/// that the locked tail is short.
const SHORT_TAIL: u64 = 1_000;

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub events: u64,
    pub seconds: f64,
    /// How long the live tables were locked (zero for a build into another schema).
    pub locked_seconds: f64,
    /// Where the time went, phase by phase (a rebuild beside the live tables: building the
    /// copies, finishing them with their other indexes and their statistics, the tail, the
    /// swap), in seconds.
    pub phases: Vec<(&'static str, f64)>,
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

fn progress_bar(projection: &dyn Projection, total: u64, progress: bool) -> ProgressBar {
    let bar = if progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(projection.name());
    bar
}

/// A bar for `projection` sized to the log, hidden without `progress`.
pub async fn log_progress_bar(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: bool,
) -> Result<ProgressBar, sqlx::Error> {
    let total: i64 = if progress {
        sqlx::query_scalar("select count(*) from events")
            .fetch_one(pool)
            .await?
    } else {
        0
    };
    Ok(progress_bar(projection, total.max(0) as u64, progress))
}

fn invalid(message: String) -> ProjectionError {
    ProjectionError::Database(sqlx::Error::Protocol(message))
}

/// Rebuilds `projection` beside its live tables and swaps the result in (see the module
/// documentation); reads and commands go on meanwhile. With `progress`, draws a progress
/// bar on stderr.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: bool,
) -> Result<RebuildReport, ProjectionError> {
    let bar = log_progress_bar(pool, projection, progress).await?;
    let report = rebuild_with(pool, projection, &bar).await;
    bar.finish();
    report
}

/// How many projections [`rebuild_all`] rebuilds at once. Each uses three connections: one
/// reads the log, one writes the copies, one holds the schema.
pub const PARALLEL_REBUILDS: usize = 4;

/// Rebuilds `projections` as [`rebuild`] does, [`PARALLEL_REBUILDS`] at once, each on
/// connections of its own; one's failure leaves the others' results standing.
pub async fn rebuild_all(
    pool: &PgPool,
    projections: Vec<Arc<dyn Projection>>,
    progress: bool,
) -> Vec<(&'static str, Result<RebuildReport, ProjectionError>)> {
    let bars = indicatif::MultiProgress::with_draw_target(if progress {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let mut running = tokio::task::JoinSet::new();
    let turns = Arc::new(tokio::sync::Semaphore::new(PARALLEL_REBUILDS));
    for (index, projection) in projections.into_iter().enumerate() {
        let pool = pool.clone();
        let bars = bars.clone();
        let turns = turns.clone();
        running.spawn(async move {
            let result = async {
                let _turn = turns
                    .acquire()
                    .await
                    .map_err(|e| invalid(format!("cannot wait for a turn: {e}")))?;
                let bar = bars.add(log_progress_bar(&pool, projection.as_ref(), progress).await?);
                let report = rebuild_with(&pool, projection.as_ref(), &bar).await;
                bar.finish();
                report
            }
            .await;
            (index, projection.name(), result)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = running.join_next().await {
        match done {
            Ok(result) => results.push(result),
            Err(error) => results.push((
                usize::MAX,
                "?",
                Err(invalid(format!("a rebuild task failed: {error}"))),
            )),
        }
    }
    results.sort_by_key(|(index, _, _)| *index);
    results
        .into_iter()
        .map(|(_, name, result)| (name, result))
        .collect()
}

async fn rebuild_with(
    pool: &PgPool,
    projection: &dyn Projection,
    bar: &ProgressBar,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let schema = verify::scratch_schema("aipm_rebuild_", projection)?;
    let mut conn = pool.acquire().await?;
    schema::recreate_for(&mut conn, &schema, projection, schema::Durability::Kept).await?;
    let mut phases = Vec::new();
    let mut phase = Instant::now();
    let mut lap = |phases: &mut Vec<(&'static str, f64)>, name: &'static str| {
        phases.push((name, phase.elapsed().as_secs_f64()));
        phase = Instant::now();
    };
    let result = async {
        let mut built =
            build::apply_settled(pool, projection, &schema, Applied::default(), Point::END, bar).await?;
        lap(&mut phases, "build");
        schema::finish_tables(pool, &schema, projection.tables()).await?;
        lap(&mut phases, "finish");
        loop {
            let before = built.events;
            built = build::apply_settled(pool, projection, &schema, built, Point::END, bar).await?;
            if built.events - before < SHORT_TAIL {
                break;
            }
        }
        lap(&mut phases, "tail");
        let (built, locked) = swap(pool, projection, &schema, built).await?;
        lap(&mut phases, "swap");
        Ok::<_, ProjectionError>((built, locked))
    }
    .await;
    let (built, locked) = match result {
        Ok(done) => done,
        Err(error) => {
            schema::drop_schema(&mut conn, &schema).await?;
            return Err(error);
        }
    };
    Ok(RebuildReport {
        events: built.events,
        seconds: started.elapsed().as_secs_f64(),
        locked_seconds: locked.as_secs_f64(),
        phases,
    })
}

/// The swap: under the live tables' locks, applies the events since `built` and puts the
/// rebuilt tables in place of the live ones. Returns how far it got and how long it held
/// the locks.
async fn swap(
    pool: &PgPool,
    projection: &dyn Projection,
    schema: &SchemaName,
    built: Applied,
) -> Result<(Applied, Duration), ProjectionError> {
    let live: Vec<String> = projection
        .tables()
        .iter()
        .map(|t| format!("public.{t}"))
        .collect();
    for attempt in 1..=LOCK_ATTEMPTS {
        let mut tx = eventlog::begin(pool).await?;
        sqlx::query(&format!("set local lock_timeout = {}", LOCK_WAIT.as_millis()))
            .execute(&mut *tx)
            .await?;
        let locked = async {
            if !projection.inline() {
                projections::runner::lock_projection(&mut tx, projection.name()).await?;
            }
            sqlx::query(&format!(
                "lock table {} in access exclusive mode",
                live.join(", ")
            ))
            .execute(&mut *tx)
            .await
        }
        .await;
        match locked {
            Ok(_) => {}
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
                tx.rollback().await?;
                tracing::info!(
                    projection = projection.name(),
                    attempt,
                    "the live tables are busy; trying again"
                );
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        let locked_at = Instant::now();
        schema::search_path(&mut tx, schema).await?;
        // An inline projection's tables reflect every committed event: no writer holds
        // them now. A runner's reflect its checkpoint, which it moves only under the lock
        // held here; the new checkpoint is where the rebuilt tables are.
        let done = build::apply_tail(&mut tx, projection, built, None, projection.inline()).await?;
        if !projection.inline() {
            projections::runner::save_checkpoint(&mut tx, projection.name(), done.cursor).await?;
        }
        schema::swap_in(&mut tx, schema, projection.tables()).await?;
        schema::drop_schema(&mut tx, schema).await?;
        tx.commit().await?;
        return Ok((done, locked_at.elapsed()));
    }
    Err(invalid(format!(
        "{}: could not take the live tables' locks in {LOCK_ATTEMPTS} tries of {} ms; they are unchanged",
        projection.name(),
        LOCK_WAIT.as_millis()
    )))
}

/// Builds `projections`' read models as of `point` into `schema`, leaving the live ones
/// alone. Refuses a schema that holds tables, unless `replace` (which drops it first).
pub async fn rebuild_at(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    point: Point,
    schema: &SchemaName,
    replace: bool,
    progress: bool,
) -> Result<Vec<(&'static str, RebuildReport)>, ProjectionError> {
    let mut conn = pool.acquire().await?;
    match schema::tables_in(&mut conn, schema).await? {
        Some(tables) if tables > 0 && !replace => {
            return Err(invalid(format!(
                "schema {schema} already holds {tables} tables; pass --replace to drop them"
            )))
        }
        Some(_) => schema::drop_schema(&mut conn, schema).await?,
        None => {}
    }
    let owned: Vec<&str> = projections.iter().flat_map(|p| p.tables()).copied().collect();
    let borrowed: Vec<&str> = projections
        .iter()
        .flat_map(|p| p.also_writes())
        .copied()
        .filter(|t| !owned.contains(t))
        .collect();
    let all: Vec<&str> = owned.iter().chain(&borrowed).copied().collect();
    schema::create_tables(&mut conn, schema, &all, schema::Durability::Kept).await?;
    let mut reports = Vec::new();
    for projection in projections {
        let started = Instant::now();
        let bar = log_progress_bar(pool, projection.as_ref(), progress).await?;
        let built =
            build::apply_settled(pool, projection.as_ref(), schema, Applied::default(), point, &bar).await;
        bar.finish();
        let built = match built {
            Ok(built) => built,
            Err(error) => {
                schema::drop_schema(&mut conn, schema).await?;
                return Err(error);
            }
        };
        reports.push((
            projection.name(),
            RebuildReport {
                events: built.events,
                seconds: started.elapsed().as_secs_f64(),
                locked_seconds: 0.0,
                phases: Vec::new(),
            },
        ));
    }
    schema::finish_tables(pool, schema, &owned).await?;
    // The copies of tables no rebuilt projection owns were there only to be written instead
    // of the live ones.
    for table in borrowed {
        sqlx::query(&format!("drop table {schema}.{table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(reports)
}

/// Rebuilds `projection` in its live tables: empties them, resets its checkpoint and applies
/// the whole log, all in one transaction holding the projection's lock, so a half-done
/// rebuild is never visible. While it runs, reads of the tables wait (TRUNCATE locks them)
/// and, because its transaction stays open, no projection sees events committed after it
/// began. For a database without room for [`rebuild`]'s second copy.
pub async fn rebuild_in_place(
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
    let bar = progress_bar(projection, total.max(0) as u64, progress);
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
        Wanted::by(projection),
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
    let seconds = started.elapsed().as_secs_f64();
    Ok(RebuildReport {
        events,
        seconds,
        locked_seconds: seconds,
        phases: Vec::new(),
    })
}

/// Sends the whole log in batches, then an empty batch; stops at the first error. With
/// `committed`, every committed event (see `global_order::read_committed_for`).
async fn read_ahead(
    pool: PgPool,
    wanted: Wanted,
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
            global_order::read_committed_for(&mut conn, cursor, REBUILD_BATCH, wanted).await
        } else {
            global_order::read_for(&mut conn, cursor, REBUILD_BATCH, wanted).await
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
