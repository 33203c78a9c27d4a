//! The write side of aipm: loading aggregates, running commands against them and
//! appending the events they decide on to the PostgreSQL event store.
//!
//! # Layout
//! - [`metadata`]: who issued a command, from where and why; stored on every event. The
//!   bottom of the crate: the other modules use it and nothing else of each other.
//! - [`idempotency`]: idempotency keys: claims and stored responses.
//! - [`store`]: the event store: one-statement appends that return each event's place in
//!   the global order, snapshots, the aggregate cache, optimistic concurrency, and the
//!   outcome each keyed command records atomically with its events.

pub mod idempotency;
pub mod metadata;
pub mod store;

pub use idempotency::IdempotencyStore;
pub use metadata::{CommandMetadata, IdempotencyScope};
pub use store::{AggregateStore, CommandError, Committed, EventStore};
