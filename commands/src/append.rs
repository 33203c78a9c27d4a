//! Appending events, with group commit.
//!
//! A command's append is a [`Append`]: its events, the names and references they claim and
//! release, the snapshot when one is due, and the outcome under its idempotency key. Appends
//! are handed to a few appender tasks; each takes every append waiting when it becomes free
//! and writes them all in one transaction: one statement for the events and their claims,
//! one call per inline projection for their read models, one commit. Under load, concurrent
//! commands share those round trips and that commit; a lone command waits for nothing.
//!
//! A batch is all or nothing, and its statement fails as a whole when any one append breaks
//! a rule (a sequence taken by a concurrent writer, a name taken, a reference to nothing).
//! Then each of its appends is written again on its own, so that each gets its own answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::position::GlobalCursor;
use domain::Claims;
use eventlog::{Projection, ProjectionError, StoredEvent};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Appends written together at most.
const MAX_BATCH: usize = 256;
/// Batches written at the same time: while one waits for its commit, the next is written.
const APPENDERS: usize = 4;

/// One command's events, ready to be written.
#[derive(Debug, Clone)]
pub(crate) struct Append {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub tenant: String,
    /// The aggregate's version before these events; they take the next sequence numbers.
    pub version: u64,
    pub event_types: Vec<String>,
    pub event_versions: Vec<String>,
    pub payloads: Vec<Value>,
    /// The command's metadata (a JSON object of strings), stored on each event.
    pub metadata: Value,
    pub claims: Claims,
    /// The aggregate's state after the events, when a snapshot is due.
    pub snapshot: Option<Value>,
    /// The command's idempotency key and the API key that sent it.
    pub idempotency: Option<(String, String)>,
}

impl Append {
    fn new_version(&self) -> i64 {
        self.version as i64 + self.payloads.len() as i64
    }
}

/// Where each event of an append landed: its place in the global order and its time, in
/// sequence order.
pub(crate) type Placed = Vec<(GlobalCursor, DateTime<Utc>)>;

/// Why an append was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
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
    #[error("an inline projection failed: {0}")]
    Projection(String),
    #[error("the appender stopped")]
    Stopped,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<serde_json::Error> for AppendError {
    fn from(error: serde_json::Error) -> Self {
        AppendError::Database(sqlx::Error::Encode(Box::new(error)))
    }
}

impl From<ProjectionError> for AppendError {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Database(error) => AppendError::Database(error),
            other => AppendError::Projection(other.to_string()),
        }
    }
}

struct Job {
    append: Append,
    placed: oneshot::Sender<Result<Placed, AppendError>>,
}

/// The appender tasks of one event store.
#[derive(Clone)]
pub(crate) struct Appender {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Appender {
    /// Starts the appender tasks on `pool`; `inline` projections are applied in each batch's
    /// transaction to the events of the types they read.
    pub fn start(pool: PgPool, inline: Vec<Arc<dyn Projection>>) -> Self {
        let (jobs, waiting) = mpsc::unbounded_channel::<Job>();
        let waiting = Arc::new(Mutex::new(waiting));
        let inline = Arc::new(inline);
        for _ in 0..APPENDERS {
            let (pool, inline, waiting) = (pool.clone(), inline.clone(), waiting.clone());
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut waiting = waiting.lock().await;
                        let Some(first) = waiting.recv().await else {
                            return; // the store is gone
                        };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match waiting.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    write(&pool, &inline, batch).await;
                }
            });
        }
        Self { jobs }
    }

    /// Writes `append`, with whatever else is waiting; answers once it is committed (or
    /// not). The append is written even if the caller stops waiting.
    pub async fn append(&self, append: Append) -> Result<Placed, AppendError> {
        let (placed, answer) = oneshot::channel();
        self.jobs
            .send(Job { append, placed })
            .map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }
}

