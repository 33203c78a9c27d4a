//! `Idempotency-Key` on command endpoints (POST, PUT, PATCH and DELETE under `/v1/`): the
//! HTTP half of [`commands::idempotency`], whose module doc explains the design.
//!
//! A request with a key is authenticated, its body buffered and fingerprinted, and the key
//! claimed for the caller's API key. Then:
//! - a first request runs the handler in a task of its own (so that a client hanging up
//!   does not cancel it half-way) and stores the response for retries;
//! - a retry of a request that answered gets that answer again, with
//!   `Idempotent-Replayed: true`, and runs nothing;
//! - the same key on a different request (method, path, `If-Match`, `X-Reason`,
//!   `Content-Type` or body) is a 422 `idempotency-key-reused`;
//! - a retry while the first attempt is still running is a 409 `idempotency-in-progress`
//!   with `Retry-After`, as draft-ietf-httpapi-idempotency-key-header prescribes: no request
//!   queues behind another, so a burst of retries costs nothing but a lookup each;
//! - a retry after the first attempt died (its lease ran out) takes the claim over and
//!   re-runs the handler, whose command then returns what the first attempt committed
//!   ([`apply_once`]) instead of running again, so the response is rendered from the
//!   committed outcome.
//!
//! Responses worth retrying are not stored (5xx, 408, 429, and any marked
//! [`crate::error::Retryable`], such as a command that lost its race against concurrent
//! writers): the claim is released and a retry runs again (safe, since a committed outcome is
//! found rather than re-applied).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use commands::idempotency::{Attempt, Claim, IdempotencyScope, IdempotencyStore, StoredResponse};
use futures::FutureExt;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::auth::{Authenticator, Caller};
use crate::error::{ApiError, ApiResult, Retryable};

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";
/// Set on a response that repeats a stored one.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;
/// Response headers a replay repeats; the rest are per request (request id) or added by
/// outer layers on every response anyway.
const REPLAYED_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::LOCATION];
/// Largest response body kept for replay (command responses are far smaller).
const MAX_STORED_BODY: usize = 16 * 1024 * 1024;

/// A request holding the claim on its idempotency key; [`crate::extract::CommandContext`]
/// takes the caller and the key from it.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub caller: Caller,
    pub scope: IdempotencyScope,
    pub attempt: Attempt,
}

/// A response extension saying what a replay answers instead of this response, for one
/// that must not be stored (it shows a secret once).
#[derive(Clone)]
pub struct ReplayAs(Arc<dyn Fn() -> Response + Send + Sync>);

impl ReplayAs {
    pub fn new(render: impl Fn() -> Response + Send + Sync + 'static) -> Self {
        Self(Arc::new(render))
    }
}

/// What the middleware needs: the keys' store, and authentication (a key is scoped to the
/// API key that sent it).
#[derive(Clone)]
pub struct IdempotencyGate {
    pub store: IdempotencyStore,
    pub authenticator: Authenticator,
}

impl FromRef<IdempotencyGate> for Authenticator {
    fn from_ref(gate: &IdempotencyGate) -> Self {
        gate.authenticator.clone()
    }
}

/// Middleware for the command routes: see the module doc.
pub async fn remember(State(gate): State<IdempotencyGate>, request: Request, next: Next) -> Response {
    if !is_command(request.method()) || !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let key = match parse_key(request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) => return next.run(request).await,
        Err(error) => return error.into_response(),
    };
    claim_and_run(gate, key, request, next)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn is_command(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
}

/// The key, if sent: 1 to 255 visible ASCII characters, in one header.
fn parse_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey("must be sent only once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(ApiError::InvalidIdempotencyKey("must not be empty"));
    }
    if bytes.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey("must be at most 255 characters"));
    }
    if !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(ApiError::InvalidIdempotencyKey(
            "must be visible ASCII characters only (no spaces or control characters)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

async fn claim_and_run(
    gate: IdempotencyGate,
    key: String,
    request: Request,
    next: Next,
) -> ApiResult<Response> {
    let (mut parts, body) = request.into_parts();
    let caller = Caller::from_request_parts(&mut parts, &gate).await?;
    let body = read_body(&parts, body).await?;
    let scope = IdempotencyScope {
        tenant: caller.tenant.clone(),
        owner: caller.key_id.to_string(),
        key,
    };
    match gate.store.claim(&scope, &fingerprint(&parts, &body)).await? {
        Claim::Mismatch => Err(ApiError::IdempotencyKeyReused),
        Claim::InFlight { retry_after } => Err(ApiError::IdempotencyInProgress {
            retry_after: retry_after.as_secs().max(1),
        }),
        Claim::Completed(stored) => Ok(replay(stored)),
        Claim::Acquired(attempt) => {
            parts.extensions.insert(IdempotentRequest {
                caller,
                scope: scope.clone(),
                attempt,
            });
            let request = Request::from_parts(parts, Body::from(body));
            // Runs to the end even if the client hangs up: its retry gets the stored answer.
            let run = run_and_store(gate.store, scope, attempt, request, next).in_current_span();
            tokio::spawn(run)
                .await
                .map_err(|error| ApiError::Internal(format!("idempotent request task failed: {error}")))
        }
    }
}

/// The body, within the route's body limit.
async fn read_body(parts: &Parts, body: Body) -> ApiResult<Bytes> {
    // The limit travels in the request's extensions (`DefaultBodyLimit`).
    let mut limited = Request::new(body);
    *limited.extensions_mut() = parts.extensions.clone();
    Bytes::from_request(limited, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: parts
                    .extensions
                    .get::<crate::hardening::BodyLimit>()
                    .map_or(crate::settings::BODY_LIMIT, |limit| limit.0),
            }
        } else {
            ApiError::MalformedBody(rejection.body_text())
        }
    })
}

