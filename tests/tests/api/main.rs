//! End-to-end tests: a real server on a fresh PostgreSQL database per test, over HTTP.

mod access;
mod categories;
mod concurrency;
mod errors;
mod global_order;
mod prompts;
mod rebuild;
mod relay;
mod runner;
