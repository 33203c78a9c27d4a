//! Configuration: dotted keys with JSON Schemas and values, each change with its reason, and
//! the whole configuration as it was at any instant.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::approval::ProposedChange;
use domain::config::{ConfigCommand, ConfigEntry, ConfigError, ConfigKey, ConfigSchema};
use projections::approval::queries::ChangeRequestView;
use projections::config::queries::{self as config, ConfigValue, ConfigView};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, DomainProblem};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext};
use crate::openapi::{Conflict, JsonObject, JsonValue, NotFound, ReasonText, ValidationFailed};
use crate::routes::approvals;
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::routes::parse_instant;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(declare_schema, get_schema))
        .routes(routes!(set_value, get_value, clear_value))
        .routes(routes!(list_values))
        .routes(routes!(config_history))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct KeyPath {
    /// A dotted key, e.g. `limits.max_output_tokens`.
    #[param(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 200)]
    pub(crate) key: String,
}

/// The configuration's values.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_values` builds
struct ConfigList {
    items: Vec<ConfigValue>,
}

async fn read_entry(app: &AppState, tenant: &str, key: &ConfigKey) -> ApiResult<Option<ConfigView>> {
    Ok(config::entry(&app.pool, tenant, key.as_ref()).await?)
}

fn respond(view: ConfigView) -> impl IntoResponse {
    (etag(view.version as u64), Json(view))
}

