//! Probes and operational views.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use domain::access::Permission;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/system/projections", get(projection_lag))
}

/// `GET /healthz`: the process is up.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers. The NATS feed is reported but does not decide
/// readiness: commands work without it, and it catches up when NATS is back.
async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    match sqlx::query("select 1").execute(&app.pool).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok", "nats_feed": nats_feed(&app).await })),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "database": "unreachable" })),
            )
        }
    }
}

/// `GET /v1/system/projections`: each projection's checkpoint and lag (admins: the
/// figures count every tenant's events).
async fn projection_lag(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Operate)?;
    let mut items = Vec::new();
    for projection in projections::all() {
        items.push(json!(projections::lag::lag(&app.pool, projection.name()).await?));
    }
    if let Some(relay) = &app.relay {
        items.push(json!(relay.report(&app.pool).await?));
    }
    Ok(Json(json!({ "projections": items })))
}

/// The NATS feed's state and lag for `/readyz`.
async fn nats_feed(app: &AppState) -> serde_json::Value {
    match &app.relay {
        None => json!({ "status": "off" }),
        Some(relay) => match relay.report(&app.pool).await {
            Ok(report) => json!(report),
            Err(error) => {
                tracing::warn!(%error, "could not read the NATS feed's lag");
                json!({ "status": "unknown" })
            }
        },
    }
}
