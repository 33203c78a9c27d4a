//! The limits and security settings, and the `aipm serve` flags (with their environment
//! variables) that fill them.

use std::time::Duration;

use axum::http::HeaderValue;
use domain::access::RateLimit;

/// Limits, timeouts and browser-facing headers. `Default` is what a bare `aipm` runs with.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    /// Each API key's budget on command and read routes, unless the key has its own limit;
    /// `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Each API key's budget on ingestion routes (see [`crate::hardening::ingestion_routes`]).
    pub ingest_rate_limit: Option<RateLimit>,
    /// Failed authentications allowed per client address before it is refused outright.
    pub auth_failure_limit: Option<RateLimit>,
    /// Largest request body, in bytes, on command routes.
    pub body_limit: usize,
    /// Largest request body, in bytes, on ingestion routes.
    pub ingest_body_limit: usize,
    /// A request still unanswered after this long gets `503 timeout`; `None`: no limit.
    pub request_timeout: Option<Duration>,
    /// Requests handled at once before further ones are shed; `None`: no limit.
    pub max_in_flight: Option<usize>,
    /// Event streams (`/v1/events/…`) open at once.
    pub max_streams: usize,
    /// Origins allowed to call the API from a browser; empty: CORS is off.
    pub cors_origins: Vec<HeaderValue>,
    /// Send `Strict-Transport-Security` (only behind TLS).
    pub hsts: bool,
    /// Most rate-limit buckets (keys, client addresses) held in memory per limiter.
    pub max_tracked_clients: usize,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            rate_limit: Some(RateLimit {
                requests_per_second: 100.0,
                burst: 1_000,
            }),
            ingest_rate_limit: Some(RateLimit {
                requests_per_second: 1_000.0,
                burst: 5_000,
            }),
            auth_failure_limit: Some(RateLimit {
                requests_per_second: 10.0 / 60.0,
                burst: 20,
            }),
            body_limit: super::BODY_LIMIT,
            ingest_body_limit: 16 * 1024 * 1024,
            request_timeout: Some(Duration::from_secs(30)),
            max_in_flight: Some(64),
            max_streams: 1_000,
            cors_origins: Vec::new(),
            hsts: false,
            max_tracked_clients: 100_000,
        }
    }
}

/// `aipm serve` flags for [`SecuritySettings`]; every one can also be set in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Requests per second each API key may make by default (0: unlimited); a key's own
    /// limit (`PUT /v1/keys/{id}/rate-limit`) replaces it.
    #[arg(long, env = "AIPM_RATE_LIMIT_RPS", default_value = "100", value_parser = parse_rate)]
    pub rate_limit_rps: f64,
    /// Requests an API key may make at once before the rate applies.
    #[arg(long, env = "AIPM_RATE_LIMIT_BURST", default_value = "1000", value_parser = parse_burst)]
    pub rate_limit_burst: u32,
    /// Requests per second each API key may make on ingestion routes (0: unlimited).
    #[arg(long, env = "AIPM_INGEST_RATE_LIMIT_RPS", default_value = "1000", value_parser = parse_rate)]
    pub ingest_rate_limit_rps: f64,
    /// Burst on ingestion routes.
    #[arg(long, env = "AIPM_INGEST_RATE_LIMIT_BURST", default_value = "5000", value_parser = parse_burst)]
    pub ingest_rate_limit_burst: u32,
    /// Failed authentications a client address may make before it is refused (0: no limit).
    #[arg(long, env = "AIPM_AUTH_FAILURE_BURST", default_value_t = 20)]
    pub auth_failure_burst: u32,
    /// Failed authentications per minute a client address regains after that.
    #[arg(long, env = "AIPM_AUTH_FAILURES_PER_MINUTE", default_value = "10", value_parser = parse_rate)]
    pub auth_failures_per_minute: f64,
    /// Largest request body on command routes (bytes, or with KiB/MiB).
    #[arg(long, env = "AIPM_BODY_LIMIT", default_value = "1MiB", value_parser = parse_bytes)]
    pub body_limit: usize,
    /// Largest request body on ingestion routes.
    #[arg(long, env = "AIPM_INGEST_BODY_LIMIT", default_value = "16MiB", value_parser = parse_bytes)]
    pub ingest_body_limit: usize,
    /// Longest a request may take (e.g. 30s, 500ms; 0: no limit). Event streams are exempt.
    #[arg(long, env = "AIPM_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests handled at once; beyond it requests are refused at once with 503 (0: no
    /// limit). Probes and event streams are exempt.
    #[arg(long, env = "AIPM_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    /// Event streams (SSE, WebSocket) open at once.
    #[arg(long, env = "AIPM_MAX_STREAMS", default_value_t = 1000)]
    pub max_streams: usize,
    /// Comma-separated origins allowed to call the API from a browser (`*`: any); none: CORS off.
    #[arg(long, env = "AIPM_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<HeaderValue>,
    /// Send Strict-Transport-Security; only for deployments served over TLS.
    #[arg(long, env = "AIPM_HSTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub hsts: bool,
}

