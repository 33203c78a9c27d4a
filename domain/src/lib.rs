//! The rules of aipm: aggregates, the commands they accept, the events they record and the
//! errors they refuse with. Nothing here performs I/O; the write side (`commands`) loads an
//! aggregate, hands it a command and stores the events it decides on.
//!
//! # Layout
//! - [`prompt`]: prompts, their immutable versions and the labels that point at them.
//! - [`category`]: prompt categories.
//! - [`access`]: tenants and API keys with their roles.
//! - [`provider`], [`model`]: the model registry: providers, models and their effective-dated
//!   prices; [`money`]: exact amounts and currencies.
//! - [`health`]: how providers are probed, the rule deciding their state from the probes,
//!   and the changes of state; [`incident`]: incidents and what changed before them.
//! - [`config`]: configuration keys with their JSON Schemas and values; [`flag`]: feature
//!   flags and their deterministic evaluation.
//! - [`approval`]: protected scopes and the change requests another key must approve.
//! - [`budget`]: what to spend per scope and period.
//! - [`experiment`]: experiments: variants, metrics, lifecycle and deterministic
//!   assignment; [`experiment_results`]: their results from their units' data;
//!   [`experiment_stats`]: the statistics that compare an experiment's variants (tests,
//!   intervals, sample ratio mismatch, multiple-testing corrections, sequential and
//!   Bayesian summaries).
//! - [`bulk`]: bulk jobs: one operation over many targets, tracked, cancellable, reversible.
//! - [`audit`]: records of who read the audit log and key listings.
//! - [`usage`]: usage records as clients report them, and their exact cost;
//!   [`call_summary`]: their latencies and metrics in a mergeable form.
//! - [`template`]: parsing and filling `{{variable}}` placeholders; [`chat`]: a chat with a
//!   model (messages, tools, answers), whatever protocol carries it; [`conversation`]:
//!   conversations with the assistant: their transcript, the quick actions the model
//!   proposes, and which turns a call sends.
//! - [`text`]: validated text values; [`fields`]: reading raw input into them with every
//!   invalid field reported at once.
//! - [`position`]: the cursor into the one global order of events.
//! - [`upcast`]: reading events stored in an older shape as this build's.
//! - [`governed`]: what every aggregate here shares (its tenant, the names it holds unique,
//!   the aggregates it refers to).

pub mod access;
pub mod approval;
pub mod audit;
pub mod budget;
pub mod bulk;
pub mod call_summary;
pub mod category;
pub mod chat;
pub mod config;
pub mod conversation;
pub mod experiment;
pub mod experiment_results;
pub mod experiment_stats;
pub mod export;
pub mod fields;
pub mod flag;
pub mod governed;
pub mod health;
pub mod incident;
pub mod model;
pub mod money;
pub mod position;
pub mod prompt;
pub mod provider;
pub mod template;
pub mod text;
pub mod upcast;
pub mod usage;

pub use governed::{Claims, Governed};
