//! The live feed behind Server-Sent Events and WebSocket subscribers: one tailer per
//! process follows the global order and broadcasts each event, and every subscriber replays
//! its tenant's history from the database before switching to that broadcast.
//!
//! Memory is bounded whatever the subscribers do: the broadcast holds at most `capacity`
//! events, shared by all subscribers, and a subscriber holds at most one history page. A
//! subscriber that falls more than `capacity` events behind the live feed (a burst of
//! writes, or a moment of slow reading) goes back to reading the database from its cursor,
//! as it did for its history, and rejoins the broadcast once it has caught up: it still gets
//! every event once, in order. Only one that falls too far behind, whose next event is
//! older than `max_lag` by then, is told so ([`FeedItem::TooSlow`], with the cursor to
//! resume from) and its stream ends.
//!
//! # No gap, no duplicate
//!
//! A subscriber subscribes to the broadcast first (instant `t0`), then reads history from
//! the database, page by page, until a page comes back short (instant `t1 > t0`), then
//! takes live events, skipping any at or before the last cursor it delivered.
//!
//! - The tailer reads the global order in contiguous ranges and broadcasts their events
//!   in order. Let `P` be the last event it broadcast before `t0` (or the end of the log it
//!   moved to before `t0` while nobody listened; see `tail_once`). The subscriber receives
//!   everything broadcast after `t0`: every event after `P`.
//! - Every event at or before `P` had been read before `t0`, and the tailer only reads
//!   events of transactions that had ended ([`global_order`]), so nothing can appear at or
//!   before `P` later. The tailer marks `P` settled before broadcasting it (or before
//!   checking for subscribers), and history reads everything up to that mark (as well as
//!   below the database's horizon). History's last page is read at `t1 > t0`, so it sees
//!   a mark at or after `P`: history delivers every matching event in `(from, P]`,
//!   perhaps more.
//! - History up to `P` and live after `P` together cover everything after `from`: no gap.
//! - Live events at or before `D`, the last cursor delivered, are skipped. A matching
//!   event at or before `D` was delivered by history (which returns every matching event
//!   up to where it stopped, and `D` is within that); none after `D` was. So skipping
//!   loses nothing and nothing is delivered twice.
//!
//! When the broadcast overflows, the subscriber subscribes again and goes back to history
//! from its last cursor, which by the same argument is gap-free. Before its first live
//! event the overflow happened while it was replaying history (a long replay under heavy
//! writes); after it, the subscriber has fallen behind, and while it catches up from
//! history it is disconnected if the events it is about to send are older than `max_lag`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use domain::position::GlobalCursor;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch, Notify};

use crate::{cloudevent, global_order, runner};
use eventlog::StoredEvent;

/// Events one history query returns. Small, because a subscriber holds a whole page and
/// an event can carry a large template.
const HISTORY_PAGE: i64 = 128;
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a new subscriber waits for a tailer that has not read the log yet.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One event as every subscriber receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub cursor: GlobalCursor,
    pub tenant_id: String,
    pub aggregate_type: String,
    pub event_type: String,
    /// The CloudEvents JSON document ([`cloudevent::to_json`]), on one line.
    pub document: String,
}

impl FeedEvent {
    pub fn from_stored(event: &StoredEvent) -> Result<Self, serde_json::Error> {
        Ok(Self {
            cursor: event.cursor,
            tenant_id: event.tenant_id.clone(),
            aggregate_type: event.aggregate_type.clone(),
            event_type: event.event_type.clone(),
            document: cloudevent::to_json(event)?,
        })
    }
}

/// Which events a subscriber wants: always one tenant's, optionally only some aggregate
/// and event types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub tenant_id: String,
    /// `None`: every aggregate type.
    pub aggregate_types: Option<Vec<String>>,
    /// `None`: every event type.
    pub event_types: Option<Vec<String>>,
}

impl Filter {
    pub fn matches(&self, event: &FeedEvent) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref()
                .is_none_or(|list| list.iter().any(|item| item == value))
        };
        event.tenant_id == self.tenant_id
            && listed(&self.aggregate_types, &event.aggregate_type)
            && listed(&self.event_types, &event.event_type)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("event {cursor} could not be encoded: {source}")]
    Encoding {
        cursor: GlobalCursor,
        source: serde_json::Error,
    },
    #[error("the live feed has not started reading the event log")]
    NotReady,
    #[error("the live feed stopped")]
    Stopped,
}

