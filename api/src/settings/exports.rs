//! Export jobs' settings: where files go, how long they are kept, how many are written at once.

use std::path::PathBuf;
use std::time::Duration;

/// Where export files live and how they are written (part of [`crate::Settings`], and flags
/// of `aipm serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct ExportSettings {
    /// Directory export files are written to (created if missing). Every process serving
    /// the same database must see the same directory.
    #[arg(long = "export-dir", env = "AIPM_EXPORT_DIR", default_value = "exports")]
    pub dir: PathBuf,
    /// How long a finished export's file is kept before it is deleted (e.g. 7d, 12h).
    #[arg(long = "export-ttl", env = "AIPM_EXPORT_TTL", default_value = "7d", value_parser = super::idempotency::parse_duration)]
    pub ttl: Duration,
    /// Exports this process writes at once; more wait their turn.
    #[arg(long = "export-concurrency", env = "AIPM_EXPORT_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Write exports in this process (`false`: it only accepts and serves them, and other
    /// processes write them).
    #[arg(long = "export-runner", env = "AIPM_EXPORT_RUNNER", default_value_t = true, action = clap::ArgAction::Set)]
    pub runner: bool,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("exports"),
            ttl: Duration::from_secs(7 * 24 * 60 * 60),
            concurrency: 2,
            runner: true,
        }
    }
}
