//! The NATS JetStream feed: a relay that publishes every event of the log, in global order,
//! to one JetStream stream, exactly once.
//!
//! The event table is the outbox. The relay tails the global order like a projection, with
//! its own checkpoint (`nats_relay:<stream>`, so that a new stream is filled from the start)
//! and the same per-name lock. Among several aipm processes, the one that leads the relay
//! ([`crate::leader`]) publishes, and another takes over within seconds when it dies; the
//! others stand by. Each batch:
//! lock → read the checkpoint → read the batch → publish every message without waiting →
//! await the acks → save the checkpoint past the acked prefix → commit.
//!
//! # Exactly once
//! - Every message carries `Nats-Msg-Id` (the event's identity): JetStream drops a
//!   re-publish within the stream's duplicate window.
//! - Beyond the window, the stream itself says what was published: after a start, a
//!   failure, or another process's turn, the relay reads the stream's last message and
//!   resumes after its `aipmcursor`, whatever its checkpoint says. A relay that died after
//!   the acks but before its commit is therefore never repeated, and a stream that lost
//!   its tail (or was deleted and re-created) is filled again.
//! - Every message also carries `Nats-Expected-Last-Sequence`: the stream accepts message
//!   *n* of a batch only if it directly follows message *n − 1*. A message lost in flight
//!   (a NATS restart mid-batch) makes the ones after it fail instead of leaving a gap, and
//!   the relay resumes from what the stream really holds.
//! - Every message carries `Aipm-Database`, this database's identity: a stream whose last
//!   message came from another database's log is refused (its cursor says nothing of this
//!   log, and resuming after it would skip events), and the relay reports why.
//! - Before resuming after the stream's last message, the relay checks that this log holds
//!   that very event at that cursor. After a restore from an older backup, a point-in-time
//!   recovery or a failover to a standby that had not received the newest events, it does
//!   not: the stream is ahead of the log, the cursor's transaction id may be handed out again
//!   for other events, and resuming would skip or misplace them. The relay then stops
//!   publishing and says why (`/readyz`, `/v1/system/projections`).
//!
//! # Never in the way of commands
//! Commands never wait for the relay (read-your-writes waits only for read models). While
//! NATS is down the relay does not touch the database at all: it retries with capped
//! exponential backoff and resumes as soon as the client reconnects.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType, Stream};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions, Event};
use chrono::{DateTime, Utc};
use domain::position::GlobalCursor;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::global_order::pending_after;
use crate::lag::{self, ProjectionLag};
use crate::leader::Leadership;
use crate::runner::{checkpoint, lock_projection, next_look, save_checkpoint, BATCH_SIZE};
use crate::{cloudevent, global_order};
use eventlog::StoredEvent;

/// Stream name used when none is configured.
pub const DEFAULT_STREAM: &str = "AIPM_EVENTS";
/// Subject prefix used when none is configured.
pub const DEFAULT_SUBJECT_PREFIX: &str = "aipm.events";
/// `Content-Type` of every message: a CloudEvent in structured mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// The header naming the database (`database_identity`) whose log a message belongs to.
pub const DATABASE_HEADER: &str = "Aipm-Database";

/// How long a publish waits for its ack, and a JetStream API request for its answer.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The stream's duplicate window. It must cover the relay's worst-case retry horizon: a
/// failed batch is retried after at most `MAX_RETRY` (10 s) and each attempt waits at most
/// `ACK_TIMEOUT` (5 s) for its acks, so at most 15 s pass between a message's first send
/// and its re-send. Two minutes (JetStream's default) covers that eight times over. Beyond
/// any window, exactly-once rests on the stream itself (see the module docs).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a start waits for the first connection before reporting NATS as down.
const FIRST_CONNECT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Where and how the feed is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// JetStream stream name (`AIPM_NATS_STREAM`).
    pub stream: String,
    /// Subjects are `<subject_prefix>.<tenant>.<aggregate_type>.<aggregate_id>.<event_type>`.
    pub subject_prefix: String,
}

