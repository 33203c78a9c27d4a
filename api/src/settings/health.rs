//! Provider health checks' settings.

/// Whether this process probes providers on their intervals (part of [`crate::Settings`],
/// and a flag of `aipm serve`). `POST /v1/health/checks/run` probes either way.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthSettings {
    /// Probe every enabled provider on its interval in the background (`false`: only when
    /// asked through `POST /v1/health/checks/run`).
    #[arg(
        long = "health-prober",
        env = "AIPM_HEALTH_PROBER",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub prober: bool,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self { prober: true }
    }
}
