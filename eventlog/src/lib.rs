//! The event log as the write side and the read side both see it. `commands` appends to
//! it and applies inline projections in the same transaction; `projections` tails it.
//! Neither depends on the other; both depend on this.
//!
//! # Layout
//! - [`event`]: an event as stored, with its place in the global order.
//! - [`projection`]: what a read model derived from the log implements.
//! - [`transaction`]: opening a transaction that a cancelled caller cannot leave open.

pub mod event;
pub mod projection;
pub mod transaction;

pub use event::{StoredEvent, ORIGINAL_CURSOR_KEY};
pub use projection::{Projection, ProjectionError};
pub use transaction::begin;