impl RelaySettings {
    /// The feed's settings, or `None` when `nats_url` is empty (the feed is off). An error
    /// names the setting that is not valid.
    pub fn from_parts(nats_url: &str, stream: &str, subject_prefix: &str) -> Result<Option<Self>, String> {
        if nats_url.trim().is_empty() {
            return Ok(None);
        }
        if stream.is_empty()
            || stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(format!(
                "invalid AIPM_NATS_STREAM {stream:?}: a stream name cannot be empty or contain \
                 whitespace, '.', '*', '>', '/' or '\\'"
            ));
        }
        if subject_prefix.split('.').any(|token| {
            token.is_empty() || token.chars().any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
        }) {
            return Err(format!(
                "invalid AIPM_NATS_SUBJECT_PREFIX {subject_prefix:?}: expected dot-separated \
                 tokens without wildcards or whitespace, e.g. aipm.events"
            ));
        }
        Ok(Some(Self {
            nats_url: nats_url.trim().to_string(),
            stream: stream.to_string(),
            subject_prefix: subject_prefix.to_string(),
        }))
    }

    /// The relay's name in `projection_checkpoint`: one per stream, so that a new stream is
    /// filled from the start of the log.
    pub fn checkpoint_name(&self) -> String {
        format!("nats_relay:{}", self.stream)
    }

    /// The stream's subject filter.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// What the relay is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// Another aipm process publishes the feed; this one takes over if that one stops.
    Standby,
    /// No attempt has finished yet.
    Starting,
    /// The last attempt succeeded.
    Publishing,
    /// The last attempt failed; the relay is backing off (see `last_error`).
    Retrying,
}

/// The relay's state as this process sees it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayStatus {
    pub stream: String,
    pub subject_prefix: String,
    pub state: RelayState,
    /// Whether the NATS client is connected right now.
    pub connected: bool,
    /// Messages this process has had acked since it started (duplicates included).
    pub published: u64,
    /// Acks that JetStream marked as duplicates.
    pub duplicates: u64,
    /// The last failure, kept after recovery so that an operator can see what happened.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The checkpoint this process last committed or read (the database has the truth).
    #[serde(skip)]
    pub checkpoint: Option<GlobalCursor>,
}

/// The relay's state with its lag, as `/readyz` and `/v1/system/projections` show it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayReport {
    /// `ok`; `starting` before the first attempt; `down` while the relay cannot publish
    /// (commands still work, and the feed catches up once it can); `standby` while another
    /// aipm process publishes it.
    pub status: &'static str,
    #[serde(flatten)]
    pub lag: ProjectionLag,
    #[serde(flatten)]
    pub relay: RelayStatus,
}

/// A running relay. Dropping it stops it.
pub struct Relay {
    settings: RelaySettings,
    status: watch::Receiver<RelayStatus>,
    connected: watch::Receiver<bool>,
    leadership: Arc<Leadership>,
}

