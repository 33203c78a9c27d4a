//! Shared helpers for aipm's end-to-end tests and its load generator: a real server on a
//! fresh PostgreSQL database, a typed HTTP client for it, and a fake LLM provider.

pub mod exports;
pub mod fake_provider;
pub mod harness;
pub mod nats;
pub mod postgres;