/// Writes a batch in one transaction, or, if it fails, each append on its own.
async fn write(pool: &PgPool, inline: &[Arc<dyn Projection>], batch: Vec<Job>) {
    if batch.len() > 1 {
        let appends: Vec<&Append> = batch.iter().map(|job| &job.append).collect();
        if let Ok(placed) = transaction(pool, inline, &appends).await {
            for (job, placed) in batch.into_iter().zip(placed) {
                let _ = job.placed.send(Ok(placed));
            }
            return;
        }
    }
    for job in batch {
        let result = transaction(pool, inline, &[&job.append])
            .await
            .map(|mut placed| placed.pop().unwrap_or_default());
        let _ = job.placed.send(result);
    }
}

/// Writes `appends` and their inline read models in one transaction.
async fn transaction(
    pool: &PgPool,
    inline: &[Arc<dyn Projection>],
    appends: &[&Append],
) -> Result<Vec<Placed>, AppendError> {
    let rows = Rows::of(appends);
    let readers: Vec<&Arc<dyn Projection>> = inline
        .iter()
        .filter(|p| appends.iter().any(|a| p.reads(a.aggregate_type)))
        .collect();
    let only = appends.first().filter(|_| appends.len() == 1);
    let classify = |error| match only {
        Some(append) => classify(error, &append.claims),
        None => AppendError::Database(error),
    };
    let (placed, stored) = if readers.is_empty() {
        // One statement: atomic without a transaction of its own.
        let returned = rows.query().fetch_all(pool).await.map_err(classify)?;
        placements(appends, returned)
    } else {
        let mut tx = eventlog::begin(pool).await?;
        let returned = rows.query().fetch_all(&mut *tx).await.map_err(classify)?;
        let (placed, stored) = placements(appends, returned);
        for projection in readers {
            let read: Vec<StoredEvent> = stored
                .iter()
                .filter(|event| projection.reads(&event.aggregate_type))
                .cloned()
                .collect();
            projection.apply(&mut tx, &read).await?;
        }
        tx.commit().await?;
        (placed, stored)
    };
    drop(stored);
    Ok(placed)
}

type Returned = (String, String, i64, i64, i64, DateTime<Utc>);

/// Each append's placements, and every event as the log holds it, in global order.
fn placements(appends: &[&Append], mut returned: Vec<Returned>) -> (Vec<Placed>, Vec<StoredEvent>) {
    returned.sort_by_key(|row| (row.3, row.4));
    let mut stored = Vec::with_capacity(returned.len());
    let mut placed: Vec<Placed> = vec![Vec::new(); appends.len()];
    for (aggregate_type, aggregate_id, sequence, transaction_id, position, recorded_at) in returned {
        let Some(index) = appends
            .iter()
            .position(|a| a.aggregate_type == aggregate_type && a.aggregate_id == aggregate_id)
        else {
            continue;
        };
        let append = appends[index];
        let cursor = GlobalCursor::new(transaction_id, position);
        let offset = (sequence - append.version as i64 - 1) as usize;
        placed[index].push((cursor, recorded_at));
        stored.push(StoredEvent {
            cursor,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type: append.event_types[offset].clone(),
            event_version: append.event_versions[offset].clone(),
            payload: append.payloads[offset].to_string(),
            metadata: append.metadata.to_string(),
            tenant_id: append.tenant.clone(),
            recorded_at,
        });
    }
    (placed, stored)
}

/// A batch's rows, one array per column of each table it writes.
#[derive(Default)]
struct Rows {
    event_types_of: Vec<&'static str>,
    event_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
    tenants: Vec<String>,
    released: Claimed,
    claimed: Claimed,
    snapshot_types: Vec<&'static str>,
    snapshot_ids: Vec<String>,
    snapshot_versions: Vec<i64>,
    snapshots: Vec<Value>,
    outcome_tenants: Vec<String>,
    outcome_owners: Vec<String>,
    outcome_keys: Vec<String>,
    outcome_types: Vec<&'static str>,
    outcome_ids: Vec<String>,
    outcome_first: Vec<i64>,
    outcome_last: Vec<i64>,
    registered: Claimed,
    unregistered: Claimed,
    referenced: Claimed,
    unreferenced: Claimed,
}

/// Claim rows: tenant, scope, key (a name, or a target's id) and owner (the aggregate).
#[derive(Default)]
struct Claimed {
    tenants: Vec<String>,
    scopes: Vec<&'static str>,
    keys: Vec<String>,
    owners: Vec<String>,
}