/// Stops a relay when dropped; see [`Relay::stop_on_drop`].
pub struct StopOnDrop(Arc<Leadership>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Relay {
    /// Starts relaying the log on `pool` to NATS. `wake` changes when there may be new
    /// events ([`crate::Projections::wake_signal`]); without a change the relay polls.
    pub fn spawn(base_pool: PgPool, settings: RelaySettings, wake: watch::Receiver<u64>) -> Self {
        // Each term has a connection of its own, closed when the term ends: ending it is an
        // abort, and closing the connection makes PostgreSQL roll back whatever the relay
        // had open, as after a crash, without relying on the pool to clean up after an
        // aborted task (see `eventlog::begin` for how that can go wrong).
        let options = (*base_pool.connect_options()).clone();
        let (status_tx, status) = watch::channel(RelayStatus {
            stream: settings.stream.clone(),
            subject_prefix: settings.subject_prefix.clone(),
            state: RelayState::Standby,
            connected: false,
            published: 0,
            duplicates: 0,
            last_error: None,
            last_error_at: None,
            checkpoint: None,
        });
        let (connected_tx, connected) = watch::channel(false);
        let status_tx = Arc::new(status_tx);
        let connected_tx = Arc::new(connected_tx);
        let term = {
            let (settings, status, connected_rx) = (settings.clone(), status_tx.clone(), connected.clone());
            move || {
                status.send_modify(|s| s.state = RelayState::Starting);
                let worker = Worker {
                    pool: PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(ACK_TIMEOUT)
                        .connect_lazy_with(options.clone()),
                    checkpoint_name: settings.checkpoint_name(),
                    settings: settings.clone(),
                    status: status.clone(),
                    connected_tx: connected_tx.clone(),
                    connected: connected_rx.clone(),
                    wake: wake.clone(),
                    nats: None,
                    stream: None,
                    head: None,
                    database: None,
                };
                worker.run()
            }
        };
        let leadership = Leadership::spawn(&base_pool, format!("relay {}", settings.stream), term);
        // A term that ends (the process lost the lead) leaves the relay standing by.
        let mut leading = leadership.watch();
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                if !*leading.borrow_and_update() {
                    status_tx.send_modify(|s| {
                        s.state = RelayState::Standby;
                        s.checkpoint = None;
                    });
                }
            }
        });
        Self {
            settings,
            status,
            connected,
            leadership: Arc::new(leadership),
        }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// The relay's state now.
    pub fn status(&self) -> RelayStatus {
        let mut status = self.status.borrow().clone();
        status.connected = *self.connected.borrow();
        status
    }

    /// The relay's state and how far the stream is behind the log.
    pub async fn report(&self, pool: &PgPool) -> Result<RelayReport, sqlx::Error> {
        let relay = self.status();
        let status = match relay.state {
            RelayState::Standby => "standby",
            RelayState::Starting => "starting",
            RelayState::Publishing if relay.connected => "ok",
            _ => "down",
        };
        Ok(RelayReport {
            status,
            lag: lag::lag(pool, &self.settings.checkpoint_name()).await?,
            relay,
        })
    }

    /// Waits until this relay has published everything up to `cursor`. Returns false if
    /// that took longer than `timeout`.
    pub async fn wait_for(&self, cursor: GlobalCursor, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        let reached = async {
            status
                .wait_for(|s| s.checkpoint.is_some_and(|c| c >= cursor))
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, reached).await.unwrap_or(false)
    }

    /// A guard that stops the relay when dropped, for an owner whose end should end the
    /// relay even while others still hold the handle.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.leadership.clone())
    }

    /// Whether this process publishes the feed now (rather than standing by).
    pub fn is_leading(&self) -> bool {
        self.leadership.is_leading()
    }

    /// The relay's leadership role.
    pub fn role(&self) -> &str {
        self.leadership.role()
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("NATS is not connected")]
    Disconnected,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{context}: {source}")]
    Nats {
        context: &'static str,
        source: async_nats::Error,
    },
    #[error("event {cursor} cannot be encoded: {source}")]
    Encode {
        cursor: GlobalCursor,
        source: serde_json::Error,
    },
    #[error(
        "stream {stream} holds the events of another aipm database ({other}); \
         give each database its own AIPM_NATS_STREAM"
    )]
    ForeignStream { stream: String, other: String },
    #[error(
        "stream {stream} ends with event {event} at cursor {cursor}, which this event log does not \
         hold: the database was restored from an older backup or failed over to a standby that \
         lacked it, and the stream is ahead of the log. Publishing stopped so as not to skip or \
         misplace events; give the feed a new stream (AIPM_NATS_STREAM) and let subscribers \
         resume from it"
    )]
    StreamAheadOfLog {
        stream: String,
        event: String,
        cursor: GlobalCursor,
    },
}

fn nats(context: &'static str) -> impl FnOnce(async_nats::Error) -> RelayError {
    move |source| RelayError::Nats { context, source }
}

/// The stream's last sequence, and the log position it corresponds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamHead {
    sequence: u64,
    cursor: GlobalCursor,
}

/// What one [`Worker::step`] did.
struct Step {
    published: usize,
    pending: bool,
}

struct Worker {
    pool: PgPool,
    settings: RelaySettings,
    checkpoint_name: String,
    status: Arc<watch::Sender<RelayStatus>>,
    connected_tx: Arc<watch::Sender<bool>>,
    connected: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
    nats: Option<(Client, Context)>,
    /// The stream, once created or updated on the current connection.
    stream: Option<Stream>,
    /// The stream's head as of this process's last commit; `None` when it must be read
    /// from the stream again.
    head: Option<StreamHead>,
    /// This database's identity (`database_identity`), stamped on every message.
    database: Option<String>,
}

