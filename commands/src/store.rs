//! The event store and command execution.
//!
//! cqrs-es supplies the aggregate model (`Aggregate::handle`/`apply`, `EventSink`) and
//! postgres-es the loading of events and snapshots. Appending is our own: postgres-es
//! writes one INSERT per event inside BEGIN/COMMIT and cannot tell the caller where the
//! events landed in the global order. Here an append is written by `crate::append`: one
//! statement for the events with their claims, snapshot and idempotency outcome, the inline
//! projections that read the aggregate's type ([`eventlog::Projection::inline`]) in the
//! same transaction, so the read models a command affects are written when it commits,
//! never after; and concurrent commands share that transaction (group commit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, PersistedEventStore, SerializedEvent};
use cqrs_es::{AggregateError, DomainEvent, EventStore as _};
use domain::position::GlobalCursor;
use domain::upcast::{self, Schema};
use domain::{Claims, Governed};
use eventlog::Projection;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::append::{Append, AppendError, Appender};
use crate::metadata::{CommandMetadata, IdempotencyScope};
use crate::stats::{CommandStats, Outcome};

/// A snapshot is written every this many events of one aggregate, so that loading a
/// prompt with thousands of versions reads at most this many events after its snapshot.
pub const SNAPSHOT_EVERY: u64 = 64;
/// How often a command without `If-Match` is retried after losing a race.
const MAX_ATTEMPTS: usize = 8;
/// Aggregates kept in memory per type; the cache is cleared when it fills.
const CACHE_CAPACITY: usize = 50_000;
/// Commands on one aggregate run one at a time in this process (they would conflict
/// anyway); ids are hashed onto this many locks.
const LOCK_STRIPES: usize = 1024;

/// Why a command did not produce events.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// The aggregate belongs to another tenant (reported as if it did not exist).
    #[error("not found")]
    NotFound,
    /// `If-Match` named a version that is no longer current.
    #[error("expected version {expected}, but the current version is {current}")]
    VersionMismatch { expected: u64, current: u64 },
    /// Concurrent writers kept winning; the caller may retry.
    #[error("the aggregate is being changed concurrently; retry")]
    Contended,
    /// A per-tenant unique name is taken.
    #[error("the {scope} {key:?} is already taken")]
    NameTaken { scope: String, key: String },
    /// The change refers to an aggregate of type `scope` (with id `target`) that does not
    /// exist, or no longer does.
    #[error("there is no {scope} {target}")]
    NoSuchReference { scope: String, target: String },
    /// The change would delete an aggregate of type `scope` that `count` others still refer to.
    #[error("the {scope} is still referred to by {count}")]
    StillReferenced { scope: String, count: i64 },
    /// A command with this idempotency key has already been committed (see
    /// [`AggregateStore::recorded`] for its result).
    #[error("a command with this idempotency key has already been applied")]
    AlreadyApplied,
    /// The database failed or returned something unreadable.
    #[error("event store failure: {0}")]
    Store(String),
    /// No database connection in time, or the connection broke: a retry may succeed.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of a successful command.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed<E> {
    /// The aggregate's version (its last sequence number) after the command.
    pub version: u64,
    /// Where the last new event stands in the global order; `None` when the command
    /// changed nothing (for example, moving a label to where it already points).
    pub cursor: Option<GlobalCursor>,
    /// When the events were recorded (`events.recorded_at`); `None` with no events.
    pub recorded_at: Option<DateTime<Utc>>,
    /// The events the command recorded (empty when it changed nothing).
    pub events: Vec<E>,
}

/// The PostgreSQL event store shared by all aggregate types.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    /// Writes appends, with group commit, and the inline projections with them.
    appender: Appender,
    appended: Arc<watch::Sender<u64>>,
    /// Commands run and events appended, by type.
    pub stats: Arc<CommandStats>,
}

