//! Admission: a bounded number of requests in flight, the rest refused at once with
//! `503 overloaded` and `Retry-After` instead of queueing without bound, and a deadline on
//! every request (`503 timeout`). Probes are never shed, so that an overloaded instance is
//! not also reported dead. Event streams (`/v1/events/…`) live for as long as the client
//! listens: they are exempt from both and capped by their own count instead.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::settings::SecuritySettings;

/// Paths under this prefix are long-lived event streams.
pub const STREAM_PREFIX: &str = "/v1/events/";
/// Liveness and readiness probes.
pub const PROBES: [&str; 2] = ["/healthz", "/readyz"];

pub struct Admission {
    in_flight: Option<Arc<Semaphore>>,
    streams: Arc<Semaphore>,
    timeout: Option<Duration>,
}

impl Admission {
    pub fn new(settings: &SecuritySettings) -> Self {
        Self {
            in_flight: settings.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            streams: Arc::new(Semaphore::new(settings.max_streams)),
            timeout: settings.request_timeout,
        }
    }
}

/// A place among the open event streams, held until the stream's response body ends.
///
/// It is also in the request's extensions: a WebSocket handler, whose connection outlives
/// the (empty) upgrade response, takes it (`Extension<StreamPermit>`) and moves it into the
/// socket's task, so that the place is held until the socket closes.
#[derive(Clone)]
pub struct StreamPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

enum Route {
    Probe,
    Stream,
    Other,
}

fn route(path: &str) -> Route {
    if PROBES.contains(&path) {
        Route::Probe
    } else if path.starts_with(STREAM_PREFIX) {
        Route::Stream
    } else {
        Route::Other
    }
}

/// Middleware applying [`Admission`].
pub async fn admit(State(admission): State<Arc<Admission>>, mut request: Request, next: Next) -> Response {
    let _in_flight = match route(request.uri().path()) {
        Route::Stream => {
            let Ok(permit) = admission.streams.clone().try_acquire_owned() else {
                return ApiError::TooManyStreams.into_response();
            };
            let permit = StreamPermit(Arc::new(permit));
            request.extensions_mut().insert(permit.clone());
            let response = next.run(request).await;
            // A refusal is answered whole: only a stream that started holds its place (and
            // keeps its length-delimited body, which clients read before any upgrade).
            if !response.status().is_success() {
                return response;
            }
            return response.map(|body| held_until_done(body, permit));
        }
        Route::Probe => None,
        Route::Other => match &admission.in_flight {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                // Shed without logging each one: under overload a log line per refusal
                // would add to the load.
                Err(_) => return ApiError::Overloaded.into_response(),
            },
        },
    };
    let Some(limit) = admission.timeout else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%method, %path, seconds = limit.as_secs_f64(), "request timed out");
            ApiError::Timeout { after: limit }.into_response()
        }
    }
}

/// `body`, keeping `permit` until it has been sent in full or dropped.
fn held_until_done(body: Body, permit: StreamPermit) -> Body {
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn app(settings: SecuritySettings) -> Router {
        let admission = Arc::new(Admission::new(&settings));
        // Slower to start than the timeout, and then never ending, as an idle event stream.
        let endless = || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Body::from_stream(futures::stream::pending::<Result<String, std::io::Error>>())
        };
        Router::new()
            .route("/v1/events/stream", get(endless))
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(3600))))
            .route("/healthz", get(|| async { "ok" }))
            .route("/fast", get(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(admission, admit))
    }

    fn get_request(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn streams_are_capped_by_their_own_count_and_never_time_out() {
        let app = app(SecuritySettings {
            max_streams: 1,
            max_in_flight: Some(1),
            request_timeout: Some(Duration::from_millis(50)),
            ..SecuritySettings::default()
        });
        let open = app
            .clone()
            .oneshot(get_request("/v1/events/stream"))
            .await
            .unwrap();
        assert_eq!(open.status(), 200, "streams are not timed out");
        let second = app
            .clone()
            .oneshot(get_request("/v1/events/stream"))
            .await
            .unwrap();
        assert_eq!(second.status(), 503);
        // The open stream holds no in-flight place: another request is still admitted.
        let other = app.clone().oneshot(get_request("/fast")).await.unwrap();
        assert_eq!(other.status(), 200);
        drop(open);
        let reopened = app.oneshot(get_request("/v1/events/stream")).await.unwrap();
        assert_eq!(reopened.status(), 200, "closing a stream frees its place");
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_limit_are_shed_but_probes_pass() {
        let app = app(SecuritySettings {
            max_in_flight: Some(1),
            request_timeout: None,
            ..SecuritySettings::default()
        });
        let slow = tokio::spawn(app.clone().oneshot(get_request("/slow")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = app.clone().oneshot(get_request("/slow")).await.unwrap();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
        assert_eq!(
            app.clone()
                .oneshot(get_request("/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
        slow.abort();
        let _ = slow.await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let admitted =
            tokio::time::timeout(Duration::from_millis(50), app.oneshot(get_request("/slow"))).await;
        assert!(
            admitted.is_err(),
            "the place is free again: the request runs (and is slow)"
        );
    }
}