impl Worker {
    async fn run(mut self) {
        let mut retry = FIRST_RETRY;
        let mut failed_attempts: u64 = 0;
        loop {
            self.wake.mark_unchanged();
            match self.step().await {
                Ok(step) => {
                    if failed_attempts > 0 {
                        tracing::info!(
                            stream = %self.settings.stream,
                            failed_attempts,
                            "NATS feed resumed"
                        );
                        failed_attempts = 0;
                    }
                    retry = FIRST_RETRY;
                    self.status.send_if_modified(|s| {
                        let changed = s.state != RelayState::Publishing;
                        s.state = RelayState::Publishing;
                        changed
                    });
                    if step.published as i64 == BATCH_SIZE {
                        continue;
                    }
                    let nap = next_look(step.published, step.pending);
                    let _ = tokio::time::timeout(nap, self.wake.changed()).await;
                }
                Err(error) => {
                    self.stream = None;
                    self.head = None;
                    // Once per outage, not once per attempt.
                    if failed_attempts == 0 {
                        tracing::warn!(
                            stream = %self.settings.stream,
                            %error,
                            "NATS feed paused; commands are unaffected and the feed catches up when this clears"
                        );
                    } else {
                        tracing::debug!(stream = %self.settings.stream, %error, "NATS feed still paused");
                    }
                    failed_attempts += 1;
                    let disconnected = matches!(error, RelayError::Disconnected);
                    self.status.send_modify(|s| {
                        s.state = RelayState::Retrying;
                        s.last_error = Some(error.to_string());
                        s.last_error_at = Some(Utc::now());
                    });
                    self.back_off(retry, disconnected).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Waits `delay`, or less if NATS comes back after being away: an outage ends with a
    /// reconnect, and the feed should catch up at once rather than after the backoff.
    async fn back_off(&mut self, delay: Duration, disconnected: bool) {
        if disconnected && *self.connected.borrow_and_update() {
            return;
        }
        let connected = &mut self.connected;
        let reconnect = async {
            loop {
                if connected.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if *connected.borrow_and_update() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(delay, reconnect).await;
    }

    /// The client and JetStream context, connecting in the background on first use.
    async fn nats(&mut self) -> Result<(Client, Context), RelayError> {
        if let Some((client, context)) = &self.nats {
            return Ok((client.clone(), context.clone()));
        }
        let connected = self.connected_tx.clone();
        let client = ConnectOptions::new()
            .name("aipm relay")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                match event {
                    Event::Connected => {
                        connected.send_replace(true);
                    }
                    Event::Disconnected | Event::Closed => {
                        connected.send_replace(false);
                    }
                    _ => {}
                }
                async {}
            })
            .connect(self.settings.nats_url.as_str())
            .await
            .map_err(|e| nats("connecting")(e.into()))?;
        // The client connects in the background: give it a moment, so that an ordinary
        // start is not reported as an outage.
        let _ = tokio::time::timeout(FIRST_CONNECT, self.connected.wait_for(|c| *c)).await;
        let context = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client.clone());
        self.nats = Some((client.clone(), context.clone()));
        Ok((client, context))
    }

    /// Publishes at most one batch.
    async fn step(&mut self) -> Result<Step, RelayError> {
        let (client, context) = self.nats().await?;
        // Fail fast while disconnected: publishing would only fill the client's buffer,
        // and the database need not be touched until NATS can take messages again.
        if client.connection_state() != State::Connected {
            return Err(RelayError::Disconnected);
        }
        let stream = match &self.stream {
            Some(stream) => stream.clone(),
            None => {
                let stream = ensure_stream(&context, &self.settings).await?;
                self.stream = Some(stream.clone());
                stream
            }
        };

        let database = match &self.database {
            Some(database) => database.clone(),
            None => {
                let database: String = sqlx::query_scalar("select id::text from database_identity")
                    .fetch_one(&self.pool)
                    .await?;
                self.database.insert(database).clone()
            }
        };

        // No transaction id is taken until the checkpoint is written, just before the
        // commit: locking, reading and publishing are read-only. Readers of the global order
        // only see transactions older than the oldest one holding an id, so holding one
        // while waiting for NATS would hold back every projection, and every command's
        // read-your-writes with them.
        let mut tx = eventlog::begin(&self.pool).await?;
        lock_projection(&mut tx, &self.checkpoint_name).await?;
        let saved = checkpoint(&mut tx, &self.checkpoint_name).await?;
        // Our own last commit is still the checkpoint: the stream's head is as we left it.
        // Otherwise (a start, a failure, another process's turn) ask the stream.
        let head = match self.head.take() {
            Some(head) if head.cursor == saved => head,
            _ => read_head(&mut tx, &stream, &database, saved).await?,
        };
        let events =
            global_order::read_for(&mut tx, head.cursor, BATCH_SIZE, global_order::Wanted::EVERYTHING)
                .await?;
        if events.is_empty() {
            let pending = pending_after(&mut tx, head.cursor).await?;
            self.finish(tx, saved, head).await?;
            return Ok(Step {
                published: 0,
                pending,
            });
        }

        let outcome = publish(&context, &self.settings.subject_prefix, &database, head, &events).await;
        let reached = match outcome.last_acked {
            Some(sequence) => StreamHead {
                sequence,
                cursor: events[outcome.acked - 1].cursor,
            },
            None => head,
        };
        self.finish(tx, saved, reached).await?;
        self.status.send_modify(|s| {
            s.published += outcome.acked as u64;
            s.duplicates += outcome.duplicates;
        });
        if let Some(error) = outcome.error {
            self.head = None;
            return Err(error);
        }
        Ok(Step {
            published: outcome.acked,
            pending: false,
        })
    }

    /// Saves `reached` as the checkpoint if it moved and commits, or just ends the
    /// transaction; then remembers the stream's head for the next batch.
    async fn finish(
        &mut self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        saved: GlobalCursor,
        reached: StreamHead,
    ) -> Result<(), RelayError> {
        if reached.cursor != saved {
            save_checkpoint(&mut tx, &self.checkpoint_name, reached.cursor).await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        self.head = Some(reached);
        self.status.send_modify(|s| s.checkpoint = Some(reached.cursor));
        Ok(())
    }
}

/// Creates the stream, or updates an existing one so that it takes the feed's subjects
/// with a long enough duplicate window. Other settings an operator gave it (limits,
/// replicas) are kept.
async fn ensure_stream(context: &Context, settings: &RelaySettings) -> Result<Stream, RelayError> {
    let wanted = Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subjects()],
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Config::default()
    };
    let mut stream = context
        .get_or_create_stream(wanted)
        .await
        .map_err(|e| nats("creating the stream")(e.into()))?;
    let mut config = stream.cached_info().config.clone();
    let mut changed = false;
    if !config.subjects.contains(&settings.subjects()) {
        config.subjects.push(settings.subjects());
        changed = true;
    }
    if config.duplicate_window < DUPLICATE_WINDOW {
        config.duplicate_window = DUPLICATE_WINDOW;
        changed = true;
    }
    if changed {
        context
            .update_stream(config)
            .await
            .map_err(|e| nats("updating the stream")(e.into()))?;
        stream = context
            .get_stream(&settings.stream)
            .await
            .map_err(|e| nats("reading the stream")(e.into()))?;
    }
    Ok(stream)
}

/// The stream's last sequence and the log position it stands for: the `aipmcursor` of its
/// last message; the start of the log if the stream never held a message (new, or deleted
/// and re-created: it is filled from the start); `saved` if the last message is gone
/// (purged or aged out) or was not published by aipm. A last message stamped by another
/// database (`database` is this one's) is an error: its cursor says nothing of this log. So
/// is one whose event this log does not hold at its cursor (see the module docs).
async fn read_head(
    conn: &mut PgConnection,
    stream: &Stream,
    database: &str,
    saved: GlobalCursor,
) -> Result<StreamHead, RelayError> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| nats("reading the stream's state")(e.into()))?;
    let sequence = info.state.last_sequence;
    if sequence == 0 {
        return Ok(StreamHead {
            sequence,
            cursor: GlobalCursor::START,
        });
    }
    let cursor = match stream.get_raw_message(sequence).await {
        Ok(message) => {
            // Messages of versions that did not stamp them count as this database's.
            if let Some(other) = message.headers.get(DATABASE_HEADER) {
                if other.as_str() != database {
                    return Err(RelayError::ForeignStream {
                        stream: info.config.name.clone(),
                        other: other.to_string(),
                    });
                }
            }
            match relayed(&message.payload) {
                Some((event, cursor)) => {
                    if !holds(conn, &event, cursor).await? {
                        return Err(RelayError::StreamAheadOfLog {
                            stream: info.config.name.clone(),
                            event,
                            cursor,
                        });
                    }
                    cursor
                }
                None => {
                    tracing::warn!(
                        stream = %info.config.name,
                        sequence,
                        "the stream's last message was not published by aipm; resuming from the checkpoint"
                    );
                    saved
                }
            }
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => saved,
        Err(error) => return Err(nats("reading the stream's last message")(error.into())),
    };
    Ok(StreamHead { sequence, cursor })
}

/// Whether this log holds the event `event` (its CloudEvents `id`) at `cursor`.
async fn holds(conn: &mut PgConnection, event: &str, cursor: GlobalCursor) -> Result<bool, sqlx::Error> {
    let found: Option<(String, String, i64)> = sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence from events
         where transaction_id = $1::bigint::text::xid8 and position = $2",
    )
    .bind(cursor.transaction_id)
    .bind(cursor.position)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some_and(|(aggregate_type, aggregate_id, sequence)| {
        cloudevent::identity(&aggregate_type, &aggregate_id, sequence) == event
    }))
}

