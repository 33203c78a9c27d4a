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

/// `GET /readyz`: the database answers.
async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    match sqlx::query("select 1").execute(&app.pool).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok" })),
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
        items.push(projections::lag::lag(&app.pool, projection.as_ref()).await?);
    }
    Ok(Json(json!({ "projections": items })))
}
