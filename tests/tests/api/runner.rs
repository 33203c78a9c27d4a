//! Restart safety of the projection runner: however runners are killed, and however many
//! run at once, every event lands in a projection exactly once and its checkpoint always
//! matches what it applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::position::GlobalCursor;
use integration_tests::harness::last_event_cursor;
use integration_tests::harness::TestDatabase;
use projections::global_order::read_after;
use projections::runner::{catch_up, checkpoint, step};
use projections::{Projection, ProjectionError, StoredEvent};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(15);

/// Records every event it applies as a row of `applied`, whose primary key makes a second
/// application of an event fail, and counts them in `applied_count`. Can be told to stall
/// half-way through its next batch, as if its process froze there.
struct Recorder {
    name: &'static str,
    /// Events handed to `apply` and inserted, including in batches later rolled back.
    attempts: AtomicU64,
    stall: Mutex<Option<Arc<Notify>>>,
}

impl Recorder {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            attempts: AtomicU64::new(0),
            stall: Mutex::new(None),
        })
    }

    /// The next batch stops half-way and never finishes; `stalled` is notified there.
    fn stall_next_batch(&self, stalled: Arc<Notify>) {
        *self.stall.lock().expect("stall lock") = Some(stalled);
    }
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        &["applied"]
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for (i, event) in events.iter().enumerate() {
            sqlx::query("insert into applied (transaction_id, position) values ($1, $2)")
                .bind(event.cursor.transaction_id)
                .bind(event.cursor.position)
                .execute(&mut *tx)
                .await?;
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if i == events.len() / 2 {
                let stall = self.stall.lock().expect("stall lock").take();
                if let Some(stalled) = stall {
                    stalled.notify_one();
                    std::future::pending::<()>().await;
                }
            }
        }
        sqlx::query("update applied_count set n = n + $1")
            .bind(events.len() as i64)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn create_tables(pool: &PgPool) {
    for sql in [
        "create table applied (transaction_id bigint, position bigint, primary key (transaction_id, position))",
        "create table applied_count (n bigint not null)",
        "insert into applied_count values (0)",
    ] {
        sqlx::query(sql).execute(pool).await.expect("create tables");
    }
}

/// `writers` concurrent writers each commit `transactions` transactions of `per_transaction`
/// events; returns the number of events written.
async fn write_events(pool: &PgPool, writers: usize, transactions: usize, per_transaction: i64) -> i64 {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for t in 0..transactions {
                    sqlx::query(
                        "insert into events
                            (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
                         select 'RunnerProbe', $1, g, 'Probed', '1', jsonb_build_object('n', g), '{}', 'acme'
                         from generate_series(1, $2::bigint) g",
                    )
                    .bind(format!("{}-w{w}-t{t}", uuid::Uuid::new_v4()))
                    .bind(per_transaction)
                    .execute(&pool)
                    .await
                    .expect("write events");
                }
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task.expect("writer task");
    }
    (writers * transactions) as i64 * per_transaction
}

