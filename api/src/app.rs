//! The HTTP application: routes, middleware and the server loop.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::routes;
use crate::settings::Settings;
use crate::state::{App, AppState};

/// Largest accepted request body for commands.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The full router on a ready application state.
pub fn build_router(state: AppState) -> Router {
    Router::new()
        .merge(routes::system::router())
        .merge(routes::prompts::router())
        .merge(routes::categories::router())
        .merge(routes::keys::router())
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(crate::request_id::assign))
        .with_state(state)
}

/// Starts projections on `pool` and serves the API on `listener` until the process is
/// asked to stop.
pub async fn serve(settings: Settings, pool: PgPool, listener: TcpListener) -> std::io::Result<()> {
    let state = AppState(Arc::new(App::start(pool, &settings)));
    // Open connections hold the state after the server stops; the feed stops with it.
    let _relay = state.relay.as_ref().map(|relay| relay.stop_on_drop());
    let router = build_router(state);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
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
