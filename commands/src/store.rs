//! The event store and command execution.
//!
//! cqrs-es supplies the aggregate model (`Aggregate::handle`/`apply`, `EventSink`) and
//! postgres-es the loading of events and snapshots. Appending is our own: postgres-es
//! writes one INSERT per event inside BEGIN/COMMIT and cannot tell the caller where the
//! events landed in the global order. Here one statement appends the events together with
//! the unique-name claims, the snapshot and the idempotency outcome, and returns each
//! event's place in the global order. The inline projections that read the aggregate's
//! type ([`eventlog::Projection::inline`]) then apply the events in the same transaction,
//! so the read models a command affects are written when it commits, never after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, DomainEvent, EventStore as _};
use domain::position::GlobalCursor;
use domain::{Claims, Governed};
use eventlog::{Projection, ProjectionError, StoredEvent};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::metadata::{CommandMetadata, IdempotencyScope};

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
    /// Projections applied in the transaction of each append of a type they read.
    inline: Arc<Vec<Arc<dyn Projection>>>,
    appended: Arc<watch::Sender<u64>>,
}

impl EventStore {
    /// The store on `pool`, applying `inline` projections with every append of a type they
    /// read (`projections::inline()`: leaving one out leaves its read model behind the log).
    pub fn new(pool: PgPool, inline: Vec<Arc<dyn Projection>>) -> Self {
        Self {
            pool,
            inline: Arc::new(inline),
            appended: Arc::new(watch::channel(0).0),
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
            loader: PersistedEventStore::new_snapshot_store(repo, SNAPSHOT_EVERY as usize),
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
        self.run(aggregate_id, command, expected_version, metadata, false)
            .await
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
        self.run(aggregate_id, command, None, metadata, true).await
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
                .append(aggregate_id, version, &aggregate, &events, &claims, metadata)
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
                Err(error @ AppendError::Projection(_)) => {
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
        let rows: Vec<(Value, i64, DateTime<Utc>)> = sqlx::query_as(
            "select payload, sequence, recorded_at from events
             where aggregate_type = $1 and aggregate_id = $2 and recorded_at <= $3
             order by sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(at)
        .fetch_all(&self.store.pool)
        .await
        .map_err(|e| CommandError::Store(e.to_string()))?;
        let Some(first) = rows.first().map(|row| row.2) else {
            return Ok(None);
        };
        let mut aggregate = A::default();
        let mut version = 0;
        let mut last = first;
        for (payload, sequence, recorded_at) in rows {
            let event: A::Event = serde_json::from_value(payload)
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

    async fn append(
        &self,
        aggregate_id: &str,
        version: u64,
        after: &A,
        events: &[A::Event],
        claims: &Claims,
        metadata: &CommandMetadata,
    ) -> Result<(GlobalCursor, DateTime<Utc>), AppendError> {
        let sequences: Vec<i64> = (1..=events.len() as i64).map(|i| version as i64 + i).collect();
        let event_types: Vec<String> = events.iter().map(DomainEvent::event_type).collect();
        let event_versions: Vec<String> = events.iter().map(DomainEvent::event_version).collect();
        let payloads = events
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<Value>, _>>()?;
        let metadata_json = serde_json::to_value(metadata.to_map())?;
        let (released_scopes, released_keys) = scoped(&claims.released);
        let (claimed_scopes, claimed_keys) = scoped(&claims.claimed);
        let (referenced_scopes, referenced_targets) = scoped(&claims.referenced);
        let (unreferenced_scopes, unreferenced_targets) = scoped(&claims.unreferenced);
        let new_version = version + events.len() as u64;
        let crosses_snapshot = new_version / SNAPSHOT_EVERY > version / SNAPSHOT_EVERY;
        let snapshot = if crosses_snapshot {
            Some(serde_json::to_value(after)?)
        } else {
            None
        };

        let statement = append_statement(Parts {
            release_names: !claims.released.is_empty(),
            claim_names: !claims.claimed.is_empty(),
            snapshot: snapshot.is_some(),
            outcome: metadata.idempotency_key.is_some(),
            register: !claims.registered.is_empty(),
            unregister: !claims.unregistered.is_empty(),
            refer: !claims.referenced.is_empty(),
            unrefer: !claims.unreferenced.is_empty(),
        });
        let query = sqlx::query_as(statement)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(&sequences)
            .bind(&event_types)
            .bind(&event_versions)
            .bind(&payloads)
            .bind(&metadata_json)
            .bind(&metadata.tenant)
            .bind(&released_scopes)
            .bind(&released_keys)
            .bind(&claimed_scopes)
            .bind(&claimed_keys)
            .bind(&snapshot)
            .bind(new_version as i64)
            .bind(&metadata.idempotency_key)
            .bind(&metadata.actor_key_id)
            .bind(&claims.registered)
            .bind(&claims.unregistered)
            .bind(&referenced_scopes)
            .bind(&referenced_targets)
            .bind(&unreferenced_scopes)
            .bind(&unreferenced_targets);
        let inline: Vec<&Arc<dyn Projection>> =
            self.store.inline.iter().filter(|p| p.reads(A::TYPE)).collect();
        let classified = |error| classify(error, claims);
        let placed: Vec<(i64, i64, DateTime<Utc>)> = if inline.is_empty() {
            // One statement: atomic without a transaction of its own.
            query.fetch_all(&self.store.pool).await.map_err(classified)?
        } else {
            let mut tx = eventlog::begin(&self.store.pool).await?;
            let placed = query.fetch_all(&mut *tx).await.map_err(classified)?;
            let stored = stored_events::<A>(
                aggregate_id,
                version,
                events,
                &payloads,
                &metadata_json,
                &metadata.tenant,
                &placed,
            );
            for projection in inline {
                projection.apply(&mut tx, &stored).await?;
            }
            tx.commit().await?;
            placed
        };
        let Some(&(transaction_id, position, recorded_at)) = placed.last() else {
            return Err(AppendError::Database(sqlx::Error::RowNotFound));
        };
        Ok((GlobalCursor::new(transaction_id, position), recorded_at))
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
    let rows: Vec<(String, i64, Value, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "select o.aggregate_type, o.last_sequence, e.payload,
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
    let Some((recorded_type, version, _, transaction_id, position, recorded_at)) = rows.last().cloned()
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
        .map(|row| serde_json::from_value(row.2))
        .collect::<Result<Vec<E>, _>>()
        .map_err(|e| format!("unreadable {aggregate_type} event: {e}"))?;
    Ok(Some(Committed {
        version: version as u64,
        cursor: Some(GlobalCursor::new(transaction_id, position)),
        recorded_at: Some(recorded_at),
        events,
    }))
}

/// The events of one append as the log holds them, for the inline projections; `placed`
/// is each event's place in the global order and time, in sequence order.
fn stored_events<A: Governed>(
    aggregate_id: &str,
    version: u64,
    events: &[A::Event],
    payloads: &[Value],
    metadata: &Value,
    tenant: &str,
    placed: &[(i64, i64, DateTime<Utc>)],
) -> Vec<StoredEvent> {
    let metadata = metadata.to_string();
    events
        .iter()
        .zip(payloads)
        .zip(placed)
        .enumerate()
        .map(
            |(index, ((event, payload), &(transaction_id, position, recorded_at)))| StoredEvent {
                cursor: GlobalCursor::new(transaction_id, position),
                aggregate_type: A::TYPE.to_string(),
                aggregate_id: aggregate_id.to_string(),
                sequence: version as i64 + index as i64 + 1,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: payload.to_string(),
                metadata: metadata.clone(),
                tenant_id: tenant.to_string(),
                recorded_at,
            },
        )
        .collect()
}

/// A point-in-time read of an aggregate.
#[derive(Debug, Clone)]
pub struct AsOf<A> {
    pub aggregate: A,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// One statement, so one round trip: release and claim unique names, register the
// aggregate as referable or unregister it, move its references, refresh the snapshot when
// due, record the outcome under the command's idempotency key, append the events, return
// each event's place in the global order. A reference to an unregistered target, or the
// unregistering of a target still referred to, fails the statement on a foreign key: checked
// against committed and in-flight changes alike, so racing commands cannot both pass.
// Parts a change does not need are left out, so that PostgreSQL never plans a join over
// all of a tenant's names for a command that touches none. Parameters keep their numbers
// in every variant (their types are sent with the statement).
const RELEASE_NAMES: &str = "released as (
    delete from unique_claim c
    using unnest($9::text[], $10::text[]) as r(scope, claim_key)
    where c.tenant_id = $8 and c.scope = r.scope and c.claim_key = r.claim_key and c.owner_id = $2
), ";
const CLAIM_NAMES: &str = "claimed as (
    insert into unique_claim (tenant_id, scope, claim_key, owner_id)
    select $8, n.scope, n.claim_key, $2 from unnest($11::text[], $12::text[]) as n(scope, claim_key)
), ";
const WRITE_SNAPSHOT: &str = "snapshot as (
    insert into snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
    values ($1, $2, $14, $14, $13::jsonb)
    on conflict (aggregate_type, aggregate_id) do update
        set last_sequence = excluded.last_sequence,
            current_snapshot = excluded.current_snapshot,
            payload = excluded.payload
        where snapshots.last_sequence < excluded.last_sequence
), ";
// The outcome's primary key makes a second append under one idempotency key fail as a whole.
const RECORD_OUTCOME: &str = "recorded as (
    insert into idempotency_outcome
        (tenant_id, owner_key_id, idempotency_key, aggregate_type, aggregate_id, first_sequence, last_sequence)
    values ($8, $16, $15, $1, $2, ($3::bigint[])[1], $14)
), ";
const REGISTER: &str = "registered as (
    insert into referable (tenant_id, scope, target_id) select $8, r.scope, $2 from unnest($17::text[]) as r(scope)
), ";
const UNREGISTER: &str = "unregistered as (
    delete from referable where tenant_id = $8 and scope = any($18::text[]) and target_id = $2
), ";
const REFER: &str = "referred as (
    insert into reference (tenant_id, scope, target_id, owner_id)
    select $8, r.scope, r.target_id, $2 from unnest($19::text[], $20::text[]) as r(scope, target_id)
), ";
const UNREFER: &str = "unreferred as (
    delete from reference c
    using unnest($21::text[], $22::text[]) as r(scope, target_id)
    where c.tenant_id = $8 and c.scope = r.scope and c.target_id = r.target_id and c.owner_id = $2
), ";
const APPEND_EVENTS: &str = "appended as (
    insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
    select $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $7, $8
    from unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[]) as e(sequence, event_type, event_version, payload)
    returning sequence, transaction_id, position, recorded_at
)
select transaction_id::text::bigint, position, recorded_at from appended order by sequence";