/// The CloudEvents `id` and `aipmcursor` of a message published by the relay.
fn relayed(payload: &[u8]) -> Option<(String, GlobalCursor)> {
    #[derive(Deserialize)]
    struct Relayed {
        id: String,
        aipmcursor: String,
    }
    let relayed: Relayed = serde_json::from_slice(payload).ok()?;
    let cursor = GlobalCursor::from_str(&relayed.aipmcursor).ok()?;
    Some((relayed.id, cursor))
}

/// What publishing a batch achieved.
struct Published {
    /// Length of the acked prefix of the batch.
    acked: usize,
    /// Stream sequence of the last acked message.
    last_acked: Option<u64>,
    duplicates: u64,
    /// Why the rest of the batch was not acked.
    error: Option<RelayError>,
}

/// Sends every event of the batch without waiting, then awaits the acks in order. Only
/// the acked prefix counts: a message after a failed one may not be in the stream.
async fn publish(
    context: &Context,
    prefix: &str,
    database: &str,
    head: StreamHead,
    events: &[StoredEvent],
) -> Published {
    let mut acks = Vec::with_capacity(events.len());
    let mut send_error = None;
    for (index, event) in events.iter().enumerate() {
        let body = match cloudevent::to_json(event) {
            Ok(body) => body,
            Err(source) => {
                send_error = Some(RelayError::Encode {
                    cursor: event.cursor,
                    source,
                });
                break;
            }
        };
        let message = PublishMessage::build()
            .payload(body.into())
            .message_id(cloudevent::event_id(event))
            .expected_last_sequence(head.sequence + index as u64)
            .header("Content-Type", CONTENT_TYPE)
            .header(DATABASE_HEADER, database);
        match context
            .send_publish(cloudevent::nats_subject(prefix, event), message)
            .await
        {
            Ok(ack) => acks.push(ack),
            Err(error) => {
                send_error = Some(nats("publishing")(error.into()));
                break;
            }
        }
    }
    let mut published = Published {
        acked: 0,
        last_acked: None,
        duplicates: 0,
        error: None,
    };
    // Awaiting in order costs nothing: every ack is already on its way. At the first
    // failure the remaining acks are left to the client, as they cannot extend the prefix.
    for ack in acks {
        match ack.await {
            Ok(ack) => {
                published.acked += 1;
                published.last_acked = Some(ack.sequence);
                published.duplicates += u64::from(ack.duplicate);
            }
            Err(error) => {
                published.error = Some(nats("awaiting an ack")(error.into()));
                break;
            }
        }
    }
    if published.error.is_none() {
        published.error = send_error;
    }
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_url_turns_the_feed_off_and_bad_names_are_refused() {
        assert_eq!(RelaySettings::from_parts("", "S", "a.b"), Ok(None));
        let settings = RelaySettings::from_parts("nats://127.0.0.1:4222", "AIPM_EVENTS", "aipm.events")
            .unwrap()
            .unwrap();
        assert_eq!(settings.checkpoint_name(), "nats_relay:AIPM_EVENTS");
        assert_eq!(settings.subjects(), "aipm.events.>");
        assert!(RelaySettings::from_parts("nats://x", "A.B", "aipm").is_err());
        assert!(RelaySettings::from_parts("nats://x", "", "aipm").is_err());
        assert!(RelaySettings::from_parts("nats://x", "S", "aipm..events").is_err());
        assert!(RelaySettings::from_parts("nats://x", "S", "aipm.>").is_err());
        assert!(RelaySettings::from_parts("nats://x", "S", "").is_err());
    }

    #[test]
    fn the_cursor_of_a_relayed_message_is_read_back_and_others_are_not_mistaken_for_one() {
        let body = br#"{"specversion":"1.0","id":"prompt-a-1","aipmcursor":"812-40"}"#;
        assert_eq!(
            relayed(body),
            Some(("prompt-a-1".to_string(), GlobalCursor::new(812, 40)))
        );
        assert_eq!(relayed(b"hello"), None);
        assert_eq!(relayed(br#"{"id":"e","aipmcursor":"x"}"#), None);
    }
}
