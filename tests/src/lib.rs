//! Shared helpers for aipm's end-to-end tests and its load generator: a real server on a
//! fresh PostgreSQL database, and a typed HTTP client for it.

pub mod exports;
pub mod harness;
pub mod nats;
pub mod postgres;
