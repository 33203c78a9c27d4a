//! Views held in a process's memory and kept current from the event log, for reads that
//! must not touch the database (a flag's evaluation, a label's resolution).
//!
//! # Nothing missed, nothing stale
//!
//! A view starts by taking the end of the settled log `E`, then reading its inline read
//! model. Every event at or before `E` is committed and, the read model being inline, in
//! what it reads; so the view holds at least everything up to `E`. [`follow`] then applies
//! the log in global order from `E`, and each view applies an event only when it is newer
//! than what it holds (by the aggregate's version): an event already read is skipped, none
//! is missed. A process that makes a change also puts the committed state in its own view
//! at once, so its next read sees it; other processes see it once they have read the log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::position::GlobalCursor;
use eventlog::StoredEvent;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::global_order;

/// Events read from the log at a time.
const BATCH: i64 = 500;
/// How often the log is read when no append is announced.
const POLL: Duration = Duration::from_secs(1);
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// A view [`follow`] keeps current.
#[async_trait]
pub trait LiveView: Send + Sync + 'static {
    /// What the view is called in logs.
    fn name(&self) -> &'static str;

    /// The aggregate types whose events the view applies.
    fn aggregate_types(&self) -> &'static [&'static str];

    /// Applies one event of those types (it may read the view's read model).
    async fn apply(&self, pool: &PgPool, event: &StoredEvent) -> Result<(), sqlx::Error>;
}

/// How far a view has read the log: every event at or before it is in the view.
#[derive(Clone)]
pub struct Followed(Arc<watch::Sender<GlobalCursor>>);

impl Default for Followed {
    fn default() -> Self {
        Self(Arc::new(watch::channel(GlobalCursor::START).0))
    }
}

impl Followed {
    /// Where the view has read to.
    pub fn cursor(&self) -> GlobalCursor {
        *self.0.borrow()
    }

    /// Changes when the view reads further.
    pub fn watch(&self) -> watch::Receiver<GlobalCursor> {
        self.0.subscribe()
    }
}

/// Applies the log after `cursor` to `view` for as long as the process runs, woken by
/// `appended` (an append of this process or, announced, of another) or every second, and
/// publishes how far it has read in `followed`.
pub fn follow(
    view: Arc<dyn LiveView>,
    pool: PgPool,
    mut cursor: GlobalCursor,
    mut appended: watch::Receiver<u64>,
    followed: Followed,
) {
    followed.0.send_replace(cursor);
    tokio::spawn(async move {
        loop {
            match catch_up(view.as_ref(), &pool, cursor).await {
                Ok(next) => {
                    cursor = next;
                    followed.0.send_if_modified(|current| {
                        let moved = cursor > *current;
                        *current = cursor;
                        moved
                    });
                    let _ = tokio::time::timeout(POLL, appended.changed()).await;
                }
                Err(error) => {
                    tracing::warn!(view = view.name(), %error, "following the log failed; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    });
}

/// Applies the events after `cursor`; returns the cursor reached.
async fn catch_up(
    view: &dyn LiveView,
    pool: &PgPool,
    mut cursor: GlobalCursor,
) -> Result<GlobalCursor, sqlx::Error> {
    let types = view.aggregate_types();
    loop {
        let events = {
            let mut conn = pool.acquire().await?;
            global_order::read_for(
                &mut conn,
                cursor,
                BATCH,
                global_order::Wanted {
                    aggregate_types: Some(types),
                    metadata_keys: None,
                },
            )
            .await?
        };
        for event in &events {
            cursor = event.cursor;
            if types.contains(&event.aggregate_type.as_str()) {
                view.apply(pool, event).await?;
            }
        }
        if (events.len() as i64) < BATCH {
            return Ok(cursor);
        }
    }
}

/// The end of the settled log: where a view that reads its read model next starts following.
pub async fn start_cursor(pool: &PgPool) -> Result<GlobalCursor, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    global_order::settled_end(&mut conn).await
}
