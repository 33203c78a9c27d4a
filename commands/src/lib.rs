//! The write side of aipm: loading aggregates, running commands against them and
//! appending the events they decide on to the PostgreSQL event store.
//!
//! # Layout
//! - [`idempotency`]: idempotency keys: claims, stored responses, and the outcome each
//!   keyed command records atomically with its events.
//! - [`metadata`]: who issued a command, from where and why; stored on every event.
//! - [`store`]: the event store: one-statement appends that return each event's place in
//!   the global order, snapshots, the aggregate cache and optimistic concurrency.

pub mod idempotency;
pub mod metadata;
pub mod store;

pub use idempotency::{IdempotencyScope, IdempotencyStore};
pub use metadata::CommandMetadata;
pub use store::{AggregateStore, CommandError, Committed, EventStore};
