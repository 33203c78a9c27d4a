//! Export jobs: reports written to files in the background (kept in
//! [`crate::export_files`]).
//!
//! - [`reports`]: what each report holds, read from the log and the telemetry at one point.
//! - [`runner`]: takes up queued and interrupted jobs, writes their files, deletes expired
//!   ones.

pub mod reports;
pub mod runner;