impl EventStore {
    /// The store on `pool`, applying `inline` projections with every append of a type they
    /// read (`projections::inline()`: leaving one out leaves its read model behind the log).
    /// Starts its appender tasks: call it inside a Tokio runtime.
    pub fn new(pool: PgPool, inline: Vec<Arc<dyn Projection>>) -> Self {
        Self {
            appender: Appender::start(pool.clone(), inline),
            pool,
            appended: Arc::new(watch::channel(0).0),
            stats: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Changes after every append by this process: projection runners wait on it.
    pub fn appended_signal(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// The store for one aggregate type.
    pub fn aggregates<A>(&self, services: A::Services) -> AggregateStore<A>
    where
        A: Governed,
    {
        let repo = PostgresEventRepository::new(self.pool.clone());
        AggregateStore {
            store: self.clone(),
            loader: PersistedEventStore::new_snapshot_store(repo, SNAPSHOT_EVERY as usize).with_upcasters(
                vec![Box::new(DomainUpcasters {
                    aggregate_type: A::TYPE,
                })],
            ),
            services,
            cache: Mutex::new(HashMap::new()),
            locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

/// Loads, commands and appends one aggregate type, keeping recently used instances in
/// memory. A cached instance may be stale when another process wrote meanwhile; the
/// append then fails on the sequence primary key and the instance is reloaded.
pub struct AggregateStore<A: Governed> {
    store: EventStore,
    loader: PersistedEventStore<PostgresEventRepository, A>,
    services: A::Services,
    cache: Mutex<HashMap<String, (A, u64)>>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl<A> AggregateStore<A>
where
    A: Governed + 'static,
    A::Command: Clone,
{
    /// Runs `command` against aggregate `aggregate_id` on behalf of `metadata.tenant`.
    ///
    /// With `expected_version` (from `If-Match`) a stale version is refused; without it a
    /// lost race is retried against fresh state, so plain clients never see a spurious
    /// conflict.
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %aggregate_id))]
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        expected_version: Option<u64>,
        metadata: &CommandMetadata,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        let result = self
            .run(aggregate_id, command, expected_version, metadata, false)
            .await;
        self.count(&result);
        result
    }

    /// Like [`execute`](Self::execute) for an id the caller has just generated: the first
    /// attempt starts from the empty aggregate instead of reading the store. Should the id
    /// exist after all, the append fails on its first sequence and the command is retried
    /// against the stored state.
    pub async fn create(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &CommandMetadata,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        let result = self.run(aggregate_id, command, None, metadata, true).await;
        self.count(&result);
        result
    }

    fn count(&self, result: &Result<Committed<A::Event>, CommandError<A::Error>>) {
        let (outcome, event_types) = match result {
            Ok(committed) if committed.events.is_empty() => (Outcome::Unchanged, Vec::new()),
            Ok(committed) => (
                Outcome::Committed,
                committed.events.iter().map(DomainEvent::event_type).collect(),
            ),
            Err(
                CommandError::Rejected(_)
                | CommandError::NotFound
                | CommandError::NameTaken { .. }
                | CommandError::NoSuchReference { .. }
                | CommandError::StillReferenced { .. }
                | CommandError::AlreadyApplied,
            ) => (Outcome::Rejected, Vec::new()),
            Err(CommandError::VersionMismatch { .. } | CommandError::Contended) => {
                (Outcome::Conflict, Vec::new())
            }
            Err(_) => (Outcome::Failed, Vec::new()),
        };
        self.store.stats.record(A::TYPE, outcome, &event_types);
    }

    async fn run(
        &self,
        aggregate_id: &str,
        command: A::Command,
        expected_version: Option<u64>,
        metadata: &CommandMetadata,
        fresh_id: bool,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        let _serialised = self.lock_for(aggregate_id).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 1 {
                // Another process keeps winning: give it room before reloading.
                tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
            }
            let (mut aggregate, version) = match self.cached(aggregate_id) {
                Some(hit) if attempt == 0 => hit,
                None if attempt == 0 && fresh_id => (A::default(), 0),
                _ => self.load(aggregate_id).await?,
            };
            if aggregate.tenant().is_some_and(|tenant| tenant != metadata.tenant) {
                return Err(CommandError::NotFound);
            }
            if let Some(expected) = expected_version {
                if expected != version {
                    // The cache may be behind: only a fresh load can say the version is stale.
                    if attempt == 0 {
                        self.forget(aggregate_id);
                        continue;
                    }
                    return Err(CommandError::VersionMismatch {
                        expected,
                        current: version,
                    });
                }
            }
            let before = aggregate.clone();
            let sink = EventSink::<A>::default();
            aggregate
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(CommandError::Rejected)?;
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Committed {
                    version,
                    cursor: None,
                    recorded_at: None,
                    events,
                });
            }
            let claims = before.claims(&events);
            match self
                .append(aggregate_id, version, &aggregate, &events, claims, metadata)
                .await
            {
                Ok((cursor, recorded_at)) => {
                    let new_version = version + events.len() as u64;
                    self.remember(aggregate_id, aggregate, new_version);
                    self.store.appended.send_modify(|n| *n = n.wrapping_add(1));
                    return Ok(Committed {
                        version: new_version,
                        cursor: Some(cursor),
                        recorded_at: Some(recorded_at),
                        events,
                    });
                }
                Err(AppendError::SequenceTaken) => {
                    tracing::debug!(attempt, "lost a race for the next sequence; reloading");
                    self.forget(aggregate_id);
                }
                Err(AppendError::NameTaken { scope, key }) => {
                    return Err(CommandError::NameTaken { scope, key })
                }
                Err(AppendError::AlreadyRecorded) => return Err(CommandError::AlreadyApplied),
                Err(AppendError::NoSuchReference { scope, target }) => {
                    return Err(CommandError::NoSuchReference { scope, target })
                }
                Err(AppendError::StillReferenced { scope }) => {
                    let count = self
                        .references_to(&metadata.tenant, &scope, aggregate_id)
                        .await
                        .map_err(|e| CommandError::Store(e.to_string()))?;
                    return Err(CommandError::StillReferenced { scope, count });
                }
                Err(AppendError::Database(
                    error @ (sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)),
                )) => return Err(CommandError::Unavailable(error.to_string())),
                Err(AppendError::Database(error)) => return Err(CommandError::Store(error.to_string())),
                Err(error @ (AppendError::Projection(_) | AppendError::Stopped)) => {
                    return Err(CommandError::Store(error.to_string()))
                }
            }
        }
        Err(CommandError::Contended)
    }

    /// How many aggregates of `tenant` refer to `target` in `scope`.
    async fn references_to(&self, tenant: &str, scope: &str, target: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "select count(*) from reference where tenant_id = $1 and scope = $2 and target_id = $3",
        )
        .bind(tenant)
        .bind(scope)
        .bind(target)
        .fetch_one(&self.store.pool)
        .await
    }

    /// The current state and version of an aggregate (version 0: never written).
    pub async fn load(&self, aggregate_id: &str) -> Result<(A, u64), CommandError<A::Error>> {
        let context = self
            .loader
            .load_aggregate(aggregate_id)
            .await
            .map_err(store_error)?;
        let version = context.current_sequence as u64;
        self.remember(aggregate_id, context.aggregate.clone(), version);
        Ok((context.aggregate, version))
    }

    /// What the command with idempotency key `scope` committed on this aggregate type,
    /// rebuilt from its events (as [`execute`](Self::execute) returned it); `None` if no
    /// such command has committed.
    pub async fn recorded(
        &self,
        scope: &IdempotencyScope,
    ) -> Result<Option<Committed<A::Event>>, CommandError<A::Error>> {
        recorded(&self.store.pool, A::TYPE, scope)
            .await
            .map_err(CommandError::Store)
    }

    /// The aggregate as it was at `at`, folded from its events recorded up to then, with
    /// its version then and the time of its first event. `None` if it did not exist yet.
    pub async fn load_as_of(
        &self,
        aggregate_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<AsOf<A>>, CommandError<A::Error>> {
        let rows: Vec<(String, String, Value, i64, DateTime<Utc>)> = sqlx::query_as(
            "select event_type, event_version, payload, sequence, recorded_at from events
             where aggregate_type = $1 and aggregate_id = $2 and recorded_at <= $3
             order by sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(at)
        .fetch_all(&self.store.pool)
        .await
        .map_err(|e| CommandError::Store(e.to_string()))?;
        let Some(first) = rows.first().map(|row| row.4) else {
            return Ok(None);
        };
        let mut aggregate = A::default();
        let mut version = 0;
        let mut last = first;
        for (event_type, event_version, payload, sequence, recorded_at) in rows {
            let schema = Schema {
                aggregate_type: A::TYPE,
                event_type: &event_type,
                event_version: &event_version,
            };
            let event: A::Event = upcast::decode_value(schema, payload)
                .map_err(|e| CommandError::Store(format!("unreadable {} event: {e}", A::TYPE)))?;
            aggregate.apply(event);
            version = sequence as u64;
            last = recorded_at;
        }
        Ok(Some(AsOf {
            aggregate,
            version,
            created_at: first,
            updated_at: last,
        }))
    }

    fn lock_for(&self, aggregate_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        aggregate_id.hash(&mut hasher);
        &self.locks[hasher.finish() as usize % self.locks.len()]
    }

    fn cached(&self, aggregate_id: &str) -> Option<(A, u64)> {
        self.cache.lock().ok()?.get(aggregate_id).cloned()
    }

    fn remember(&self, aggregate_id: &str, aggregate: A, version: u64) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(aggregate_id.to_string(), (aggregate, version));
        }
    }

    fn forget(&self, aggregate_id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(aggregate_id);
        }
    }

    /// Writes the command's events with their claims, snapshot and idempotency outcome (see
    /// `crate::append`); returns where the last one landed.
    async fn append(
        &self,
        aggregate_id: &str,
        version: u64,
        after: &A,
        events: &[A::Event],
        claims: Claims,
        metadata: &CommandMetadata,
    ) -> Result<(GlobalCursor, DateTime<Utc>), AppendError> {
        let payloads = events
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<Value>, _>>()?;
        let new_version = version + events.len() as u64;
        let snapshot = if new_version / SNAPSHOT_EVERY > version / SNAPSHOT_EVERY {
            Some(serde_json::to_value(after)?)
        } else {
            None
        };
        let append = Append {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_string(),
            tenant: metadata.tenant.clone(),
            version,
            event_types: events.iter().map(DomainEvent::event_type).collect(),
            event_versions: events.iter().map(DomainEvent::event_version).collect(),
            payloads,
            metadata: serde_json::to_value(metadata.to_map())?,
            claims,
            snapshot,
            idempotency: metadata
                .idempotency_key
                .clone()
                .map(|key| (key, metadata.actor_key_id.clone())),
        };
        let placed = self.store.appender.append(append).await?;
        placed
            .last()
            .copied()
            .ok_or(AppendError::Database(sqlx::Error::RowNotFound))
    }
}

