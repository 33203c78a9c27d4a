//! The aipm HTTP API and command-line interface. This crate is the composition root: it
//! wires the write side (`commands`) and the read side (`projections`) together.
//!
//! # Layout
//! - [`cli`]: the `aipm` command line (`serve`, `keys`, `replay`, `audit`) and configuration;
//!   [`audit_cli`]: `aipm audit verify`.
//! - [`app`]: the router, middleware and server loop.
//! - [`routes`]: one module per resource; handlers stay thin.
//! - [`auth`]: API keys and the authenticated [`auth::Caller`].
//! - [`extract`]: JSON, path and query extractors whose rejections are problems, command
//!   metadata and `If-Match`.
//! - [`error`]: problem+json errors.
//! - [`idempotency`]: `Idempotency-Key` on command endpoints.
//! - [`openapi`]: the OpenAPI document generated from the routes (`/openapi.json`, `/docs`).
//! - [`db`]: connecting, creating the database and migrating.
//! - [`settings`]: the server's configuration.
//! - [`hardening`]: rate limits, brute-force protection, body limits, timeouts, load
//!   shedding, CORS and security headers.

pub mod app;
pub mod audit_cli;
pub mod auth;
pub mod cli;
pub mod db;
pub mod error;
pub mod extract;
pub mod hardening;
pub mod idempotency;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod settings;
pub mod state;
pub mod telemetry;

pub use app::{build_router, serve};
pub use settings::Settings;
