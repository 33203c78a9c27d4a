//! How the gateway calls models: how long it waits, how often it tries again.

use std::time::Duration;

use super::idempotency::parse_duration;

/// The model gateway's timing (part of [`crate::Settings`], and flags of `aipm serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewaySettings {
    /// Longest wait for a provider's answer to begin, and between two parts of a streamed one.
    #[arg(long = "gateway-timeout", env = "AIPM_GATEWAY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Longest wait for a connection to a provider.
    #[arg(long = "gateway-connect-timeout", env = "AIPM_GATEWAY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Tries of a model after its first, on a rate limit (429), a server error (5xx), a
    /// timeout or a broken connection; then its fallback is tried.
    #[arg(long = "gateway-retries", env = "AIPM_GATEWAY_RETRIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
    /// The first wait before trying again when the provider does not say (`Retry-After`);
    /// doubled at each try.
    #[arg(long = "gateway-backoff", env = "AIPM_GATEWAY_BACKOFF", default_value = "200ms", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Longest wait before trying a model again: when `Retry-After` asks for more, the
    /// fallback is tried at once instead.
    #[arg(long = "gateway-max-retry-wait", env = "AIPM_GATEWAY_MAX_RETRY_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub max_retry_wait: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(200),
            max_retry_wait: Duration::from_secs(10),
        }
    }
}
