//! The HTTP application: routes, middleware and the server loop.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::settings::Settings;
use crate::state::{App, AppState};
use crate::{consistency, openapi, routes};

/// The full router on a ready application state.
pub fn build_router(state: AppState) -> Router {
    // Routes registered here through `utoipa_axum::routes!` are described in the OpenAPI
    // document by construction; `tests/api/openapi.rs` catches any that is not.
    let mut base = openapi::base();
    base.merge(routes::docs::DocsApi::openapi());
    let (api, mut document) = OpenApiRouter::with_openapi(base)
        .merge(routes::system::router())
        .merge(routes::prompts::router())
        .merge(routes::runs::router())
        .merge(routes::conversations::router())
        .merge(routes::categories::router())
        .merge(routes::providers::router())
        .merge(routes::models::router())
        .merge(routes::config::router())
        .merge(routes::schedules::router())
        .merge(routes::approvals::router())
        .merge(routes::budgets::router())
        .merge(routes::bulk::router())
        .merge(routes::exports::router())
        .merge(routes::flags::router())
        .merge(routes::keys::router())
        .merge(routes::audit::router())
        .merge(routes::rate_limits::router())
        .merge(routes::usage::router())
        .merge(routes::analytics::router())
        .merge(routes::experiments::router())
        .merge(routes::health::router())
        .merge(routes::incidents::router())
        .split_for_parts();
    // The live feed stays outside the idempotency layer, as it is not a command.
    let (feed, feed_document) = routes::feed::router().split_for_parts();
    document.merge(feed_document);
    // So does ingestion: a record's own id makes a re-sent one count once. It takes larger
    // bodies and draws on the ingestion rate budget.
    let (ingestion, ingestion_document) = routes::usage::ingestion_router().split_for_parts();
    document.merge(ingestion_document);
    let ingestion = crate::hardening::ingestion_routes(ingestion, &state.guards.settings);
    let document = openapi::finish(document);
    let routes = api
        .route_layer(axum::middleware::from_fn_with_state(
            state.idempotency_gate(),
            crate::idempotency::remember,
        ))
        .merge(feed)
        .merge(ingestion)
        .merge(routes::docs::router(&document))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    let routes = routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_your_writes,
        ))
        .route_layer(axum::middleware::from_fn(crate::metrics::mark_route));
    crate::hardening::protect(routes, &state.guards)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(
            // One line per answered request, in the request-id span (the current one here);
            // failures are logged where they are understood, so not again here.
            TraceLayer::new_for_http()
                .make_span_with(|_: &axum::extract::Request| tracing::Span::current())
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                )
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(axum::middleware::from_fn(crate::request_id::assign))
        .with_state(state)
}

/// Sets aside the wait `Aipm-Read-After` asks for (the authenticated caller runs it), and
/// adds `Aipm-Cursor` to the response of a request whose commands recorded events (see
/// [`crate::consistency`]).
async fn read_your_writes(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // A probe answers how the process is now: it never waits for the log.
    let probe = crate::hardening::overload::PROBES.contains(&request.uri().path());
    let asked = if probe {
        Ok(None)
    } else {
        consistency::read_after(request.headers())
    };
    let pending = match asked {
        Ok(Some(cursor)) => Some(consistency::PendingReadAfter::new(async move {
            app.read_after(cursor, consistency::READ_AFTER_TIMEOUT).await
        })),
        Ok(None) => None,
        Err(error) => Some(consistency::PendingReadAfter::new(async move { Err(error) })),
    };
    if let Some(pending) = pending {
        request.extensions_mut().insert(pending);
    }
    let written = consistency::Written::default();
    request.extensions_mut().insert(written.clone());
    let mut response = next.run(request).await;
    consistency::stamp(&mut response, &written);
    response
}

/// Starts projections on `pool` and serves the API on `listener` until the process is
/// asked to stop.
pub async fn serve(settings: Settings, pool: PgPool, listener: TcpListener) -> std::io::Result<()> {
    serve_until(settings, pool, listener, shutdown_signal()).await
}

/// [`serve`] until `shutdown` completes, then stops gracefully: live-feed subscriptions end
/// (they would otherwise hold the server open for ever) and other requests finish.
pub async fn serve_until(
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App::start(pool, &settings).await.map_err(std::io::Error::other)?;
    let state = AppState(Arc::new(app));
    // Stops with the server, as the relay does.
    let _scheduler = crate::scheduler::spawn(state.clone());
    let _bulk_runner = crate::bulk::runner::spawn(state.clone());
    let _export_runner = settings
        .exports
        .runner
        .then(|| crate::exports::runner::spawn(state.clone()));
    let _budget_watcher = crate::budget_watch::spawn(state.clone());
    let _guardrails = crate::guardrails::spawn(state.clone());
    let _metrics_server = match &settings.metrics_listen {
        Some(address) => Some(serve_metrics(state.clone(), address).await?),
        None => None,
    };
    let _prober = settings
        .health
        .prober
        .then(|| crate::prober::spawn(state.clone()));
    let feed = state.feed.clone();
    // Open connections hold the state after the server stops; the feed stops with it.
    let _relay = state.relay.as_ref().map(|relay| relay.stop_on_drop());
    // So do its candidacies: another process takes over what this one led.
    let _leading = StopLeading(state.clone());
    let router = build_router(state);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        feed.close();
    })
    .await
}

/// Ends a server's candidacies for the roles led by one process at a time when dropped.
struct StopLeading(AppState);

impl Drop for StopLeading {
    fn drop(&mut self) {
        self.0.projections.stop_leading();
        if let Some(anchoring) = &self.0.anchoring {
            anchoring.stop();
        }
        // Its claims on idempotency keys are then free for a retry on another process.
        self.0.presence.stop();
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

/// A server of `GET /metrics` alone; it stops when this is dropped.
struct MetricsServer(tokio::task::JoinHandle<()>);

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `GET /metrics` without a key on `address`, for a scraper on a private network.
async fn serve_metrics(state: AppState, address: &str) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {address} (AIPM_METRICS_LISTEN): {e}"),
        )
    })?;
    tracing::info!(%address, "serving metrics");
    let router = Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(state): axum::extract::State<AppState>| async move {
                    routes::system::metrics_response(&state).await
                },
            ),
        )
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state);
    Ok(MetricsServer(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics server stopped");
        }
    })))
}
