//! Probes and operational views.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use domain::access::Permission;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(projection_lag))
}

// The types below describe the JSON the handlers build; the OpenAPI test validates real
// responses against them.

/// The process is up.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// Whether the server can serve requests.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Readiness {
    #[schema(example = "ready")]
    status: String,
    /// `ok` or `unreachable`.
    #[schema(example = "ok")]
    database: String,
}

/// Each projection's checkpoint and lag.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ProjectionLagList {
    projections: Vec<projections::lag::ProjectionLag>,
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    security(()),
    responses((status = 200, description = "The process is up", body = Health))
)]
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    security(()),
    responses(
        (status = 200, description = "Ready: the database answers", body = Readiness),
        (status = 503, description = "Not ready: the database does not answer", body = Readiness),
    )
)]
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
#[utoipa::path(
    get,
    path = "/v1/system/projections",
    tag = "system",
    responses((status = 200, description = "Each projection's checkpoint and lag", body = ProjectionLagList))
)]
async fn projection_lag(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Operate)?;
    let mut items = Vec::new();
    for projection in projections::all() {
        items.push(projections::lag::lag(&app.pool, projection.as_ref()).await?);
    }
    Ok(Json(json!({ "projections": items })))
}
