//! Provider health: each provider's state with its recent probes and uptime, and running the
//! checks now. How a provider is probed is set on the provider
//! (`PUT /v1/providers/{id}/health-check`); the state rule is `domain::health::assess`.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use domain::access::Permission;
use projections::health::queries::{self as health, ProviderHealthView};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::CommandContext;
use crate::prober::{self, CheckResult};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provider_health))
        .routes(routes!(run_checks))
}

/// The tenant's providers' health, by name.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `provider_health` builds
struct HealthList {
    items: Vec<ProviderHealthView>,
}

/// What a run of the checks found, one result per enabled provider, by name.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `run_checks` builds
struct CheckList {
    items: Vec<CheckResult>,
}

/// `GET /v1/health`: each provider's state (`unknown`, `healthy`, `degraded`, `down`), since
/// when, its uptime over the last 24 hours and its latest probes.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "health",
    responses((status = 200, description = "The tenant's providers' health, by name", body = HealthList))
)]
async fn provider_health(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let items = health::overview(&app.pool, &caller.tenant, Utc::now()).await?;
    Ok(Json(json!({ "items": items })))
}

/// `POST /v1/health/checks/run`: probe every enabled provider of the tenant now, as the
/// background prober would, and answer what each probe found.
#[utoipa::path(
    post,
    path = "/v1/health/checks/run",
    tag = "health",
    responses((status = 200, description = "One result per enabled provider, by name", body = CheckList))
)]
async fn run_checks(State(app): State<AppState>, context: CommandContext) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ManageRegistry)?;
    let targets = health::targets(&app.pool, &context.caller.tenant).await?;
    let results = futures::future::join_all(targets.iter().map(|target| prober::check(&app, target))).await;
    let items = results.into_iter().collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "items": items })))
}
