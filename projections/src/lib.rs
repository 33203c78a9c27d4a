//! The read side of aipm: everything here is derived from the event log and can be rebuilt
//! from it.
//!
//! # Layout
//! - [`cloudevent`]: the CloudEvents JSON form every live subscriber receives.
//! - [`feed`]: the process's live feed for Server-Sent Events and WebSocket subscribers.
//! - [`global_order`]: reading the log in one total order that never skips a late commit.
//! - [`runner`]: tails the global order and applies it to each projection exactly once.
//! - [`catalog`]: prompts, their versions and categories (`prompt`, `prompt_version`,
//!   `prompt_category`).
//! - [`access`]: tenants and API keys (`tenant`, `api_key`).
//! - [`registry`]: providers, models and their price periods (`provider`, `model`,
//!   `model_price`).
//! - [`config`]: configuration keys with their schemas and values (`config_entry`);
//!   [`flag`]: feature flags (`flag`), also held in memory for evaluation.
//! - [`approval`]: protected scopes and change requests (`protection`, `change_request`).
//! - [`budget`]: budget definitions (`budget`).
//! - [`bulk`]: bulk jobs and their items (`bulk_job`, `bulk_item`).
//! - [`health`]: providers' health states (`provider_health`) and their probes
//!   (`provider_probe`, telemetry the prober writes); [`incident`]: incidents with their
//!   timelines (`incident`), and the search of the log for the changes they relate to.
//! - [`experiment`]: experiments (`experiment`), their assignment in memory, and the units
//!   their results are computed from.
//! - [`usage`]: usage records (`usage_record`), which ingestion writes directly: telemetry,
//!   not events.
//! - [`audit`]: the hash-chained audit log (`audit_entry`), its verification against the
//!   log and the permission history; [`canonical`]: the JSON form its hashes cover.
//!
//! Each projection owns its tables and the queries that read them: `<projection>/mod.rs`
//! applies events, `<projection>/queries.rs` answers the API's questions with view types.
//! - [`history`]: an aggregate's events with their metadata, read from the log itself.
//! - [`page`]: keyset pagination shared by the listings.
//! - [`lag`]: how far each projection is behind the log.
//! - [`leader`]: which process runs the work that runs in one process at a time.
//! - [`relay`]: the NATS JetStream feed, published exactly once in global order.

pub mod access;
pub mod approval;
pub mod audit;
pub mod budget;
pub mod bulk;
pub mod canonical;
pub mod catalog;
pub mod cloudevent;
pub mod config;
pub mod csv;
pub mod experiment;
pub mod export;
pub mod feed;
pub mod flag;
pub mod global_order;
pub mod health;
pub mod history;
pub mod incident;
pub mod lag;
pub mod leader;
pub mod live;
pub mod page;
pub mod registry;
pub mod relay;
pub mod runner;
pub mod usage;

pub use eventlog::{Projection, ProjectionError, StoredEvent};
pub use runner::Projections;

use std::sync::Arc;

/// Every projection this build maintains, in the order they are reported.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(access::AccessProjection),
        Arc::new(catalog::CatalogProjection),
        Arc::new(registry::RegistryProjection),
        Arc::new(config::ConfigProjection),
        Arc::new(flag::FlagProjection),
        Arc::new(approval::ApprovalProjection),
        Arc::new(budget::BudgetProjection),
        Arc::new(bulk::BulkProjection),
        Arc::new(health::HealthProjection),
        Arc::new(incident::IncidentProjection),
        Arc::new(experiment::ExperimentProjection),
        Arc::new(export::ExportProjection),
        Arc::new(audit::AuditProjection),
    ]
}

/// The projections the write side applies in the transaction that appends their events
/// (`commands::EventStore::new` takes them); the others have runners.
pub fn inline() -> Vec<Arc<dyn Projection>> {
    all()
        .into_iter()
        .filter(|projection| projection.inline())
        .collect()
}
