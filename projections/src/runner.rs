//! The projection runner: tails the global order and applies it to every projection that
//! is not applied inline by the write side (see [`eventlog::Projection`]).
//!
//! Each projection has its own checkpoint, advanced in the same transaction as its
//! read-model writes, so an event's effect lands exactly once whatever crashes in between.
//! A transaction-scoped advisory lock per projection lets several aipm processes run the
//! same projections safely: one applies a batch while the others wait, then find it done.
//!
//! Runners wake when this process appends (an in-process signal), when another process
//! does (LISTEN/NOTIFY on `aipm_events`, sent outside the command's own transaction so
//! that commits are never serialised on the notify queue), and otherwise poll.

use std::sync::Arc;
use std::time::Duration;

use domain::position::GlobalCursor;
use eventlog::{begin, Projection, ProjectionError};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::global_order;

/// Channel on which appends are announced to other processes.
pub const NOTIFY_CHANNEL: &str = "aipm_events";
/// Events applied per transaction.
pub const BATCH_SIZE: i64 = 2_000;
/// How often a tailer of the log looks when nothing wakes it.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a tailer waits for events held back by an older running transaction before
/// looking again, unless an append or another runner's commit wakes it first.
pub(crate) const PENDING_NAP: Duration = Duration::from_millis(5);
/// At most one announcement to other processes this often: each costs PostgreSQL a NOTIFY
/// transaction, and other processes' runners only feed readers that tolerate the delay.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(25);
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Reads a projection's checkpoint (the start if it has none yet).
pub async fn checkpoint(conn: &mut PgConnection, name: &str) -> Result<GlobalCursor, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "select transaction_id, position from projection_checkpoint where projection_name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or(GlobalCursor::START, |(t, p)| GlobalCursor::new(t, p)))
}

/// Takes `name`'s lock for the rest of the transaction, so that processes applying the same
/// projection take turns, and commits the transaction without waiting for its WAL flush.
///
/// A read model is derived data: should PostgreSQL crash before the flush, the read-model
/// writes are lost together with the checkpoint they were committed with, and the batch is
/// applied again. Waiting for the flush would only add an fsync to every command's wait.
pub async fn lock_projection(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0)), set_config('synchronous_commit', 'off', true)")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that `name` has applied everything up to `cursor`.
pub async fn save_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    cursor: GlobalCursor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into projection_checkpoint (projection_name, transaction_id, position, updated_at)
         values ($1, $2, $3, now())
         on conflict (projection_name) do update
         set transaction_id = excluded.transaction_id, position = excluded.position, updated_at = now()",
    )
    .bind(name)
    .bind(cursor.transaction_id)
    .bind(cursor.position)
    .execute(conn)
    .await?;
    Ok(())
}

/// Tells every process on the database that events were appended, so that their runners
/// look at once instead of at their next poll.
pub async fn announce_appends(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

/// What one [`step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The projection's checkpoint afterwards.
    pub checkpoint: GlobalCursor,
    /// Events applied.
    pub applied: usize,
    /// Committed events exist past the checkpoint that are not readable yet because an
    /// older transaction is still running; they will be soon.
    pub pending: bool,
}

/// Applies at most one batch to `projection`.
pub async fn step(
    pool: &PgPool,
    projection: &dyn Projection,
    batch_size: i64,
) -> Result<Step, ProjectionError> {
    let mut tx = begin(pool).await?;
    lock_projection(&mut tx, projection.name()).await?;
    let from = checkpoint(&mut tx, projection.name()).await?;
    let events = global_order::read_for(&mut tx, from, batch_size, projection.aggregate_types()).await?;
    let Some(last) = events.last().map(|e| e.cursor) else {
        let pending = global_order::pending_after(&mut tx, from).await?;
        tx.rollback().await?;
        return Ok(Step {
            checkpoint: from,
            applied: 0,
            pending,
        });
    };
    projection.apply(&mut tx, &events).await?;
    save_checkpoint(&mut tx, projection.name(), last).await?;
    tx.commit().await?;
    Ok(Step {
        checkpoint: last,
        applied: events.len(),
        pending: false,
    })
}

/// How long a tailer of the log (a runner, the relay, the live feed) may wait before looking
/// again after a batch that was not full: soon if it read something or events are held back
/// by an older transaction still in flight (they become readable when it ends, which may not
/// come with an append of its own), else until the poll interval.
pub(crate) fn next_look(read: usize, pending: bool) -> Duration {
    if pending || read > 0 {
        PENDING_NAP
    } else {
        POLL_INTERVAL
    }
}

/// Applies everything committed so far to `projection`; returns how many events it applied.
pub async fn catch_up(pool: &PgPool, projection: &dyn Projection) -> Result<u64, ProjectionError> {
    let mut applied = 0;
    loop {
        let step = step(pool, projection, BATCH_SIZE).await?;
        applied += step.applied as u64;
        if step.applied == 0 && !step.pending {
            return Ok(applied);
        }
        if step.applied == 0 {
            tokio::time::sleep(PENDING_NAP).await;
        }
    }
}