/// The process's shared tailer. Cloning shares it.
#[derive(Clone)]
pub struct Feed {
    pool: PgPool,
    live: broadcast::Sender<Arc<FeedEvent>>,
    /// True once the tailer knows where the log ends; subscribing waits for it.
    ready: watch::Receiver<bool>,
    /// Wakes an idle tailer when someone subscribes, so that its first live events are not
    /// held until the next poll.
    subscribed: Arc<Notify>,
    /// Set when the server shuts down: every subscription ends.
    closing: watch::Sender<bool>,
    max_lag: Duration,
    /// A cursor at or before which the tailer found every event settled.
    settled: watch::Receiver<GlobalCursor>,
}

impl Feed {
    /// Starts the tailer. `wake` changes when there may be new events (see
    /// [`runner::Projections::wake_signal`]); `capacity` is how many events the broadcast
    /// holds for subscribers that are behind (at least 1). The tailer stops once this value
    /// and every subscription made from it are gone.
    /// A subscriber that has fallen behind the broadcast is disconnected once the event it
    /// is about to send was recorded more than `max_lag` ago.
    pub fn start(pool: PgPool, wake: watch::Receiver<u64>, capacity: usize, max_lag: Duration) -> Self {
        let (live, _) = broadcast::channel(capacity.max(1));
        let (ready_sender, ready) = watch::channel(false);
        let subscribed = Arc::new(Notify::new());
        let (settled_sender, settled) = watch::channel(GlobalCursor::START);
        tokio::spawn(tail(
            pool.clone(),
            live.clone(),
            ready_sender,
            settled_sender,
            wake,
            subscribed.clone(),
        ));
        Self {
            pool,
            live,
            ready,
            subscribed,
            closing: watch::channel(false).0,
            max_lag,
            settled,
        }
    }

    /// Ends every subscription, present and future: their streams finish, so that a server
    /// shutting down gracefully is not held open by subscribers that never leave.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Starts a subscription to the events matching `filter` after `after`.
    pub async fn subscribe(&self, filter: Filter, after: GlobalCursor) -> Result<Subscription, FeedError> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(FeedError::Stopped),
            Err(_) => return Err(FeedError::NotReady),
        }
        // Subscribe before the first history read: see the module documentation.
        let live = self.live.subscribe();
        self.subscribed.notify_one();
        Ok(Subscription {
            pool: self.pool.clone(),
            filter,
            live,
            delivered: after,
            history: VecDeque::new(),
            history_done: false,
            live_started: false,
            fell_behind: false,
            max_lag: self.max_lag,
            settled: self.settled.clone(),
            ended: false,
            closing: self.closing.subscribe(),
            _ready: self.ready.clone(),
        })
    }
}

/// Whether `tenant` has an event at `cursor`: every cursor a subscriber is given (an
/// event's `id`, a `resume_from`) names one. One that does not was never handed out by this
/// log, or was lost with it (a restore from an older backup, a failover to a standby that
/// had not received it); resuming after it would skip events or misplace them.
pub async fn tenant_event_at(pool: &PgPool, tenant: &str, cursor: GlobalCursor) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from events
                        where transaction_id = $1::bigint::text::xid8 and position = $2 and tenant_id = $3)",
    )
    .bind(cursor.transaction_id)
    .bind(cursor.position)
    .bind(tenant)
    .fetch_one(pool)
    .await
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Event(Arc<FeedEvent>),
    /// The subscriber fell behind the broadcast and then further than the feed's maximum
    /// lag; the stream ends here and can be resumed after `resume_from`.
    TooSlow {
        resume_from: GlobalCursor,
    },
}

