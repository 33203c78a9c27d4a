//! Rate limiting per API key: a token bucket per key and route group, refilled at the
//! key's own limit when it has one (an event-sourced setting, read with the key on every
//! request, so a change applies to the next request) and at the server's default otherwise.
//!
//! The limit is charged where the key is known, when the handler authenticates the caller
//! ([`crate::auth::Caller`]); [`headers`] then reports the bucket on the response in the
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` fields of the IETF draft
//! (draft-ietf-httpapi-ratelimit-headers): the burst, the whole requests left, and the
//! seconds until the bucket is full again.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use domain::access::RateLimit;
use uuid::Uuid;

use super::token_bucket::{KeyedBuckets, Outcome};
use crate::settings::SecuritySettings;

/// Which budget a route draws on. Ingestion routes set [`RouteBudget::Ingestion`] through
/// [`super::ingestion_routes`]; every other route uses the standard one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteBudget {
    #[default]
    Standard,
    Ingestion,
}

/// The per-key buckets of both route groups.
pub struct RateLimiter {
    standard_default: Option<RateLimit>,
    ingestion_default: Option<RateLimit>,
    standard: KeyedBuckets<Uuid>,
    ingestion: KeyedBuckets<Uuid>,
}

impl RateLimiter {
    pub fn new(settings: &SecuritySettings) -> Self {
        Self {
            standard_default: settings.rate_limit,
            ingestion_default: settings.ingest_rate_limit,
            standard: KeyedBuckets::new(settings.max_tracked_clients),
            ingestion: KeyedBuckets::new(settings.max_tracked_clients),
        }
    }

    /// Charges one request of `key_id` to `budget`. A key's own limit replaces the default
    /// of either group (each group still counts separately). `None`: not limited.
    pub fn charge(&self, key_id: Uuid, own_limit: Option<RateLimit>, budget: RouteBudget) -> Option<Outcome> {
        let (default, buckets) = match budget {
            RouteBudget::Standard => (self.standard_default, &self.standard),
            RouteBudget::Ingestion => (self.ingestion_default, &self.ingestion),
        };
        let limit = own_limit.or(default)?;
        Some(buckets.take(&key_id, limit, Instant::now()))
    }
}

/// Where the authenticating extractor leaves the request's [`Outcome`] for [`headers`].
#[derive(Debug, Clone, Default)]
pub struct RateLimitSlot(Arc<OnceLock<Outcome>>);

impl RateLimitSlot {
    pub fn record(&self, outcome: Outcome) {
        // The first charge of a request is the one that counts.
        let _ = self.0.set(outcome);
    }
}

pub const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Middleware: `RateLimit-*` on every response to a rate-limited request, refused or not.
pub async fn headers(mut request: Request, next: Next) -> Response {
    let slot = RateLimitSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(outcome) = slot.0.get() {
        let headers = response.headers_mut();
        headers.insert(LIMIT, HeaderValue::from(outcome.limit));
        headers.insert(REMAINING, HeaderValue::from(outcome.remaining));
        headers.insert(RESET, HeaderValue::from(outcome.reset_secs()));
    }
    response
}