impl Claimed {
    fn push(&mut self, append: &Append, scope: &'static str, key: &str) {
        self.tenants.push(append.tenant.clone());
        self.scopes.push(scope);
        self.keys.push(key.to_string());
        self.owners.push(append.aggregate_id.clone());
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Rows {
    fn of(appends: &[&Append]) -> Self {
        let mut rows = Rows::default();
        for append in appends {
            for (index, payload) in append.payloads.iter().enumerate() {
                rows.event_types_of.push(append.aggregate_type);
                rows.event_ids.push(append.aggregate_id.clone());
                rows.sequences.push(append.version as i64 + index as i64 + 1);
                rows.event_types.push(append.event_types[index].clone());
                rows.event_versions.push(append.event_versions[index].clone());
                rows.payloads.push(payload.clone());
                rows.metadata.push(append.metadata.clone());
                rows.tenants.push(append.tenant.clone());
            }
            let claims = &append.claims;
            for (scope, key) in &claims.released {
                rows.released.push(append, scope, key);
            }
            for (scope, key) in &claims.claimed {
                rows.claimed.push(append, scope, key);
            }
            for scope in &claims.registered {
                rows.registered.push(append, scope, &append.aggregate_id);
            }
            for scope in &claims.unregistered {
                rows.unregistered.push(append, scope, &append.aggregate_id);
            }
            for (scope, target) in &claims.referenced {
                rows.referenced.push(append, scope, target);
            }
            for (scope, target) in &claims.unreferenced {
                rows.unreferenced.push(append, scope, target);
            }
            if let Some(snapshot) = &append.snapshot {
                rows.snapshot_types.push(append.aggregate_type);
                rows.snapshot_ids.push(append.aggregate_id.clone());
                rows.snapshot_versions.push(append.new_version());
                rows.snapshots.push(snapshot.clone());
            }
            if let Some((key, owner)) = &append.idempotency {
                rows.outcome_tenants.push(append.tenant.clone());
                rows.outcome_owners.push(owner.clone());
                rows.outcome_keys.push(key.clone());
                rows.outcome_types.push(append.aggregate_type);
                rows.outcome_ids.push(append.aggregate_id.clone());
                rows.outcome_first.push(append.version as i64 + 1);
                rows.outcome_last.push(append.new_version());
            }
        }
        rows
    }

    fn parts(&self) -> Parts {
        Parts {
            release_names: !self.released.is_empty(),
            claim_names: !self.claimed.is_empty(),
            snapshot: !self.snapshots.is_empty(),
            outcome: !self.outcome_keys.is_empty(),
            register: !self.registered.is_empty(),
            unregister: !self.unregistered.is_empty(),
            refer: !self.referenced.is_empty(),
            unrefer: !self.unreferenced.is_empty(),
        }
    }

    fn query(&self) -> sqlx::query::QueryAs<'_, sqlx::Postgres, Returned, sqlx::postgres::PgArguments> {
        sqlx::query_as(append_statement(self.parts()))
            .bind(&self.event_types_of)
            .bind(&self.event_ids)
            .bind(&self.sequences)
            .bind(&self.event_types)
            .bind(&self.event_versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.tenants)
            .bind(&self.released.tenants)
            .bind(&self.released.scopes)
            .bind(&self.released.keys)
            .bind(&self.released.owners)
            .bind(&self.claimed.tenants)
            .bind(&self.claimed.scopes)
            .bind(&self.claimed.keys)
            .bind(&self.claimed.owners)
            .bind(&self.snapshot_types)
            .bind(&self.snapshot_ids)
            .bind(&self.snapshot_versions)
            .bind(&self.snapshots)
            .bind(&self.outcome_tenants)
            .bind(&self.outcome_owners)
            .bind(&self.outcome_keys)
            .bind(&self.outcome_types)
            .bind(&self.outcome_ids)
            .bind(&self.outcome_first)
            .bind(&self.outcome_last)
            .bind(&self.registered.tenants)
            .bind(&self.registered.scopes)
            .bind(&self.registered.keys)
            .bind(&self.unregistered.tenants)
            .bind(&self.unregistered.scopes)
            .bind(&self.unregistered.keys)
            .bind(&self.referenced.tenants)
            .bind(&self.referenced.scopes)
            .bind(&self.referenced.keys)
            .bind(&self.referenced.owners)
            .bind(&self.unreferenced.tenants)
            .bind(&self.unreferenced.scopes)
            .bind(&self.unreferenced.keys)
            .bind(&self.unreferenced.owners)
    }
}

// One statement, so one round trip: release and claim unique names, register aggregates
// as referable or unregister them, move references, refresh snapshots when due, record the
// outcomes under the commands' idempotency keys, append the events, return each event's
// place in the global order. A reference to an unregistered target, or the unregistering
// of a target still referred to, fails the statement on a foreign key: checked against
// committed and in-flight changes alike, so racing commands cannot both pass.
// Parts a batch does not need are left out, so that PostgreSQL never plans a join over
// all of a tenant's names for commands that touch none. Parameters keep their numbers in
// every variant (their types are sent with the statement).
const RELEASE_NAMES: &str = "released as (
    delete from unique_claim c
    using unnest($9::text[], $10::text[], $11::text[], $12::text[]) as r(tenant_id, scope, claim_key, owner_id)
    where c.tenant_id = r.tenant_id and c.scope = r.scope and c.claim_key = r.claim_key and c.owner_id = r.owner_id
), ";
const CLAIM_NAMES: &str = "claimed as (
    insert into unique_claim (tenant_id, scope, claim_key, owner_id)
    select * from unnest($13::text[], $14::text[], $15::text[], $16::text[])
), ";
const WRITE_SNAPSHOTS: &str = "snapshot as (
    insert into snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
    select s.aggregate_type, s.aggregate_id, s.version, s.version, s.payload
    from unnest($17::text[], $18::text[], $19::bigint[], $20::jsonb[]) as s(aggregate_type, aggregate_id, version, payload)
    on conflict (aggregate_type, aggregate_id) do update
        set last_sequence = excluded.last_sequence,
            current_snapshot = excluded.current_snapshot,
            payload = excluded.payload
        where snapshots.last_sequence < excluded.last_sequence
), ";
// The outcome's primary key makes a second append under one idempotency key fail as a whole.
const RECORD_OUTCOMES: &str = "recorded as (
    insert into idempotency_outcome
        (tenant_id, owner_key_id, idempotency_key, aggregate_type, aggregate_id, first_sequence, last_sequence)
    select * from unnest($21::text[], $22::text[], $23::text[], $24::text[], $25::text[], $26::bigint[], $27::bigint[])
), ";
const REGISTER: &str = "registered as (
    insert into referable (tenant_id, scope, target_id) select * from unnest($28::text[], $29::text[], $30::text[])
), ";
const UNREGISTER: &str = "unregistered as (
    delete from referable r
    using unnest($31::text[], $32::text[], $33::text[]) as u(tenant_id, scope, target_id)
    where r.tenant_id = u.tenant_id and r.scope = u.scope and r.target_id = u.target_id
), ";
const REFER: &str = "referred as (
    insert into reference (tenant_id, scope, target_id, owner_id)
    select * from unnest($34::text[], $35::text[], $36::text[], $37::text[])
), ";
const UNREFER: &str = "unreferred as (
    delete from reference c
    using unnest($38::text[], $39::text[], $40::text[], $41::text[]) as r(tenant_id, scope, target_id, owner_id)
    where c.tenant_id = r.tenant_id and c.scope = r.scope and c.target_id = r.target_id and c.owner_id = r.owner_id
), ";
const APPEND_EVENTS: &str = "appended as (
    insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
    select * from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $8::text[])
    returning aggregate_type, aggregate_id, sequence, transaction_id, position, recorded_at
)
select aggregate_type, aggregate_id, sequence, transaction_id::text::bigint, position, recorded_at from appended";

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
        WRITE_SNAPSHOTS,
        RECORD_OUTCOMES,
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

/// What a failed statement of one append means for it.
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
