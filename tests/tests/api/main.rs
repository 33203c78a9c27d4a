//! End-to-end tests: a real server on a fresh PostgreSQL database per test, over HTTP.

// Tests hold transactions open on purpose, and nothing cancels them while BEGIN is in flight.
#![allow(clippy::disallowed_methods)]

mod access;
mod approvals;
mod audit;
mod backup;
mod budgets;
mod bulk;
mod categories;
mod concurrency;
mod config;
mod conversations;
mod durability;
mod errors;
mod experiments;
mod export_catalog_audit;
mod export_health_experiments;
mod exports;
mod feed;
mod flags;
mod gateway;
mod global_order;
mod hardening;
mod health;
mod idempotency;
mod incidents;
mod instances;
mod openapi;
mod process;
mod prompts;
mod rebuild;
mod registry;
mod relay;
mod restore;
mod runner;
mod schema_evolution;
mod usage;