/// The result of the command committed under `scope`, rebuilt from its events; `None` if
/// none was. An outcome of another aggregate type is an error: one keyed request runs one
/// appending command.
async fn recorded<E: serde::de::DeserializeOwned>(
    pool: &PgPool,
    aggregate_type: &str,
    scope: &IdempotencyScope,
) -> Result<Option<Committed<E>>, String> {
    type Row = (String, i64, String, String, Value, i64, i64, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select o.aggregate_type, o.last_sequence, e.event_type, e.event_version, e.payload,
                e.transaction_id::text::bigint, e.position, e.recorded_at
         from idempotency_outcome o
         join events e on e.aggregate_type = o.aggregate_type and e.aggregate_id = o.aggregate_id
                      and e.sequence between o.first_sequence and o.last_sequence
         where o.tenant_id = $1 and o.owner_key_id = $2 and o.idempotency_key = $3
         order by e.sequence",
    )
    .bind(&scope.tenant)
    .bind(&scope.owner)
    .bind(&scope.key)
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let Some((recorded_type, version, _, _, _, transaction_id, position, recorded_at)) = rows.last().cloned()
    else {
        return Ok(None);
    };
    if recorded_type != aggregate_type {
        return Err(format!(
            "idempotency key {:?} recorded a {recorded_type} command, not a {aggregate_type} one",
            scope.key
        ));
    }
    let events = rows
        .into_iter()
        .map(|(_, _, event_type, event_version, payload, ..)| {
            let schema = Schema {
                aggregate_type,
                event_type: &event_type,
                event_version: &event_version,
            };
            upcast::decode_value(schema, payload)
        })
        .collect::<Result<Vec<E>, _>>()
        .map_err(|e| format!("unreadable {aggregate_type} event: {e}"))?;
    Ok(Some(Committed {
        version: version as u64,
        cursor: Some(GlobalCursor::new(transaction_id, position)),
        recorded_at: Some(recorded_at),
        events,
    }))
}

