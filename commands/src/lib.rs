//! The write side of aipm: loading aggregates, running commands against them and
//! appending the events they decide on to the PostgreSQL event store.
//!
//! # Layout
//! - [`metadata`]: who issued a command, from where and why; stored on every event. The
//!   bottom of the crate: the other modules use it and nothing else of each other.
//! - [`idempotency`]: idempotency keys: claims and stored responses.
//! - `append`: writing appends (events, claims, snapshots, idempotency outcomes and the
//!   inline read models) in one transaction per batch of concurrent commands.
//! - [`stats`]: counts of the commands run and events appended, by type, for metrics.
//! - [`store`]: the event store: loading, the aggregate cache, optimistic concurrency,
//!   running commands, and rebuilding what a keyed command committed.
//! - [`guards`]: the unique names and references recomputed from the log, for a restore.
//! - [`usage`]: storing usage records, telemetry rather than events; [`health`]: storing
//!   provider probes, telemetry too.

mod append;
pub mod guards;
pub mod health;
pub mod idempotency;
pub mod metadata;
pub mod observations;
pub mod stats;
pub mod store;
pub mod usage;

pub use idempotency::IdempotencyStore;
pub use metadata::{CommandMetadata, IdempotencyScope};
pub use store::{AggregateStore, CommandError, Committed, EventStore};
