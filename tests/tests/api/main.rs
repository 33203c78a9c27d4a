//! End-to-end tests: a real server on a fresh PostgreSQL database per test, over HTTP.

mod access;
mod audit;
mod categories;
mod concurrency;
mod errors;
mod feed;
mod global_order;
mod hardening;
mod idempotency;
mod openapi;
mod prompts;
mod rebuild;
mod relay;
mod runner;