/// Runs a change to a key of the caller's tenant; every change says why.
async fn change(
    app: &AppState,
    key: &ConfigKey,
    command: ConfigCommand,
    context: &CommandContext,
    what: &str,
) -> ApiResult<()> {
    context.require_reason(what)?;
    let id = key.aggregate_id(&context.caller.tenant);
    app.execute(&app.config, &id, command, context).await?;
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SchemaBody {
    /// A JSON Schema (draft 2020-12) every value of the key must match.
    #[schema(value_type = JsonObject)]
    schema: Value,
    /// Why; required (or send `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/config-schemas/{key}`: declare the JSON Schema of a key. Refused while the key's
/// current value does not match it.
#[utoipa::path(
    put,
    path = "/v1/config-schemas/{key}",
    tag = "config",
    params(KeyPath, ChangeHeaders),
    request_body = SchemaBody,
    responses(
        (status = 200, description = "The key with its schema", body = ConfigView,
            headers(("ETag" = String, description = "The key's version"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn declare_schema(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiJson(body): ApiJson<SchemaBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let key = ConfigKey::parse("key", &key)?;
    let schema = match body.schema {
        schema @ (Value::Object(_) | Value::Bool(_)) => ConfigSchema::parse("schema", schema)?,
        _ => {
            return Err(ApiError::invalid(
                "schema",
                "must be a JSON Schema: an object or a boolean",
            ))
        }
    };
    let command = ConfigCommand::DeclareSchema {
        tenant: context.caller.tenant.clone(),
        key: key.clone(),
        schema,
    };
    change(&app, &key, command, &context, "declaring a schema").await?;
    let view = read_entry(&app, &context.caller.tenant, &key)
        .await?
        .ok_or(ApiError::NotFound("configuration key"))?;
    Ok(respond(view))
}

/// `GET /v1/config-schemas/{key}`: the key's schema.
#[utoipa::path(
    get,
    path = "/v1/config-schemas/{key}",
    tag = "config",
    params(KeyPath),
    responses(
        (status = 200, description = "The key with its schema", body = ConfigView,
            headers(("ETag" = String, description = "The key's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_schema(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let key = ConfigKey::parse("key", &key)?;
    let view = read_entry(&app, &caller.tenant, &key)
        .await?
        .filter(|view| view.schema.is_some())
        .ok_or(ApiError::NotFound("configuration schema"))?;
    Ok(respond(view))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ValueBody {
    /// Any JSON but `null` (clear a key with `DELETE`); it must match the key's schema.
    #[schema(value_type = JsonValue)]
    value: Value,
    /// Why; required (or send `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/config/{key}`: set a key's value. A value that does not match the key's schema
/// is a 422 naming each failing path (`value/limits/0`).
#[utoipa::path(
    put,
    path = "/v1/config/{key}",
    tag = "config",
    params(KeyPath, ChangeHeaders),
    request_body = ValueBody,
    responses(
        (status = 200, description = "The key with its new value", body = ConfigView,
            headers(("ETag" = String, description = "The key's version"))),
        (status = 202, description = "The key is protected: a change request waiting for another key's approval",
            body = ChangeRequestView, headers(("Location" = String, description = "The change request's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn set_value(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiJson(body): ApiJson<ValueBody>,
) -> ApiResult<Response> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let key = ConfigKey::parse("key", &key)?;
    if body.value.is_null() {
        return Err(ApiError::invalid(
            "value",
            "must not be null: clear a key with DELETE",
        ));
    }
    context.require_reason("setting a value")?;
    let current = read_entry(&app, &context.caller.tenant, &key).await?;
    check_against_schema(current.as_ref(), &body.value)?;
    let proposal = ProposedChange::SetConfig {
        key: key.as_ref().to_string(),
        value: body.value.clone(),
    };
    if let Some(accepted) = approvals::propose_if_protected(&app, &context, proposal).await? {
        return Ok(accepted);
    }
    let command = ConfigCommand::SetValue {
        tenant: context.caller.tenant.clone(),
        key: key.clone(),
        value: body.value,
    };
    change(&app, &key, command, &context, "setting a value").await?;
    let view = read_entry(&app, &context.caller.tenant, &key)
        .await?
        .ok_or(ApiError::NotFound("configuration key"))?;
    Ok(respond(view).into_response())
}

/// Refuses a value the key's schema refuses, before it is proposed for approval (the key
/// checks it again when the change is made).
fn check_against_schema(entry: Option<&ConfigView>, value: &Value) -> ApiResult<()> {
    let Some(schema) = entry.and_then(|entry| entry.schema.clone()) else {
        return Ok(());
    };
    let violations = ConfigSchema::parse("schema", schema)?.violations(value);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::ValueDoesNotMatch(violations).into_api_error())
    }
}

/// `GET /v1/config/{key}`: the key's value now, or as it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/config/{key}",
    tag = "config",
    params(KeyPath, AsOfQuery),
    responses(
        (status = 200, description = "The key with its value", body = ConfigView,
            headers(("ETag" = String, description = "The key's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_value(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let key = ConfigKey::parse("key", &key)?;
    let view = match query.as_of {
        None => read_entry(&app, &caller.tenant, &key).await?,
        Some(as_of) => {
            let id = key.aggregate_id(&caller.tenant);
            let past =
                history::as_of(&app.config, &caller.tenant, &id, &as_of, "configuration value").await?;
            Some(ConfigView::from_state(
                past.aggregate,
                past.version,
                past.updated_at,
            ))
        }
    };
    let view = view
        .filter(|view| view.value.is_some())
        .ok_or(ApiError::NotFound("configuration value"))?;
    Ok(respond(view))
}

/// `DELETE /v1/config/{key}`: clear a key's value (its schema stays). Say why with
/// `X-Reason`.
#[utoipa::path(
    delete,
    path = "/v1/config/{key}",
    tag = "config",
    params(KeyPath, ChangeHeaders),
    responses(
        (status = 204, description = "Cleared"),
        (status = 202, description = "The key is protected: a change request waiting for another key's approval",
            body = ChangeRequestView, headers(("Location" = String, description = "The change request's URL"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn clear_value(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
) -> ApiResult<Response> {
    context.caller.require(Permission::Write)?;
    let key = ConfigKey::parse("key", &key)?;
    context.require_reason("clearing a value")?;
    let proposal = ProposedChange::ClearConfig {
        key: key.as_ref().to_string(),
    };
    if let Some(accepted) = approvals::propose_if_protected(&app, &context, proposal).await? {
        return Ok(accepted);
    }
    change(
        &app,
        &key,
        ConfigCommand::ClearValue,
        &context,
        "clearing a value",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only keys starting with this (`limits.`).
    #[param(pattern = r"^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)?$", max_length = 200)]
    prefix: Option<String>,
    /// The configuration as it was at this instant (RFC 3339).
    #[param(format = DateTime, example = "2026-01-31T12:00:00Z")]
    as_of: Option<String>,
}

/// `GET /v1/config?prefix=&as_of=`: every key with a value, now or at an instant.
#[utoipa::path(
    get,
    path = "/v1/config",
    tag = "config",
    params(ListQuery),
    responses(
        (status = 200, description = "The keys with a value, by key", body = ConfigList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_values(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let prefix = match query.prefix.as_deref() {
        None | Some("") => String::new(),
        Some(prefix) => ConfigKey::parse_prefix("prefix", prefix)?,
    };
    let items = match query.as_of {
        None => config::values(&app.pool, &caller.tenant, &prefix).await?,
        Some(as_of) => {
            let at = parse_instant("as_of", &as_of)?;
            config::values_as_of(&app.pool, &caller.tenant, &prefix, at).await?
        }
    };
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/config/{key}/history`: every change of the key (schema and value, old → new)
/// with who, when, why and from where.
#[utoipa::path(
    get,
    path = "/v1/config/{key}/history",
    tag = "config",
    params(KeyPath, HistoryQuery),
    responses(
        (status = 200, description = "A page of the key's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn config_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let key = ConfigKey::parse("key", &key)?;
    let id = key.aggregate_id(&caller.tenant);
    history::events(
        &app,
        &caller.tenant,
        ConfigEntry::TYPE,
        &id,
        query,
        "configuration key",
    )
    .await
}