/// One subscriber's position in the feed: history first, then live events.
pub struct Subscription {
    pool: PgPool,
    filter: Filter,
    live: broadcast::Receiver<Arc<FeedEvent>>,
    /// The last cursor delivered, or the one the subscriber asked to start after.
    delivered: GlobalCursor,
    history: VecDeque<StoredEvent>,
    /// The last history page came back short: history is caught up with the tailer.
    history_done: bool,
    /// A live event has been received since the last (re)subscription.
    live_started: bool,
    /// The broadcast overflowed after live delivery had begun, and no live event has been
    /// received since: the subscriber is catching up from history.
    fell_behind: bool,
    max_lag: Duration,
    settled: watch::Receiver<GlobalCursor>,
    ended: bool,
    closing: watch::Receiver<bool>,
    /// Keeps the tailer running while this subscription lives.
    _ready: watch::Receiver<bool>,
}

impl Subscription {
    /// The cursor to resume from to receive exactly what this subscription has not
    /// delivered yet.
    pub fn resume_from(&self) -> GlobalCursor {
        self.delivered
    }

    /// The next item; `None` once the stream has ended, which it does after
    /// [`FeedItem::TooSlow`], an error, or [`Feed::close`]. Cancel-safe: dropping the future
    /// loses nothing, so it can be raced against heartbeats.
    pub async fn next(&mut self) -> Result<Option<FeedItem>, FeedError> {
        if self.ended || *self.closing.borrow() {
            return Ok(None);
        }
        let next = self.next_item().await;
        if next.is_err() {
            self.ended = true;
        }
        next
    }

    async fn next_item(&mut self) -> Result<Option<FeedItem>, FeedError> {
        loop {
            if let Some(event) = self.history.pop_front() {
                if self.fell_behind && self.lags_too_far(&event) {
                    tracing::info!(resume_from = %self.delivered, "feed subscriber too far behind; disconnecting");
                    self.ended = true;
                    return Ok(Some(FeedItem::TooSlow {
                        resume_from: self.delivered,
                    }));
                }
                let event = FeedEvent::from_stored(&event).map_err(|source| FeedError::Encoding {
                    cursor: event.cursor,
                    source,
                })?;
                self.delivered = event.cursor;
                return Ok(Some(FeedItem::Event(Arc::new(event))));
            }
            if !self.history_done {
                let page = self.read_history().await?;
                // Only after the await: a cancelled read leaves the state as it was.
                self.history_done = (page.len() as i64) < HISTORY_PAGE;
                self.history = page.into();
                continue;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.closing.wait_for(|closing| *closing) => return Ok(None),
            };
            match received {
                Ok(event) => {
                    self.live_started = true;
                    self.fell_behind = false;
                    if event.cursor <= self.delivered || !self.filter.matches(&event) {
                        continue;
                    }
                    self.delivered = event.cursor;
                    return Ok(Some(FeedItem::Event(event)));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Subscribe afresh and read what was missed from the database (see the
                    // module documentation).
                    if self.live_started {
                        tracing::debug!(missed, resume_from = %self.delivered, "feed subscriber fell behind; catching up from the log");
                        self.fell_behind = true;
                    }
                    self.live = self.live.resubscribe();
                    self.live_started = false;
                    self.history_done = false;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(FeedError::Stopped),
            }
        }
    }

    /// Whether `event`, the next to send, was recorded more than the maximum lag ago.
    fn lags_too_far(&self, event: &StoredEvent) -> bool {
        let age = chrono::Utc::now().signed_duration_since(event.recorded_at);
        age.to_std().is_ok_and(|age| age > self.max_lag)
    }

    /// The next page of the tenant's matching events after the last delivered one, in
    /// global order, of transactions that have ended: below this database's horizon, or at
    /// or before what the tailer found settled. The horizon alone could be earlier than
    /// events the tailer has broadcast already (should a transaction of another database
    /// end while it is being computed, it counts as this one's), which would leave a gap
    /// between history and live; the tailer's own mark closes it.
    async fn read_history(&self) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let settled = *self.settled.borrow();
        sqlx::query_as(
            "select aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload::text as payload, metadata::text as metadata, tenant_id,
                    transaction_id::text::bigint as transaction_id, position, recorded_at
             from events
             where tenant_id = $1
               and (transaction_id, position) > ($2::bigint::text::xid8, $3)
               and (transaction_id < (select events_horizon())
                    or (transaction_id, position) <= ($7::bigint::text::xid8, $8))
               and ($4::text[] is null or aggregate_type = any($4))
               and ($5::text[] is null or event_type = any($5))
             order by events.transaction_id, events.position
             limit $6",
        )
        .bind(&self.filter.tenant_id)
        .bind(self.delivered.transaction_id)
        .bind(self.delivered.position)
        .bind(self.filter.aggregate_types.as_deref())
        .bind(self.filter.event_types.as_deref())
        .bind(HISTORY_PAGE)
        .bind(settled.transaction_id)
        .bind(settled.position)
        .fetch_all(&self.pool)
        .await
    }
}

/// What one pass of the tailer found.
struct Tailed {
    /// Events read and broadcast.
    read: usize,
    /// Events exist that an older running transaction still holds back.
    pending: bool,
}

async fn tail(
    pool: PgPool,
    live: broadcast::Sender<Arc<FeedEvent>>,
    ready: watch::Sender<bool>,
    settled: watch::Sender<GlobalCursor>,
    mut wake: watch::Receiver<u64>,
    subscribed: Arc<Notify>,
) {
    let mut position = None;
    // `ready` is closed once the `Feed` and every subscription are gone.
    while !ready.is_closed() {
        wake.mark_unchanged();
        let nap = match tail_once(&pool, &live, &settled, &mut position).await {
            Ok(tailed) => {
                ready.send_if_modified(|ready| !std::mem::replace(ready, true));
                if tailed.read as i64 == runner::BATCH_SIZE {
                    continue;
                }
                runner::next_look(tailed.read, tailed.pending)
            }
            Err(error) => {
                tracing::warn!(%error, "the live feed could not read the event log; retrying");
                RETRY_DELAY
            }
        };
        if live.receiver_count() == 0 {
            // Nobody listens: appends need no reaction until the next poll or subscriber.
            let _ = tokio::time::timeout(nap.max(runner::POLL_INTERVAL), subscribed.notified()).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                changed = wake.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(nap).await;
                    }
                }
                _ = subscribed.notified() => {}
            }
        }
    }
}

