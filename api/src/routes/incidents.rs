//! Incidents: open one with what it affects (and get the changes of the 24 hours before it
//! that touch that), post updates, resolve it; list, read, read as it was, and its history.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::fields::{each, AllValid};
use domain::incident::{
    parse_note, Affected, Incident, IncidentCommand, IncidentEvent, IncidentStatus, OpenedBy, Severity,
};
use domain::text::{DisplayName, Slug};
use domain::upcast::{self, Schema};
use projections::incident::queries::{self as incidents, IncidentView, RecordedEvent};
use projections::registry::queries as registry;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{Conflict, NameText, NotFound, NoteText, ReasonText, SlugText, ValidationFailed};
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::state::AppState;

/// Most models, features or providers an incident names.
const MAX_AFFECTED: usize = 50;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open_incident, list_incidents))
        .routes(routes!(get_incident))
        .routes(routes!(post_update))
        .routes(routes!(resolve_incident))
        .routes(routes!(incident_history))
}

fn respond(status: StatusCode, view: IncidentView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/incidents/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

async fn read_incident(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<IncidentView> {
    incidents::incident(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("incident"))
}

/// `sev1` (worst) to `sev4`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `Severity::parse` accepts
enum SeverityName {
    Sev1,
    Sev2,
    Sev3,
    Sev4,
}

/// A status an update sets (resolving is its own route).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `IncidentStatus::parse_update` accepts
enum UpdateStatusName {
    Investigating,
    Identified,
    Monitoring,
}

/// Any status, as the listing filters by.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // describes what `IncidentStatus::parse` accepts
enum StatusName {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

/// The tenant's incidents, newest first (at most 1000).
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_incidents` builds
struct IncidentList {
    items: Vec<IncidentView>,
}

/// A model reference (`openai/gpt-4o-mini`) of the tenant.
#[derive(ToSchema)]
#[schema(
    min_length = 3,
    max_length = 300,
    pattern = r"^[^\s\x00-\x1f]+/[^\s\x00-\x1f]+$",
    example = "openai/gpt-4o-mini"
)]
#[allow(dead_code)]
struct ModelReferenceText(String);

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct AffectedBody {
    /// Models of the tenant, by reference.
    #[schema(value_type = Option<Vec<ModelReferenceText>>, max_items = 50)]
    models: Option<Vec<String>>,
    /// Features, by name.
    #[schema(value_type = Option<Vec<SlugText>>, max_items = 50)]
    features: Option<Vec<String>>,
    /// Providers of the tenant, by name.
    #[schema(value_type = Option<Vec<SlugText>>, max_items = 50)]
    providers: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    #[schema(value_type = SeverityName)]
    severity: String,
    #[schema(value_type = NameText)]
    title: String,
    /// What is affected: its related changes are looked for on these, on the models of the
    /// providers named, and on the providers of the models named.
    affected: AffectedBody,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// Reads `names` with `parse`, refusing more than [`MAX_AFFECTED`].
fn names(
    field: &'static str,
    names: Option<&Vec<String>>,
    parse: impl FnMut(&str) -> Result<String, domain::text::InvalidText>,
) -> Result<BTreeSet<String>, domain::fields::Invalid> {
    let names = names.map(Vec::as_slice).unwrap_or_default();
    if names.len() > MAX_AFFECTED {
        return Err(domain::fields::Invalid::field(
            field,
            format!("must name at most {MAX_AFFECTED}"),
        ));
    }
    Ok(each(names, parse)?.into_iter().collect())
}

/// What `body` names, each found in the tenant (features are names only).
async fn resolve_affected(app: &AppState, tenant: &str, body: &AffectedBody) -> ApiResult<Affected> {
    let (models, features, providers) = (
        names("affected.models", body.models.as_ref(), |m| {
            domain::model::parse_model_id("affected.models", m)
        }),
        names("affected.features", body.features.as_ref(), |f| {
            Slug::parse("affected.features", f).map(|s| s.to_string())
        }),
        names("affected.providers", body.providers.as_ref(), |p| {
            Slug::parse("affected.providers", p).map(|s| s.to_string())
        }),
    )
        .all_valid()?;
    let affected = Affected {
        models,
        features,
        providers,
    };
    check_affected(app, tenant, &affected).await?;
    Ok(affected)
}

/// Refuses models and providers `affected` names that the tenant does not have, each named.
pub(crate) async fn check_affected(app: &AppState, tenant: &str, affected: &Affected) -> ApiResult<()> {
    let (models, providers) = (&affected.models, &affected.providers);
    let mut missing = Vec::new();
    for model in models {
        if registry::model_with_reference(&app.pool, tenant, model)
            .await?
            .is_none()
        {
            missing.push(crate::error::FieldError {
                field: "affected.models".into(),
                message: format!("there is no model {model} in this tenant"),
            });
        }
    }
    for provider in providers {
        if registry::provider_named(&app.pool, tenant, provider)
            .await?
            .is_none()
        {
            missing.push(crate::error::FieldError {
                field: "affected.providers".into(),
                message: format!("there is no provider {provider} in this tenant"),
            });
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::Validation(missing));
    }
    Ok(())
}

/// Opens an incident of the caller's tenant, by hand, with the changes related to what it
/// affects; returns its id.
pub(crate) async fn open(
    app: &AppState,
    context: &CommandContext,
    severity: Severity,
    title: DisplayName,
    affected: Affected,
) -> ApiResult<Uuid> {
    let tenant = context.caller.tenant.clone();
    let related_changes =
        crate::incidents::related_changes(&app.pool, &tenant, &affected, Utc::now()).await?;
    let id = context.new_id();
    let command = IncidentCommand::OpenIncident {
        tenant,
        severity,
        title,
        affected,
        opened_by: OpenedBy::Manual,
        related_changes,
    };
    app.create(&app.incidents, &id.to_string(), command, context)
        .await?;
    Ok(id)
}

/// `POST /v1/incidents`: open an incident. Its `related_changes` are the configuration,
/// prompt label, model and provider changes of the 24 hours before it that touch what it
/// affects (the rule: `domain::incident::relates`), recorded with it.
#[utoipa::path(
    post,
    path = "/v1/incidents",
    tag = "incidents",
    params(CreateHeaders),
    request_body = OpenBody,
    responses(
        (status = 201, description = "The new incident", body = IncidentView, headers(
            ("ETag" = String, description = "The incident's version"),
            ("Location" = String, description = "The incident's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn open_incident(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<OpenBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.clone())?;
    let (severity, title) = (
        Severity::parse("severity", &body.severity),
        DisplayName::parse("title", &body.title),
    )
        .all_valid()?;
    let tenant = context.caller.tenant.clone();
    let affected = resolve_affected(&app, &tenant, &body.affected).await?;
    let id = open(&app, &context, severity, title, affected).await?;
    Ok(respond(
        StatusCode::CREATED,
        read_incident(&app, &tenant, id).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only incidents in this status.
    #[param(value_type = Option<StatusName>, inline)]
    status: Option<String>,
}

/// `GET /v1/incidents?status=`: the tenant's incidents, newest first (at most 1000).
#[utoipa::path(
    get,
    path = "/v1/incidents",
    tag = "incidents",
    params(ListQuery),
    responses(
        (status = 200, description = "Incidents, newest first", body = IncidentList),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_incidents(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let status = query
        .status
        .as_deref()
        .map(|status| IncidentStatus::parse("status", status))
        .transpose()?;
    let items = incidents::incidents(&app.pool, &caller.tenant, status.map(IncidentStatus::as_str)).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/incidents/{id}`: the incident with its timeline and related changes, now or as
/// it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/incidents/{incident_id}",
    tag = "incidents",
    params(("incident_id" = Uuid, Path, description = "The incident's id"), AsOfQuery),
    responses(
        (status = 200, description = "The incident", body = IncidentView,
            headers(("ETag" = String, description = "The incident's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_incident(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let Some(as_of) = query.as_of else {
        return Ok(respond(
            StatusCode::OK,
            read_incident(&app, &caller.tenant, id).await?,
        ));
    };
    let past = history::as_of(
        &app.incidents,
        &caller.tenant,
        &id.to_string(),
        &as_of,
        "incident",
    )
    .await?;
    // The timeline needs each event's time and author, which the folded state lacks.
    let version = i64::try_from(past.version).unwrap_or(i64::MAX);
    let page = projections::history::events(
        &app.pool,
        &caller.tenant,
        Incident::TYPE,
        &id.to_string(),
        0,
        version,
    )
    .await?;
    let events = page
        .items
        .into_iter()
        .filter(|entry| entry.sequence <= version)
        .filter_map(|entry| {
            let schema = Schema {
                aggregate_type: Incident::TYPE,
                event_type: &entry.event_type,
                event_version: &entry.event_version,
            };
            let payload = json!({ entry.event_type.clone(): entry.data });
            let event = upcast::decode_value::<IncidentEvent>(schema, payload).ok()?;
            Some(RecordedEvent {
                event,
                sequence: entry.sequence,
                recorded_at: entry.recorded_at,
                by: entry
                    .actor
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect();
    let view = IncidentView::fold(id, events).ok_or(ApiError::NotFound("incident"))?;
    Ok(respond(StatusCode::OK, view))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// What is known now, what is being done.
    #[schema(value_type = NoteText, min_length = 1)]
    message: String,
    /// The incident's status from now on, if it changes.
    #[schema(value_type = Option<UpdateStatusName>)]
    status: Option<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/incidents/{id}/updates`: add an update to the timeline, optionally moving the
/// status (`investigating`, `identified`, `monitoring`). A resolved incident takes none.
#[utoipa::path(
    post,
    path = "/v1/incidents/{incident_id}/updates",
    tag = "incidents",
    params(("incident_id" = Uuid, Path, description = "The incident's id"), ChangeHeaders),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The incident after the update", body = IncidentView,
            headers(("ETag" = String, description = "The incident's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn post_update(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.clone())?;
    let (message, status) = (
        parse_note("message", &body.message),
        body.status
            .as_deref()
            .map(|status| IncidentStatus::parse_update("status", status))
            .transpose(),
    )
        .all_valid()?;
    let command = IncidentCommand::PostUpdate { message, status };
    app.execute(&app.incidents, &id.to_string(), command, &context)
        .await?;
    Ok(respond(
        StatusCode::OK,
        read_incident(&app, &context.caller.tenant, id).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// How it ended: the cause and the fix.
    #[schema(value_type = NoteText, min_length = 1)]
    summary: String,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/incidents/{id}/resolve`: end the incident with a summary; it takes no more
/// updates.
#[utoipa::path(
    post,
    path = "/v1/incidents/{incident_id}/resolve",
    tag = "incidents",
    params(("incident_id" = Uuid, Path, description = "The incident's id"), ChangeHeaders),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "The resolved incident", body = IncidentView,
            headers(("ETag" = String, description = "The incident's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn resolve_incident(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ResolveBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.clone())?;
    let summary = parse_note("summary", &body.summary)?;
    app.execute(
        &app.incidents,
        &id.to_string(),
        IncidentCommand::Resolve { summary },
        &context,
    )
    .await?;
    Ok(respond(
        StatusCode::OK,
        read_incident(&app, &context.caller.tenant, id).await?,
    ))
}

/// `GET /v1/incidents/{id}/history`: the incident's events with who, when, why and from where.
#[utoipa::path(
    get,
    path = "/v1/incidents/{incident_id}/history",
    tag = "incidents",
    params(("incident_id" = Uuid, Path, description = "The incident's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the incident's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn incident_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        Incident::TYPE,
        &id.to_string(),
        query,
        "incident",
    )
    .await
}
