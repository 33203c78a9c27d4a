//! Limits and hardening around every route: rate limits per API key, brute-force
//! protection of authentication, body limits, request timeouts, shedding of load beyond
//! capacity, CORS and security headers.
//!
//! - [`settings`]: what is configurable, and the `aipm serve` flags for it.
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
pub mod settings;
pub mod token_bucket;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, Method};
use axum::{Extension, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth_failures::{AuthFailure, AuthFailureLimiter};
pub use overload::StreamPermit;
pub use rate_limit::{RateLimitSlot, RateLimiter, RouteBudget};
pub use settings::{SecurityArgs, SecuritySettings};

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
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                rate_limit::LIMIT,
                rate_limit::REMAINING,
                rate_limit::RESET,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

    use crate::extract::ApiJson;

    async fn post_bytes(app: &Router, path: &str, size: usize) -> (StatusCode, serde_json::Value) {
        let body = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(size) })).unwrap();
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn ingestion_routes_take_larger_bodies_than_command_routes() {
        let settings = SecuritySettings {
            body_limit: 1_000,
            ingest_body_limit: 10_000,
            ..SecuritySettings::default()
        };
        let guards = Guards::new(&settings);
        let echo = || post(|ApiJson(value): ApiJson<serde_json::Value>| async move { axum::Json(value) });
        let routes = Router::new().route("/v1/prompts", echo()).merge(ingestion_routes(
            Router::new().route("/v1/usage", echo()),
            &settings,
        ));
        let app = protect(routes, &guards);

        let (status, problem) = post_bytes(&app, "/v1/prompts", 5_000).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(problem["type"], "/problems/payload-too-large");
        assert!(
            problem["detail"].as_str().unwrap().contains("1000 bytes"),
            "{problem}"
        );
        assert_eq!(post_bytes(&app, "/v1/usage", 5_000).await.0, StatusCode::OK);
        let (status, problem) = post_bytes(&app, "/v1/usage", 20_000).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            problem["detail"].as_str().unwrap().contains("10000 bytes"),
            "{problem}"
        );
    }
}