/// Waits until all `events` are readable in the global order. Snapshots are cluster-wide, so
/// a transaction held open by another test (in another database) can hold them back a while.
async fn wait_until_readable(pool: &PgPool, events: i64) {
    let mut conn = pool.acquire().await.expect("connection");
    timeout(DEADLINE, async {
        while (read_after(&mut conn, GlobalCursor::START, events + 1)
            .await
            .expect("read_after")
            .len() as i64)
            < events
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the events never became readable");
}

/// Steps `projection` in batches of at most 500 until it has applied `events` more events;
/// returns the last step's checkpoint.
async fn step_until_applied(pool: &PgPool, projection: &dyn Projection, events: usize) -> GlobalCursor {
    let mut applied = 0;
    timeout(DEADLINE, async {
        loop {
            let step = step(pool, projection, (events - applied).min(500) as i64)
                .await
                .expect("step");
            applied += step.applied;
            if applied == events {
                return step.checkpoint;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the events never became readable to a step")
}

async fn checkpoint_of(pool: &PgPool, name: &str) -> GlobalCursor {
    let mut conn = pool.acquire().await.expect("connection");
    checkpoint(&mut conn, name).await.expect("checkpoint")
}

/// In one snapshot: the applied rows are exactly the events up to the checkpoint and the
/// counter agrees. Returns how many events are applied.
async fn assert_checkpoint_matches_applied(pool: &PgPool, name: &str) -> i64 {
    let (applied, up_to_checkpoint, matched, counted): (i64, i64, i64, i64) = sqlx::query_as(
        "with c as (
            select coalesce(max(transaction_id), 0) as t, coalesce(max(position), 0) as p
            from projection_checkpoint where projection_name = $1
         )
         select
            (select count(*) from applied),
            (select count(*) from events e, c where (e.transaction_id::text::bigint, e.position) <= (c.t, c.p)),
            (select count(*)
               from events e
               join applied a on a.transaction_id = e.transaction_id::text::bigint and a.position = e.position
               cross join c
              where (a.transaction_id, a.position) <= (c.t, c.p)),
            (select n from applied_count)",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("consistency query");
    assert_eq!(
        (applied, matched, counted),
        (up_to_checkpoint, up_to_checkpoint, up_to_checkpoint),
        "(applied rows, of them events up to the checkpoint, counter) must all equal the events up to the checkpoint"
    );
    applied
}

/// Every event applied exactly once and the checkpoint at the last event.
async fn assert_all_applied_once(pool: &PgPool, name: &str, events: i64) {
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(total, events);
    assert_eq!(assert_checkpoint_matches_applied(pool, name).await, events);
    assert_eq!(checkpoint_of(pool, name).await, last_event_cursor(pool).await);
}

/// Runs `step` until caught up; returns an error message if a step fails.
fn spawn_runner(
    pool: &PgPool,
    projection: &Arc<Recorder>,
    batch: i64,
) -> tokio::task::JoinHandle<Option<String>> {
    let pool = pool.clone();
    let projection = projection.clone();
    tokio::spawn(async move {
        loop {
            match step(&pool, projection.as_ref(), batch).await {
                Ok(step) if step.applied == 0 && !step.pending => return None,
                Ok(_) => {}
                Err(error) => return Some(error.to_string()),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_aborted_at_arbitrary_moments_leave_every_event_applied_exactly_once() {
    let db = TestDatabase::create().await;
    create_tables(&db.pool).await;
    let events = write_events(&db.pool, 3, 10, 100).await;
    let projection = Recorder::new("restart-probe");
    const BATCHES: [i64; 5] = [7, 50, 13, 120, 29];

    let mut interrupted = 0;
    for round in 0..40u64 {
        let runners = if round % 3 == 2 { 2 } else { 1 };
        let before = projection.attempts.load(Ordering::SeqCst);
        let handles: Vec<_> = (0..runners)
            .map(|r| {
                spawn_runner(
                    &db.pool,
                    &projection,
                    BATCHES[(round as usize + r) % BATCHES.len()],
                )
            })
            .collect();
        // Wait until a runner is applying (or all are done), then let it run a varying
        // little while and kill it wherever it is.
        let started = timeout(DEADLINE, async {
            while projection.attempts.load(Ordering::SeqCst) == before
                && !handles.iter().all(|h| h.is_finished())
            {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
        .await;
        assert!(started.is_ok(), "no runner started applying");
        tokio::time::sleep(Duration::from_micros(300 + (round * 1_337) % 4_000)).await;
        for handle in handles {
            handle.abort();
            match handle.await {
                Err(error) if error.is_cancelled() => interrupted += 1,
                Err(error) => panic!("a runner panicked: {error}"),
                Ok(Some(error)) => panic!("a step failed (an event applied twice?): {error}"),
                Ok(None) => {}
            }
        }
        assert_checkpoint_matches_applied(&db.pool, projection.name()).await;
    }
    assert!(interrupted >= 20, "only {interrupted} runners were interrupted");
    let applied_before = assert_checkpoint_matches_applied(&db.pool, projection.name()).await;
    assert!(
        applied_before > 0,
        "the interrupted runners must have committed some batches"
    );

    let finished = catch_up(&db.pool, projection.as_ref()).await.expect("catch up");
    assert_eq!(finished as i64, events - applied_before);
    assert_all_applied_once(&db.pool, projection.name(), events).await;
    // Some killed batches had inserted rows that were rolled back, and were redone.
    assert!(
        projection.attempts.load(Ordering::SeqCst) > events as u64,
        "no runner was killed in the middle of a batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_killed_mid_batch_leaves_nothing_behind_and_a_waiting_runner_redoes_the_batch() {
    let db = TestDatabase::create().await;
    create_tables(&db.pool).await;
    let events = write_events(&db.pool, 3, 10, 100).await;
    let projection = Recorder::new("mid-batch-probe");

    wait_until_readable(&db.pool, events).await;
    // A reader's horizon may briefly fall back (a transaction of another database that ends
    // while it is computed counts as this one's), so a step may read less than is readable.
    let first = step_until_applied(&db.pool, projection.as_ref(), 500).await;

    let stalled = Arc::new(Notify::new());
    projection.stall_next_batch(stalled.clone());
    let frozen = {
        let pool = db.pool.clone();
        let projection = projection.clone();
        tokio::spawn(async move { step_until_applied(&pool, projection.as_ref(), 1).await })
    };
    timeout(DEADLINE, stalled.notified())
        .await
        .expect("the runner never reached the middle of its batch");
    assert!(
        projection.attempts.load(Ordering::SeqCst) > 500,
        "the frozen batch inserted nothing before it stalled"
    );

    // A second runner waits for the projection's lock rather than interleaving.
    let waiting = {
        let pool = db.pool.clone();
        let projection = projection.clone();
        tokio::spawn(async move { catch_up(&pool, projection.as_ref()).await })
    };
    timeout(DEADLINE, async {
        loop {
            let blocked: i64 = sqlx::query_scalar(
                "select count(*) from pg_locks l join pg_database d on d.oid = l.database
                 where l.locktype = 'advisory' and not l.granted and d.datname = current_database()",
            )
            .fetch_one(&db.pool)
            .await
            .expect("pg_locks");
            if blocked > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the second runner never waited for the lock");
    assert!(!waiting.is_finished());
    // The frozen batch's rows are not visible and the checkpoint has not moved.
    assert_eq!(
        assert_checkpoint_matches_applied(&db.pool, projection.name()).await,
        500
    );
    assert_eq!(checkpoint_of(&db.pool, projection.name()).await, first);

    frozen.abort();
    let killed = frozen.await;
    assert!(
        killed.is_err_and(|e| e.is_cancelled()),
        "the frozen runner was not killed"
    );

    let applied = timeout(DEADLINE, waiting)
        .await
        .expect("the waiting runner never got the lock after the kill")
        .expect("runner task")
        .expect("catch up");
    assert_eq!(
        applied as i64,
        events - 500,
        "the waiting runner must redo the killed batch"
    );
    assert_all_applied_once(&db.pool, projection.name(), events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_catch_ups_on_one_projection_apply_each_event_exactly_once() {
    let db = TestDatabase::create().await;
    create_tables(&db.pool).await;
    let mut events = write_events(&db.pool, 3, 10, 100).await;
    let projection = Recorder::new("concurrent-probe");

    // Four catch-ups at once, while a writer keeps appending.
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move { write_events(&pool, 1, 40, 5).await })
    };
    let catch_ups: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            let projection = projection.clone();
            tokio::spawn(async move { catch_up(&pool, projection.as_ref()).await })
        })
        .collect();
    let mut applied = 0u64;
    for result in futures::future::join_all(catch_ups).await {
        applied += result
            .expect("catch-up task")
            .expect("catch up (an event applied twice?)");
    }
    events += writer.await.expect("writer");
    // Whatever the writer committed after the catch-ups returned.
    applied += catch_up(&db.pool, projection.as_ref())
        .await
        .expect("final catch up");

    assert_eq!(
        applied as i64, events,
        "the catch-ups together applied each event once"
    );
    assert_all_applied_once(&db.pool, projection.name(), events).await;
    assert_eq!(projection.attempts.load(Ordering::SeqCst), events as u64);
}

/// A transaction opened by a caller that is cancelled at any moment, even while its BEGIN
/// is on the wire, never swallows the next statement run on the same pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_begin_never_swallows_the_next_write_on_its_connection() {
    let db = TestDatabase::create().await;
    let single = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("pool");
    sqlx::query("create table written (n int primary key)")
        .execute(&single)
        .await
        .expect("table");
    for n in 0..200i32 {
        // Cancel the opening after 0–399 µs: sometimes before BEGIN is sent, sometimes while
        // it is in flight, sometimes after the transaction is open.
        let wait = Duration::from_micros(((n as u64) * 37) % 400);
        let _ = timeout(wait, eventlog::begin(&single)).await;
        sqlx::query("insert into written (n) values ($1)")
            .bind(n)
            .execute(&single)
            .await
            .expect("insert");
        // Seen from another connection: the insert committed rather than joining a
        // transaction left open.
        let seen: i64 = sqlx::query_scalar("select count(*) from written where n = $1")
            .bind(n)
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(seen, 1, "the insert after cancelled BEGIN #{n} was not committed");
    }
}
