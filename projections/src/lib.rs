//! The read side of aipm: everything here is derived from the event log and can be rebuilt
//! from it.
//!
//! # Layout
//! - [`event`]: an event as read from the log, with its place in the global order.
//! - [`cloudevent`]: the CloudEvents JSON form every live subscriber receives.
//! - [`global_order`]: reading the log in one total order that never skips a late commit.
//! - [`runner`]: tails the global order and applies it to each projection exactly once.
//! - [`catalog`]: prompts, their versions and categories (`prompt`, `prompt_version`,
//!   `prompt_category`).
//! - [`access`]: tenants and API keys (`tenant`, `api_key`).
//! - [`lag`]: how far each projection is behind the log.
//! - [`relay`]: the NATS JetStream feed, published exactly once in global order.

pub mod access;
pub mod catalog;
pub mod cloudevent;
pub mod event;
pub mod global_order;
pub mod lag;
pub mod relay;
pub mod runner;

pub use event::StoredEvent;
pub use runner::{Projection, ProjectionError, Projections};

use std::sync::Arc;

/// Every projection this build maintains, in the order they are reported.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(access::AccessProjection),
        Arc::new(catalog::CatalogProjection),
    ]
}