/// The domain's upcasters (`domain::upcast`) for one aggregate type, as cqrs-es applies
/// them to the events it loads after a snapshot.
struct DomainUpcasters {
    aggregate_type: &'static str,
}

impl EventUpcaster for DomainUpcasters {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        upcast::is_outdated(Schema {
            aggregate_type: self.aggregate_type,
            event_type,
            event_version,
        })
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        let schema = Schema {
            aggregate_type: self.aggregate_type,
            event_type: &event.event_type,
            event_version: &event.event_version,
        };
        match upcast::upcast(schema, event.payload.clone()) {
            Ok((payload, version)) => {
                event.payload = payload;
                event.event_version = version;
            }
            // cqrs-es upcasters cannot fail: the payload stays as stored, loading the
            // aggregate then fails to decode it, and the reason is here.
            Err(error) => tracing::error!(
                aggregate_id = %event.aggregate_id,
                sequence = event.sequence,
                %error,
                "a stored event cannot be upcast"
            ),
        }
        event
    }
}

/// A point-in-time read of an aggregate.
#[derive(Debug, Clone)]
pub struct AsOf<A> {
    pub aggregate: A,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn store_error<E: std::error::Error>(error: AggregateError<E>) -> CommandError<E> {
    match error {
        AggregateError::DatabaseConnectionError(cause) => CommandError::Unavailable(cause.to_string()),
        other => CommandError::Store(other.to_string()),
    }
}
