//! Idempotency keys' settings: how long keys live and how long an attempt holds one.

use std::time::Duration;

/// How long keys live and how long an attempt may hold one.
#[derive(Debug, Clone)]
pub struct IdempotencySettings {
    /// A key is forgotten this long after its first use (`AIPM_IDEMPOTENCY_TTL`).
    pub ttl: Duration,
    /// An attempt that has not answered after this long is presumed dead, and a retry takes
    /// it over. Longer than any request takes.
    pub lease: Duration,
    /// How often expired keys are deleted.
    pub cleanup_interval: Duration,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(30),
            cleanup_interval: Duration::from_secs(5 * 60),
        }
    }
}

/// Parses a duration such as `86400`, `250ms`, `90s`, `15m`, `24h` or `7d` (no unit:
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 60 * 60_000,
        "d" => 24 * 60 * 60_000,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
    };
    let millis = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .filter(|&ms| ms > 0)
        .ok_or_else(|| {
            format!("{text:?}: expected a positive whole number with an optional unit, e.g. 24h")
        })?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_an_optional_unit_and_must_be_positive() {
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "0", "h", "-1h", "1.5h", "1w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
