//! Security headers on every response. A JSON API has nothing to frame, embed, sniff or
//! run, so the defaults forbid all of it. A response that sets its own
//! `Content-Security-Policy` (an HTML docs page needs scripts and styles) keeps it, with
//! `frame-ancestors 'none'` added if it did not say otherwise.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The policy for responses that bring none: load nothing, be framed by nobody.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// One year, subdomains included; sent only when configured (behind TLS).
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

pub struct HeaderPolicy {
    pub hsts: bool,
}

/// Middleware applying [`HeaderPolicy`].
pub async fn secure(State(policy): State<Arc<HeaderPolicy>>, request: Request, next: Next) -> Response {
    // Anything answered to a request that carried credentials is private to its caller.
    let authenticated = request.headers().contains_key(header::AUTHORIZATION);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let csp = match headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
    {
        None => HeaderValue::from_static(DEFAULT_CSP),
        Some(own) if own.contains("frame-ancestors") => {
            HeaderValue::from_str(own).unwrap_or(HeaderValue::from_static(DEFAULT_CSP))
        }
        Some(own) => HeaderValue::from_str(&format!("{own}; frame-ancestors 'none'"))
            .unwrap_or(HeaderValue::from_static(DEFAULT_CSP)),
    };
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    if policy.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    if authenticated {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_page_with_its_own_policy_keeps_it_and_cannot_be_framed() {
        let docs = || async {
            (
                [(header::CONTENT_SECURITY_POLICY, "default-src 'self'")],
                "<html>",
            )
        };
        let app = Router::new()
            .route("/docs", get(docs))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(HeaderPolicy { hsts: false }),
                secure,
            ));
        let request = Request::builder().uri("/docs").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(
            response.headers()[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; frame-ancestors 'none'"
        );
        assert!(!response.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
    }
}
