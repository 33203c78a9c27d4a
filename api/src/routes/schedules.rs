//! Scheduled configuration changes: made now, applied at their time by the scheduler,
//! cancelled when the value changes first.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use domain::access::Permission;
use domain::config::{ConfigCommand, ConfigKey};
use projections::config::queries::{self as config, ScheduleView};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{Conflict, JsonValue, NotFound, ReasonText, ValidationFailed};
use crate::routes::config::KeyPath;
use crate::routes::parse_instant;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(schedule_change))
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule, cancel_schedule))
}

async fn read_schedule(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<ScheduleView> {
    config::schedule(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("schedule"))
}

/// Scheduled changes.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_schedules` builds
struct ScheduleList {
    items: Vec<ScheduleView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// The value to set (any JSON but `null`); it must match the key's schema now and then.
    #[schema(value_type = JsonValue)]
    value: Value,
    /// When (RFC 3339, in the future); applied within a second of it.
    #[schema(format = DateTime, example = "2026-12-24T18:00:00Z")]
    at: String,
    /// Why; required (or send `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/config/{key}/schedule`: set a value at a later time. A change of the key's
/// value before then cancels it, recorded as a conflict.
#[utoipa::path(
    post,
    path = "/v1/config/{key}/schedule",
    tag = "config",
    params(KeyPath, CreateHeaders),
    request_body = ScheduleBody,
    responses(
        (status = 201, description = "The pending schedule", body = ScheduleView,
            headers(("Location" = String, description = "The schedule's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn schedule_change(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let key = ConfigKey::parse("key", &key)?;
    let at = parse_instant("at", &body.at)?;
    if body.value.is_null() {
        return Err(ApiError::invalid("value", "must not be null: schedule a value"));
    }
    if at <= Utc::now() {
        return Err(ApiError::invalid("at", "must be in the future"));
    }
    context.require_reason("scheduling a change")?;
    let schedule = context.new_id();
    let tenant = context.caller.tenant.clone();
    let command = ConfigCommand::ScheduleValue {
        tenant: tenant.clone(),
        key: key.clone(),
        schedule,
        value: body.value,
        at,
    };
    app.execute(&app.config, &key.aggregate_id(&tenant), command, &context)
        .await?;
    app.schedule_added.notify_one();
    let view = read_schedule(&app, &tenant, schedule).await?;
    let location = [(header::LOCATION, format!("/v1/schedules/{schedule}"))];
    Ok((StatusCode::CREATED, location, Json(view)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only schedules in this state: `pending`, `applied` or `cancelled`.
    #[param(pattern = "^(pending|applied|cancelled)$")]
    state: Option<String>,
}

/// `GET /v1/schedules?state=`: the tenant's scheduled changes, by time.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "config",
    params(ListQuery),
    responses(
        (status = 200, description = "Scheduled changes, by time", body = ScheduleList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_schedules(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let state = match query.state.as_deref() {
        None => None,
        Some(state @ ("pending" | "applied" | "cancelled")) => Some(state),
        Some(_) => {
            return Err(ApiError::invalid(
                "state",
                "must be one of pending, applied, cancelled",
            ))
        }
    };
    let items = config::schedules(&app.pool, &caller.tenant, state).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/schedules/{id}`: one scheduled change and what became of it.
#[utoipa::path(
    get,
    path = "/v1/schedules/{schedule_id}",
    tag = "config",
    params(("schedule_id" = Uuid, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_schedule(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    Ok(Json(read_schedule(&app, &caller.tenant, id).await?))
}

/// `DELETE /v1/schedules/{id}`: cancel a pending schedule; say why with `X-Reason`.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{schedule_id}",
    tag = "config",
    params(("schedule_id" = Uuid, Path, description = "The schedule's id"), ChangeHeaders),
    responses(
        (status = 200, description = "The cancelled schedule", body = ScheduleView),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn cancel_schedule(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let tenant = context.caller.tenant.clone();
    let schedule = read_schedule(&app, &tenant, id).await?;
    context.require_reason("cancelling a schedule")?;
    let key = ConfigKey::parse("key", &schedule.key)?;
    let command = ConfigCommand::CancelSchedule { schedule: id };
    app.execute(&app.config, &key.aggregate_id(&tenant), command, &context)
        .await?;
    Ok(Json(read_schedule(&app, &tenant, id).await?))
}