/// The running projections of this process and how far each has got.
#[derive(Clone)]
pub struct Projections {
    checkpoints: Vec<Checkpoint>,
    wake: Arc<watch::Sender<u64>>,
}

#[derive(Clone)]
struct Checkpoint {
    name: &'static str,
    applied: watch::Receiver<GlobalCursor>,
}

impl Projections {
    /// Starts one runner task per projection that is not applied inline, plus the tasks
    /// that announce this process's appends to other processes and listen for theirs.
    pub fn spawn(
        pool: PgPool,
        projections: Vec<Arc<dyn Projection>>,
        mut local_appends: watch::Receiver<u64>,
    ) -> Self {
        let (wake, _) = watch::channel(0u64);
        let wake = Arc::new(wake);

        // Local appends wake the runners at once, and are announced to other processes
        // separately so that announcing never delays waking.
        let local_wake = wake.clone();
        let (announce, mut to_announce) = watch::channel(0u64);
        tokio::spawn(async move {
            while local_appends.changed().await.is_ok() {
                local_wake.send_modify(|n| *n = n.wrapping_add(1));
                announce.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        let notify_pool = pool.clone();
        tokio::spawn(async move {
            while to_announce.changed().await.is_ok() {
                if let Err(error) = announce_appends(&notify_pool).await {
                    tracing::warn!(%error, "could not announce an append to other processes");
                }
                // NOTIFY serialises commits on a global lock: announce at most this often,
                // letting the appends in between coalesce into one notification.
                tokio::time::sleep(NOTIFY_INTERVAL).await;
            }
        });

        let listen_pool = pool.clone();
        let remote_wake = wake.clone();
        tokio::spawn(async move {
            loop {
                if let Err(error) = listen(&listen_pool, &remote_wake).await {
                    tracing::warn!(%error, "listening for appends failed; polling until it is back");
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        });

        let checkpoints = projections
            .into_iter()
            .filter(|projection| !projection.inline())
            .map(|projection| {
                let (sender, applied) = watch::channel(GlobalCursor::START);
                let checkpoint = Checkpoint {
                    name: projection.name(),
                    applied,
                };
                tokio::spawn(run(pool.clone(), projection, sender, wake.clone()));
                checkpoint
            })
            .collect();
        Self { checkpoints, wake }
    }

    /// Changes whenever the runners are woken: after an append by this or another process,
    /// and after a runner commits. Other tailers of the global order can wait on it.
    pub fn wake_signal(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Waits until the projection called `name` has applied the event at `cursor`. Returns
    /// false if that took longer than `timeout` (or this process does not run it).
    pub async fn wait_for_projection(&self, name: &str, cursor: GlobalCursor, timeout: Duration) -> bool {
        let named: Vec<_> = self
            .checkpoints
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.applied.clone())
            .collect();
        !named.is_empty() && Self::wait_all(named, cursor, timeout).await
    }

    // Takes the receivers by value: a future borrowing the checkpoints through an iterator
    // adapter would not be `Send` for every lifetime, which axum handlers require.
    async fn wait_all(
        checkpoints: Vec<watch::Receiver<GlobalCursor>>,
        cursor: GlobalCursor,
        timeout: Duration,
    ) -> bool {
        let all = async {
            for mut applied in checkpoints {
                if applied.wait_for(|applied| *applied >= cursor).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }

    /// Each projection's name and the cursor this process last saw it reach.
    pub fn checkpoints(&self) -> Vec<(&'static str, GlobalCursor)> {
        self.checkpoints
            .iter()
            .map(|c| (c.name, *c.applied.borrow()))
            .collect()
    }
}

async fn listen(pool: &PgPool, wake: &watch::Sender<u64>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    loop {
        listener.recv().await?;
        wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

async fn run(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    applied: watch::Sender<GlobalCursor>,
    wake_all: Arc<watch::Sender<u64>>,
) {
    let mut wake = wake_all.subscribe();
    loop {
        wake.mark_unchanged();
        match step(&pool, projection.as_ref(), BATCH_SIZE).await {
            Ok(step) => {
                applied.send_if_modified(|current| {
                    let moved = step.checkpoint > *current;
                    if moved {
                        *current = step.checkpoint;
                    }
                    moved
                });
                if step.applied > 0 {
                    // Our transaction may have been what held other runners' events back.
                    wake_all.send_modify(|n| *n = n.wrapping_add(1));
                    wake.mark_unchanged();
                }
                if step.applied as i64 == BATCH_SIZE {
                    continue;
                }
                let woken = tokio::time::timeout(next_look(step.applied, step.pending), wake.changed())
                    .await
                    .is_ok();
                if woken && !projection.linger().is_zero() {
                    tokio::time::sleep(projection.linger()).await;
                }
            }
            Err(error) => {
                tracing::error!(projection = projection.name(), %error, "projection failed; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}
