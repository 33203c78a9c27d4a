//! The aipm HTTP API and command-line interface. This crate is the composition root: it
//! wires the write side (`commands`) and the read side (`projections`) together.
//!
//! # Layout, bottom to top
//! Each module imports only modules listed above it.
//! - [`settings`]: what a server is configured with (limits, the feed, idempotency).
//! - [`error`]: problem+json errors; [`consistency`]: `Aipm-Cursor` and `Aipm-Read-After`,
//!   read-your-writes on any process; [`telemetry`], [`request_id`]: logging and request ids;
//!   [`db`]: connecting, creating the database and migrating; [`private_postgres`]: a
//!   PostgreSQL of aipm's own, from the server programs installed on the machine.
//! - [`metrics`]: Prometheus metrics, and the middleware counting HTTP requests.
//! - [`hardening`]: rate limits, brute-force protection, body limits, timeouts, load
//!   shedding, CORS and security headers.
//! - [`auth`]: API keys and the authenticated [`auth::Caller`].
//! - [`idempotency`]: `Idempotency-Key` on command endpoints.
//! - [`extract`]: JSON, path and query extractors whose rejections are problems, command
//!   metadata and `If-Match`; [`openapi`]: the document's shared parts; [`export_files`]:
//!   where export files are kept; [`gateway`]: calling models (OpenAI-compatible and
//!   Anthropic protocols, retries, fallbacks).
//! - [`state`]: the application context, and running a command through it;
//!   [`scheduler`]: applying scheduled configuration changes when they are due; [`bulk`]:
//!   running bulk jobs; [`budget_watch`]: budgets' standings in memory, and their
//!   thresholds recorded as spend crosses them; [`incidents`]: opening an incident with the
//!   changes it relates to; [`prober`]: probing providers' health (it opens incidents);
//!   [`exports`]: the reports and the runner writing them to files; [`runs`]: running a
//!   prompt through the gateway and recording its usage.
//! - [`routes`]: one module per resource; handlers stay thin.
//! - [`app`]: the router, middleware and server loop.
//! - [`cli`]: the `aipm` command line (`serve`, `keys`, `replay`, `audit`).

pub mod app;
pub mod auth;
pub mod budget_watch;
pub mod bulk;
pub mod cli;
pub mod consistency;
pub mod db;
pub mod error;
pub mod export_files;
pub mod exports;
pub mod extract;
pub mod gateway;
pub mod guardrails;
pub mod hardening;
pub mod idempotency;
pub mod incidents;
pub mod metrics;
pub mod openapi;
pub mod private_postgres;
pub mod prober;
pub mod request_id;
pub mod routes;
pub mod runs;
pub mod scheduler;
pub mod settings;
pub mod state;
pub mod telemetry;

pub use app::{build_router, serve};
pub use settings::Settings;