/// The optional parts of an append.
#[derive(Debug, Clone, Copy)]
struct Parts {
    release_names: bool,
    claim_names: bool,
    snapshot: bool,
    outcome: bool,
    register: bool,
    unregister: bool,
    refer: bool,
    unrefer: bool,
}

impl Parts {
    /// Which parts, as the index of their statement among all combinations.
    fn bits(self) -> usize {
        [
            self.release_names,
            self.claim_names,
            self.snapshot,
            self.outcome,
            self.register,
            self.unregister,
            self.refer,
            self.unrefer,
        ]
        .iter()
        .enumerate()
        .map(|(bit, on)| usize::from(*on) << bit)
        .sum()
    }
}

/// The append statement of every combination of parts, indexed by [`Parts::bits`].
static APPEND_VARIANTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let parts = [
        RELEASE_NAMES,
        CLAIM_NAMES,
        WRITE_SNAPSHOT,
        RECORD_OUTCOME,
        REGISTER,
        UNREGISTER,
        REFER,
        UNREFER,
    ];
    (0..1usize << parts.len())
        .map(|bits| {
            let mut sql = String::from("with ");
            for (bit, part) in parts.iter().enumerate() {
                if bits & (1 << bit) != 0 {
                    sql.push_str(part);
                }
            }
            sql.push_str(APPEND_EVENTS);
            sql
        })
        .collect()
});