impl SecurityArgs {
    pub fn settings(&self) -> SecuritySettings {
        // The parsers above already refused anything `RateLimit::new` would.
        let limit = |requests_per_second: f64, burst: u32| {
            (requests_per_second > 0.0 && burst > 0).then_some(RateLimit {
                requests_per_second,
                burst,
            })
        };
        SecuritySettings {
            rate_limit: limit(self.rate_limit_rps, self.rate_limit_burst),
            ingest_rate_limit: limit(self.ingest_rate_limit_rps, self.ingest_rate_limit_burst),
            auth_failure_limit: limit(self.auth_failures_per_minute / 60.0, self.auth_failure_burst),
            body_limit: self.body_limit,
            ingest_body_limit: self.ingest_body_limit,
            request_timeout: (!self.request_timeout.is_zero()).then_some(self.request_timeout),
            max_in_flight: (self.max_in_flight > 0).then_some(self.max_in_flight),
            max_streams: self.max_streams,
            cors_origins: self.cors_origins.clone(),
            hsts: self.hsts,
            ..SecuritySettings::default()
        }
    }
}

/// A rate in requests per second: 0 (no limit) up to [`RateLimit::MAX`].
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate == 0.0 || RateLimit::new(rate, 1).is_ok() => Ok(rate),
        _ => Err(format!(
            "expected a number of requests per second from 0 to {}",
            RateLimit::MAX
        )),
    }
}

fn parse_burst(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(burst) if RateLimit::new(1.0, burst).is_ok() => Ok(burst),
        _ => Err(format!("expected a whole number from 1 to {}", RateLimit::MAX)),
    }
}

/// `1048576`, `512KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB`, read as binary units).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in {text:?}; use bytes, KiB, MiB or GiB")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a size such as 1048576 or 1MiB, not {text:?}"))
}

/// `30`, `30s`, `500ms`, `2m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        _ => return Err(format!("unknown unit in {text:?}; use ms, s or m")),
    };
    number
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * seconds_per_unit).ok())
        .ok_or_else(|| format!("expected a duration such as 30s or 500ms, not {text:?}"))
}

/// `https://app.example.com` (scheme and host, optional port, nothing else) or `*`.
fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    let text = text.trim();
    let valid = text == "*"
        || ["http://", "https://"].iter().any(|scheme| {
            text.strip_prefix(scheme).is_some_and(|host| {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
            })
        });
    if !valid {
        return Err(format!(
            "{text:?} is not an origin; expected e.g. https://app.example.com or *"
        ));
    }
    HeaderValue::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        security: SecurityArgs,
    }

    #[test]
    fn the_flag_defaults_are_the_settings_defaults() {
        let parsed = Flags::try_parse_from(["aipm"]).unwrap().security.settings();
        let default = SecuritySettings::default();
        assert_eq!(parsed.rate_limit, default.rate_limit);
        assert_eq!(parsed.ingest_rate_limit, default.ingest_rate_limit);
        assert_eq!(parsed.auth_failure_limit, default.auth_failure_limit);
        assert_eq!(parsed.body_limit, default.body_limit);
        assert_eq!(parsed.ingest_body_limit, default.ingest_body_limit);
        assert_eq!(parsed.request_timeout, default.request_timeout);
        assert_eq!(parsed.max_in_flight, default.max_in_flight);
        assert_eq!(parsed.max_streams, default.max_streams);
        assert!(parsed.cors_origins.is_empty());
        assert!(!parsed.hsts);
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let parsed = Flags::try_parse_from([
            "aipm",
            "--rate-limit-rps",
            "0",
            "--max-in-flight",
            "0",
            "--request-timeout",
            "0",
            "--auth-failure-burst",
            "0",
        ])
        .unwrap()
        .security
        .settings();
        assert_eq!(parsed.rate_limit, None);
        assert_eq!(parsed.max_in_flight, None);
        assert_eq!(parsed.request_timeout, None);
        assert_eq!(parsed.auth_failure_limit, None);
    }

    #[test]
    fn sizes_durations_and_origins_parse_or_say_what_is_wrong() {
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("2048"), Ok(2048));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1 parsec").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_origin("https://app.example.com:8443").is_ok());
        assert!(parse_origin("*").is_ok());
        assert!(parse_origin("app.example.com").is_err());
        assert!(parse_origin("https://app.example.com/path").is_err());
        assert!(Flags::try_parse_from(["aipm", "--rate-limit-burst", "0"]).is_err());
        assert!(Flags::try_parse_from(["aipm", "--rate-limit-rps", "-1"]).is_err());
    }
}
