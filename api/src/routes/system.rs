//! Probes and operational views.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::Datelike;
use domain::access::Permission;
use rust_decimal::prelude::ToPrimitive;
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
        .routes(routes!(metrics))
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
    /// The NATS feed's state and lag (only when ready).
    nats_feed: Option<NatsFeed>,
}

/// The NATS feed, as `/readyz` reports it.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum NatsFeed {
    /// The relay runs: its state and lag.
    Relay(projections::relay::RelayReport),
    /// `off` (not configured) or `unknown` (its lag could not be read).
    Other {
        #[schema(pattern = "^(off|unknown)$")]
        status: String,
    },
}

/// Each projection's checkpoint and lag; the NATS relay's entry, when it runs, adds its
/// state (the fields of `RelayReport`).
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

/// `GET /readyz`: the database answers. The NATS feed is reported but does not decide
/// readiness: commands work without it, and it catches up when NATS is back.
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
    match crate::db::ping(&app.pool).await {
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
        let lag = if projection.inline() {
            projections::lag::ProjectionLag::inline(projection.name())
        } else {
            projections::lag::lag(&app.pool, projection.name()).await?
        };
        items.push(json!(lag));
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

/// `GET /metrics`: the process's metrics in the Prometheus text format (operators: the
/// figures span every tenant). Unauthenticated on `AIPM_METRICS_LISTEN` when that is set.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 403, description = "The key may not see operational state"),
    )
)]
async fn metrics(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Operate)?;
    metrics_response(&app).await
}

/// The metrics, with the figures read at scrape time brought up to date.
pub async fn metrics_response(app: &AppState) -> ApiResult<axum::response::Response> {
    let metrics = &app.metrics;
    for (aggregate, outcome, count) in app.command_stats.commands() {
        let counter = metrics.commands.with_label_values(&[aggregate, outcome.as_str()]);
        counter.inc_by(count.saturating_sub(counter.get()));
    }
    for (aggregate, event_type, count) in app.command_stats.events() {
        let counter = metrics
            .events
            .with_label_values(&[aggregate, event_type.as_str()]);
        counter.inc_by(count.saturating_sub(counter.get()));
    }
    let mut lags = Vec::new();
    for projection in projections::all() {
        if !projection.inline() {
            lags.push(projections::lag::lag(&app.pool, projection.name()).await?);
        }
    }
    if let Some(relay) = &app.relay {
        lags.push(relay.report(&app.pool).await?.lag);
    }
    for (role, leading) in app.leaderships() {
        metrics
            .leading
            .with_label_values(&[role.as_str()])
            .set(i64::from(leading));
    }
    for lag in lags {
        metrics
            .projection_lag_events
            .with_label_values(&[lag.name.as_str()])
            .set(lag.events_behind);
        metrics
            .projection_lag_seconds
            .with_label_values(&[lag.name.as_str()])
            .set(lag.seconds_behind);
    }
    // Series of what no longer exists go with it.
    metrics.spend.reset();
    let month_start = chrono::Utc::now().date_naive().with_day(1).unwrap_or_default();
    for spend in projections::usage::queries::spend_since(&app.pool, month_start).await? {
        metrics
            .spend
            .with_label_values(&[
                spend.tenant.as_str(),
                spend.model.as_str(),
                spend.currency.as_str(),
            ])
            .set(spend.cost.to_f64().unwrap_or(f64::NAN));
    }
    metrics.budget_used.reset();
    for live in app.live_budgets.every() {
        let (budget, standing) = (&live.budget, &live.standing);
        let ratio = (standing.percent_used / rust_decimal::Decimal::ONE_HUNDRED)
            .to_f64()
            .unwrap_or(f64::NAN);
        metrics
            .budget_used
            .with_label_values(&[
                budget.tenant.as_str(),
                &budget.id.to_string(),
                budget.name.as_str(),
                budget.terms.enforcement.as_str(),
            ])
            .set(ratio);
    }
    metrics.provider_state.reset();
    for (tenant, provider, current) in projections::health::queries::every_state(&app.pool).await? {
        for state in ["healthy", "degraded", "down", "unknown"] {
            metrics
                .provider_state
                .with_label_values(&[tenant.as_str(), provider.as_str(), state])
                .set(i64::from(state == current));
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response())
}
