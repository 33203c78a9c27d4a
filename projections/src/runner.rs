//! The projection runner: tails the global order and applies it to every projection that
//! is not applied inline by the write side (see [`eventlog::Projection`]).
//!
//! Each projection has its own checkpoint, advanced in the same transaction as its
//! read-model writes, so an event's effect lands exactly once whatever crashes in between.
//! Among several aipm processes on one database, each projection runs in the one that leads
//! it ([`crate::leader`]), and is taken over by another within seconds when that one dies;
//! a transaction-scoped advisory lock per batch keeps even a moment of double leadership
//! from applying anything twice.
//!
//! Runners wake when this process appends (an in-process signal), when another process
//! does (LISTEN/NOTIFY on `aipm_events`, sent outside the command's own transaction so
//! that commits are never serialised on the notify queue), and otherwise poll. A runner's
//! commit is announced on `aipm_checkpoints`, so that every process knows how far each
//! projection has got and a read waiting for one answers on whichever process it reaches.

use std::sync::Arc;
use std::time::Duration;

use domain::position::GlobalCursor;
use eventlog::{begin, Projection, ProjectionError};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::global_order;
use crate::leader::Leadership;

/// Channel on which appends are announced to other processes.
pub const NOTIFY_CHANNEL: &str = "aipm_events";
/// Channel on which a runner announces its checkpoint (`<projection> <cursor>`) as it commits.
pub const CHECKPOINT_CHANNEL: &str = "aipm_checkpoints";
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
    let events =
        global_order::read_for(&mut tx, from, batch_size, global_order::Wanted::by(projection)).await?;
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
    // Delivered at the commit, and only if it commits.
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHECKPOINT_CHANNEL)
        .bind(format!("{} {last}", projection.name()))
        .execute(&mut *tx)
        .await?;
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
    checkpoints: Arc<Vec<Checkpoint>>,
    wake: Arc<watch::Sender<u64>>,
    leaderships: Arc<Vec<Leadership>>,
}

struct Checkpoint {
    name: &'static str,
    /// Where the projection is known to be: set by this process's runner while it leads,
    /// and from the leader's announcements otherwise.
    applied: Arc<watch::Sender<GlobalCursor>>,
}

impl Projections {
    /// Stands for the lead of every projection that is not applied inline, running its
    /// runner while leading it, and starts the tasks that announce this process's appends to
    /// other processes and listen for theirs and for other leaders' checkpoints.
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

        let mut checkpoints = Vec::new();
        let mut leaderships = Vec::new();
        for projection in projections.into_iter().filter(|projection| !projection.inline()) {
            let applied = Arc::new(watch::channel(GlobalCursor::START).0);
            checkpoints.push(Checkpoint {
                name: projection.name(),
                applied: applied.clone(),
            });
            let (pool, wake) = (pool.clone(), wake.clone());
            leaderships.push(Leadership::spawn(
                &pool.clone(),
                format!("projection {}", projection.name()),
                move || run(pool.clone(), projection.clone(), applied.clone(), wake.clone()),
            ));
        }
        let checkpoints = Arc::new(checkpoints);

        let listen_pool = pool.clone();
        let remote_wake = wake.clone();
        let known = checkpoints.clone();
        tokio::spawn(async move {
            loop {
                if let Err(error) = listen(&listen_pool, &remote_wake, &known).await {
                    tracing::warn!(%error, "listening for appends failed; polling until it is back");
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        });

        Self {
            checkpoints,
            wake,
            leaderships: Arc::new(leaderships),
        }
    }

    /// Changes whenever the runners are woken: after an append by this or another process,
    /// and after a runner commits. Other tailers of the global order can wait on it.
    pub fn wake_signal(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Makes the runners and every other tailer woken by [`Self::wake_signal`] look at the
    /// log now.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until the projection called `name` has applied the event at `cursor`, in
    /// whichever process leads it. Returns false if that took longer than `timeout` (or
    /// there is no such projection).
    pub async fn wait_for_projection(&self, name: &str, cursor: GlobalCursor, timeout: Duration) -> bool {
        let named: Vec<_> = self
            .checkpoints
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.applied.subscribe())
            .collect();
        !named.is_empty() && Self::wait_all(named, cursor, timeout).await
    }

    /// Waits until every projection has applied the event at `cursor`.
    pub async fn wait_for_all(&self, cursor: GlobalCursor, timeout: Duration) -> bool {
        let all = self.checkpoints.iter().map(|c| c.applied.subscribe()).collect();
        Self::wait_all(all, cursor, timeout).await
    }

    /// Ends this process's candidacies, and the runners it leads, for good.
    pub fn stop_leading(&self) {
        for leadership in self.leaderships.iter() {
            leadership.stop();
        }
    }

    /// Each projection's role and whether this process leads it now.
    pub fn leaderships(&self) -> Vec<(String, bool)> {
        self.leaderships
            .iter()
            .map(|l| (l.role().to_string(), l.is_leading()))
            .collect()
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
}

async fn listen(
    pool: &PgPool,
    wake: &watch::Sender<u64>,
    checkpoints: &[Checkpoint],
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([NOTIFY_CHANNEL, CHECKPOINT_CHANNEL]).await?;
    // What was announced while nobody listened.
    {
        let mut conn = pool.acquire().await?;
        for known in checkpoints {
            advance(&known.applied, checkpoint(&mut conn, known.name).await?);
        }
    }
    loop {
        let notification = listener.recv().await?;
        if notification.channel() == CHECKPOINT_CHANNEL {
            let announced = notification.payload().split_once(' ').and_then(|(name, cursor)| {
                let cursor = cursor.parse::<GlobalCursor>().ok()?;
                Some((checkpoints.iter().find(|c| c.name == name)?, cursor))
            });
            if let Some((known, cursor)) = announced {
                advance(&known.applied, cursor);
            }
        }
        wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Moves a known checkpoint forward (never back: announcements may arrive out of order).
fn advance(applied: &watch::Sender<GlobalCursor>, cursor: GlobalCursor) {
    applied.send_if_modified(|current| {
        let moved = cursor > *current;
        if moved {
            *current = cursor;
        }
        moved
    });
}

async fn run(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    applied: Arc<watch::Sender<GlobalCursor>>,
    wake_all: Arc<watch::Sender<u64>>,
) {
    let mut wake = wake_all.subscribe();
    loop {
        wake.mark_unchanged();
        match step(&pool, projection.as_ref(), BATCH_SIZE).await {
            Ok(step) => {
                advance(&applied, step.checkpoint);
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