/// Reads and broadcasts the next batch of the global order after `position`.
///
/// With nobody subscribed, it only moves `position` to the end of what is readable now, so
/// that a new subscriber is not sent a backlog. That is safe for the argument in the module
/// documentation because the subscriber count is checked *after* reading the end: whoever
/// subscribes later subscribed after those events were readable, so its history has them.
async fn tail_once(
    pool: &PgPool,
    live: &broadcast::Sender<Arc<FeedEvent>>,
    settled: &watch::Sender<GlobalCursor>,
    position: &mut Option<GlobalCursor>,
) -> Result<Tailed, FeedError> {
    // Announced before anyone can act on it (the subscriber-count check, the broadcast),
    // so that a subscriber's history reaches at least as far as the broadcast it missed.
    let announce = |cursor: GlobalCursor| {
        settled.send_if_modified(|settled| {
            let moved = cursor > *settled;
            if moved {
                *settled = cursor;
            }
            moved
        });
    };
    let mut conn = pool.acquire().await?;
    let from = match *position {
        Some(from) if live.receiver_count() > 0 => from,
        current => {
            let end = global_order::settled_end(&mut conn).await?;
            let end = current.map_or(end, |current| current.max(end));
            announce(end);
            if live.receiver_count() == 0 || current.is_none() {
                *position = Some(end);
                return Ok(Tailed {
                    read: 0,
                    pending: false,
                });
            }
            // Someone subscribed meanwhile: carry on from where the broadcast stands.
            current.unwrap_or(end)
        }
    };
    let events = global_order::read_after(&mut conn, from, runner::BATCH_SIZE).await?;
    let Some(last) = events.last().map(|event| event.cursor) else {
        let pending = global_order::pending_after(&mut conn, from).await?;
        return Ok(Tailed { read: 0, pending });
    };
    drop(conn);
    announce(last);
    let encoded = events
        .iter()
        .map(|event| {
            FeedEvent::from_stored(event).map_err(|source| FeedError::Encoding {
                cursor: event.cursor,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for event in encoded {
        // An error only means nobody is subscribed right now; later subscribers read
        // these events from history.
        let _ = live.send(Arc::new(event));
    }
    *position = Some(last);
    Ok(Tailed {
        read: events.len(),
        pending: false,
    })
}