/// SHA-256 of what makes two requests the same request; newlines cannot occur in any part
/// but the body, which comes last.
fn fingerprint(parts: &Parts, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str());
    hash.update(b"\n");
    hash.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    for name in [
        header::IF_MATCH.as_str(),
        "x-reason",
        header::CONTENT_TYPE.as_str(),
    ] {
        hash.update(b"\n");
        if let Some(value) = parts.headers.get(name) {
            hash.update(value.as_bytes());
        }
    }
    hash.update(b"\n");
    hash.update(body);
    hex::encode(hash.finalize())
}

async fn run_and_store(
    store: IdempotencyStore,
    scope: IdempotencyScope,
    attempt: Attempt,
    request: Request,
    next: Next,
) -> Response {
    let release = |reason: &'static str| {
        let store = store.clone();
        let scope = scope.clone();
        async move {
            if let Err(error) = store.release(&scope, attempt.id).await {
                tracing::warn!(%error, reason, "could not release an idempotency key; it frees itself when its lease ends");
            }
        }
    };
    let Ok(response) = AssertUnwindSafe(next.run(request)).catch_unwind().await else {
        release("the handler panicked").await;
        return ApiError::Internal("the request handler panicked".into()).into_response();
    };
    let status = response.status();
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || response.extensions().get::<Retryable>().is_some()
    {
        release("a response worth retrying").await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = to_bytes(body, MAX_STORED_BODY).await else {
        release("an unreadable response body").await;
        return ApiError::Internal("the response body could not be read".into()).into_response();
    };
    let stored = match parts.extensions.get::<ReplayAs>() {
        Some(ReplayAs(render)) => stored(render()).await,
        None => Some(stored_parts(parts.status, &parts.headers, body.clone())),
    };
    let Some(stored) = stored else {
        release("an unreadable replacement response").await;
        return ApiError::Internal("the replay response could not be rendered".into()).into_response();
    };
    match store.complete(&scope, attempt.id, &stored).await {
        Ok(true) => {}
        Ok(false) => tracing::info!("another attempt took this idempotency key over; it stores the answer"),
        // The claim is kept until its lease ends; the retry after that rebuilds the answer
        // from the committed outcome.
        Err(error) => tracing::warn!(%error, "could not store the response of an idempotent request"),
    }
    Response::from_parts(parts, Body::from(body))
}

async fn stored(response: Response) -> Option<StoredResponse> {
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, MAX_STORED_BODY).await.ok()?;
    Some(stored_parts(parts.status, &parts.headers, body))
}

fn stored_parts(status: StatusCode, headers: &HeaderMap, body: Bytes) -> StoredResponse {
    let headers = REPLAYED_HEADERS
        .iter()
        .flat_map(|name| headers.get_all(name).iter().map(move |value| (name, value)))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    StoredResponse {
        status: status.as_u16(),
        headers,
        body: body.to_vec(),
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(stored.body)).into_response();
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Deletes expired keys every `every`, for as long as the runtime runs.
pub fn spawn_cleanup(store: IdempotencyStore, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.delete_expired().await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "deleted expired idempotency keys"),
                Err(error) => tracing::warn!(%error, "could not delete expired idempotency keys"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_header_of_visible_ascii_up_to_255_characters() {
        let headers = |values: &[&[u8]]| {
            let mut map = HeaderMap::new();
            for value in values {
                map.append(HEADER, HeaderValue::from_bytes(value).unwrap());
            }
            map
        };
        assert_eq!(parse_key(&headers(&[])).unwrap(), None);
        assert_eq!(
            parse_key(&headers(&[b"order-42"])).unwrap().as_deref(),
            Some("order-42")
        );
        let longest = "k".repeat(MAX_KEY_LEN);
        assert!(parse_key(&headers(&[longest.as_bytes()])).is_ok());
        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [
            &[b"" as &[u8]][..],
            &[too_long.as_bytes()],
            &[b"a b"],
            &[b"a\tb"],
            &[b"caf\xc3\xa9"],
            &[b"a", b"b"],
        ] {
            assert!(
                matches!(parse_key(&headers(bad)), Err(ApiError::InvalidIdempotencyKey(_))),
                "{bad:?}"
            );
        }
    }
}