fn append_statement(parts: Parts) -> &'static str {
    &APPEND_VARIANTS[parts.bits()]
}

/// Claims as the statement binds them: their scopes and their keys.
fn scoped<'a>(claims: &'a [(&'static str, String)]) -> (Vec<&'static str>, Vec<&'a str>) {
    claims.iter().map(|(scope, key)| (*scope, key.as_str())).unzip()
}

#[derive(Debug, thiserror::Error)]
enum AppendError {
    #[error("an inline projection failed: {0}")]
    Projection(ProjectionError),
    #[error("the next sequence number was taken by a concurrent writer")]
    SequenceTaken,
    #[error("name taken")]
    NameTaken { scope: String, key: String },
    #[error("an outcome is already recorded under this idempotency key")]
    AlreadyRecorded,
    #[error("no {scope} {target} to refer to")]
    NoSuchReference { scope: String, target: String },
    #[error("the {scope} is still referred to")]
    StillReferenced { scope: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<ProjectionError> for AppendError {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Database(error) => AppendError::Database(error),
            other => AppendError::Projection(other),
        }
    }
}

impl From<serde_json::Error> for AppendError {
    fn from(error: serde_json::Error) -> Self {
        AppendError::Database(sqlx::Error::Encode(Box::new(error)))
    }
}

fn classify(error: sqlx::Error, claims: &Claims) -> AppendError {
    if let sqlx::Error::Database(db) = &error {
        match (db.code().as_deref(), db.constraint()) {
            (Some("23505"), Some("events_pkey")) => return AppendError::SequenceTaken,
            (Some("23505"), Some("idempotency_outcome_pkey")) => return AppendError::AlreadyRecorded,
            (Some("23505"), Some("unique_claim_pkey")) => {
                // PostgreSQL names the conflicting key in the detail; with one claim per
                // command in practice, the first claim is the one that collided.
                let (scope, key) = claims.claimed.first().cloned().unwrap_or(("name", String::new()));
                return AppendError::NameTaken {
                    scope: scope.to_string(),
                    key,
                };
            }
            // A foreign key of `reference`: names the referencing table whichever side broke
            // it, so the side is told by what the change did. (No aggregate both refers to
            // something and stops being referable in one change.)
            (Some("23503"), Some("reference_target_fkey")) => {
                if let Some(scope) = claims.unregistered.first() {
                    return AppendError::StillReferenced {
                        scope: scope.to_string(),
                    };
                }
                let (scope, target) = claims.referenced.first().cloned().unwrap_or(("", String::new()));
                return AppendError::NoSuchReference {
                    scope: scope.to_string(),
                    target,
                };
            }
            _ => {}
        }
    }
    AppendError::Database(error)
}

fn store_error<E: std::error::Error>(error: AggregateError<E>) -> CommandError<E> {
    match error {
        AggregateError::DatabaseConnectionError(cause) => CommandError::Unavailable(cause.to_string()),
        other => CommandError::Store(other.to_string()),
    }
}
