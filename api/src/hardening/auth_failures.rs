//! Brute-force protection: failed authentications are counted per client address in a
//! token bucket; an address that has used up its failures is refused with 429 before its
//! key is even looked up, until the bucket refills. Every failure is logged with the
//! address and the reason, never with the key.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use domain::access::RateLimit;

use super::token_bucket::KeyedBuckets;
use crate::error::ApiError;
use crate::settings::SecuritySettings;

/// Why a request did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header: not counted, since it guesses nothing.
    MissingKey,
    /// An `Authorization` header that is not `Bearer <key>`.
    NotBearer,
    /// A bearer token that cannot be an aipm key.
    MalformedKey,
    /// A well-formed key that is unknown or revoked.
    UnknownKey,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingKey => "no API key",
            AuthFailure::NotBearer => "not a bearer token",
            AuthFailure::MalformedKey => "malformed API key",
            AuthFailure::UnknownKey => "unknown or revoked API key",
        }
    }

    fn counts(self) -> bool {
        self != AuthFailure::MissingKey
    }
}

pub struct AuthFailureLimiter {
    limit: Option<RateLimit>,
    buckets: KeyedBuckets<IpAddr>,
}

impl AuthFailureLimiter {
    pub fn new(settings: &SecuritySettings) -> Self {
        Self {
            limit: settings.auth_failure_limit,
            buckets: KeyedBuckets::new(settings.max_tracked_clients),
        }
    }

    /// Refuses an address that has no failures left, before any key lookup.
    pub fn check(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(limit), Some(address)) = (self.limit, address) else {
            return Ok(());
        };
        let outcome = self.buckets.peek(&client_network(address), limit, Instant::now());
        if outcome.allowed {
            return Ok(());
        }
        tracing::info!(client_addr = %address, "authentication refused: too many failures from this address");
        Err(ApiError::TooManyFailedAuthentications {
            retry_after: outcome.retry_after_secs(),
        })
    }

    /// Logs and counts a failure; the error to answer with.
    pub fn fail(&self, address: Option<IpAddr>, failure: AuthFailure) -> ApiError {
        let shown = address.map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        if failure.counts() {
            tracing::warn!(client_addr = %shown, reason = failure.as_str(), "authentication failed");
            if let (Some(limit), Some(address)) = (self.limit, address) {
                self.buckets.take(&client_network(address), limit, Instant::now());
            }
        } else {
            tracing::info!(client_addr = %shown, reason = failure.as_str(), "authentication failed");
        }
        ApiError::Unauthorized
    }
}

/// The unit an attacker controls: one IPv4 address, or one IPv6 /64 (a single host is
/// commonly handed a whole /64).
fn client_network(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32) -> AuthFailureLimiter {
        AuthFailureLimiter::new(&SecuritySettings {
            auth_failure_limit: Some(RateLimit {
                requests_per_second: 0.001,
                burst,
            }),
            ..SecuritySettings::default()
        })
    }

    #[test]
    fn an_address_is_refused_once_its_failures_are_used_up() {
        let limiter = limiter(2);
        let attacker: IpAddr = "192.0.2.7".parse().unwrap();
        let bystander: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..2 {
            assert!(limiter.check(Some(attacker)).is_ok());
            limiter.fail(Some(attacker), AuthFailure::UnknownKey);
        }
        assert!(matches!(
            limiter.check(Some(attacker)),
            Err(ApiError::TooManyFailedAuthentications { retry_after }) if retry_after > 0
        ));
        assert!(limiter.check(Some(bystander)).is_ok());
    }

    #[test]
    fn requests_without_a_key_are_not_counted() {
        let limiter = limiter(1);
        let address: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..5 {
            limiter.fail(Some(address), AuthFailure::MissingKey);
        }
        assert!(limiter.check(Some(address)).is_ok());
    }

    #[test]
    fn one_ipv6_host_is_one_slash_64_and_mapped_ipv4_is_ipv4() {
        let limiter = limiter(1);
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_network: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        limiter.fail(Some(first), AuthFailure::MalformedKey);
        assert!(limiter.check(Some(same_network)).is_err());
        assert!(limiter.check(Some("2001:db8:1:3::1".parse().unwrap())).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_network(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
