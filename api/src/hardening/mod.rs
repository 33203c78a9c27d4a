//! Limits and hardening around every route: rate limits per API key, brute-force
//! protection of authentication, body limits, request timeouts, shedding of load beyond
//! capacity, CORS and security headers.
//!
//! What is configurable lives in [`crate::settings::security`].
//!
//! - [`token_bucket`]: the in-memory, bounded buckets the limiters share.
//! - [`rate_limit`]: per-key budgets and the `RateLimit-*` headers.
//! - [`auth_failures`]: failed authentications per client address.
//! - [`overload`]: in-flight limit, stream cap and timeouts.
//! - [`headers`]: security headers.
//!
//! Ingestion routes get a larger body limit and their own rate budget by being mounted
//! through [`ingestion_routes`].

pub mod auth_failures;
pub mod headers;
pub mod overload;
pub mod rate_limit;
pub mod token_bucket;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, Method};
use axum::{Extension, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::settings::SecuritySettings;

pub use auth_failures::{AuthFailure, AuthFailureLimiter};
pub use overload::StreamPermit;
pub use rate_limit::{RateLimitSlot, RateLimiter, RouteBudget};

/// The largest body the route accepts, for the 413 problem to name.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The limiters a running server shares across requests.
pub struct Guards {
    pub settings: SecuritySettings,
    pub rate_limits: RateLimiter,
    pub auth_failures: AuthFailureLimiter,
    admission: Arc<overload::Admission>,
}

impl Guards {
    pub fn new(settings: &SecuritySettings) -> Self {
        Self {
            settings: settings.clone(),
            rate_limits: RateLimiter::new(settings),
            auth_failures: AuthFailureLimiter::new(settings),
            admission: Arc::new(overload::Admission::new(settings)),
        }
    }
}

/// Wraps every route of `routes` in the limits and headers of `guards`, from the inside
/// out: body limit, rate-limit headers, admission (shedding, timeout), CORS, security
/// headers, so that refusals carry CORS and security headers too.
pub fn protect<S: Clone + Send + Sync + 'static>(routes: Router<S>, guards: &Guards) -> Router<S> {
    let settings = &guards.settings;
    let mut routes = routes
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(Extension(BodyLimit(settings.body_limit)))
        .layer(axum::middleware::from_fn(rate_limit::headers))
        .layer(axum::middleware::from_fn_with_state(
            guards.admission.clone(),
            overload::admit,
        ));
    if let Some(cors) = cors(&settings.cors_origins) {
        routes = routes.layer(cors);
    }
    routes.layer(axum::middleware::from_fn_with_state(
        Arc::new(headers::HeaderPolicy { hsts: settings.hsts }),
        headers::secure,
    ))
}

/// The route-group hook for usage ingestion: its routes accept bodies up to
/// `AIPM_INGEST_BODY_LIMIT` and draw on the ingestion rate budget. Mount them with
/// `.merge(hardening::ingestion_routes(routes::usage::router(), &state.guards.settings))`.
pub fn ingestion_routes<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    settings: &SecuritySettings,
) -> Router<S> {
    routes
        .layer(DefaultBodyLimit::max(settings.ingest_body_limit))
        .layer(Extension(BodyLimit(settings.ingest_body_limit)))
        .layer(Extension(RouteBudget::Ingestion))
}

/// CORS for `origins` (`*`: any); `None` when there are none, which leaves CORS off.
fn cors(origins: &[axum::http::HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-reason"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
                crate::consistency::READ_AFTER_HEADER,
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                crate::consistency::CURSOR_HEADER,
                rate_limit::LIMIT,
                rate_limit::REMAINING,
                rate_limit::RESET,
            ])
            .max_age(Duration::from_secs(600)),
    )
}
