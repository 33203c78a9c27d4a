//! Exports: a report written to a file (CSV, JSON, NDJSON, XLSX or PDF) in the background,
//! as of now or of a past instant. These routes ask for one, follow it, cancel it and
//! download its file; `crate::exports::runner` writes it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::export::{ExportCommand, ExportJob, Requester};
use projections::export::queries::{self as exports, ExportView};
use reports::Format;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::exports::reports::ReportKind;
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, CommandContext, CreateHeaders};
use crate::openapi::{Conflict, NotFound, ValidationFailed};
use crate::routes::history::{self, HistoryPage, HistoryQuery};
use crate::routes::{page_size, parse_instant};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_export, list_exports))
        .routes(routes!(get_export))
        .routes(routes!(cancel_export))
        .routes(routes!(download_export))
        .routes(routes!(export_history))
}

/// An export to write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    /// `spend`, `usage`, `catalog`, `audit` (the audit log: auditors and admins only),
    /// `experiment`, `health` or `prompt_usage`.
    #[schema(example = "spend")]
    report: String,
    /// `csv`, `json`, `ndjson`, `xlsx` or `pdf`.
    #[schema(example = "csv")]
    format: String,
    /// The report's parameters: `spend` takes `month` (`YYYY-MM`); `usage` takes `from` and
    /// `to` (days, inclusive); `catalog` takes none; `audit` takes `from` and `to` (RFC 3339
    /// instants: recorded at or after `from`, before `to`), `actor` (a key id or name),
    /// `aggregate_type` and `event_type`; `experiment` takes `experiment_id` (required),
    /// `method` (`fixed`, `sequential`, `bayesian`) and `correction` (`none`, `holm`, `bh`);
    /// `health` takes `from` and `to` (days; default the 7 days to the point's);
    /// `prompt_usage` takes `prompt_id` (required), `from` and `to` (days; default the
    /// point's month); every report takes `section` (which of its sections a CSV holds).
    #[schema(example = json!({"month": "2026-11"}))]
    params: Option<Value>,
    /// A past instant (RFC 3339): the report as it would have looked then, from the log.
    #[schema(example = "2026-11-30T23:59:59Z")]
    as_of: Option<String>,
}

/// An export job, with where to download its file once done.
#[derive(Serialize, ToSchema)]
struct ExportResponse {
    #[serde(flatten)]
    export: ExportView,
    /// Where the file is, once `status` is `done`.
    download_url: Option<String>,
}

fn with_download(export: ExportView) -> ExportResponse {
    let download_url = (export.status == "done").then(|| format!("/v1/exports/{}/download", export.id));
    ExportResponse { export, download_url }
}

async fn read_export(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<ExportView> {
    exports::export(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("export"))
}

fn respond(status: StatusCode, view: ExportView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/exports/{}", view.id))];
    (
        status,
        etag(view.version as u64),
        location,
        Json(with_download(view)),
    )
}

/// `POST /v1/exports`: queue a report to be written to a file.
#[utoipa::path(
    post,
    path = "/v1/exports",
    tag = "exports",
    params(CreateHeaders),
    request_body = ExportBody,
    responses(
        (status = 202, description = "The export, accepted and queued", body = ExportResponse, headers(
            ("ETag" = String, description = "The job's version"),
            ("Location" = String, description = "The job's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn request_export(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<ExportBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Read)?;
    let mut errors = Vec::new();
    let report = ReportKind::parse("report", &body.report)
        .map_err(|error| errors.push(error))
        .ok();
    let format = Format::parse(&body.format);
    if format.is_none() {
        let names: Vec<&str> = Format::ALL.iter().map(|format| format.as_str()).collect();
        errors.push(domain::text::InvalidText::new(
            "format",
            format!("must be one of {}", names.join(", ")),
        ));
    }
    let params = body.params.clone().unwrap_or_else(|| json!({}));
    if let Some(report) = report {
        match report.check_params(&params) {
            Err(found) => errors.extend(found),
            Ok(()) => errors.extend(
                report
                    .check_subject(&app.pool, &context.caller.tenant, &params)
                    .await?,
            ),
        }
    }
    let as_of = match body
        .as_of
        .as_deref()
        .map(|text| parse_instant("as_of", text))
        .transpose()
    {
        Ok(Some(at)) if at > chrono::Utc::now() => {
            errors.push(domain::text::InvalidText::new(
                "as_of",
                "must not be in the future",
            ));
            None
        }
        Ok(at) => at,
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let (Some(report), Some(format), true) = (report, format, errors.is_empty()) else {
        return Err(ApiError::Validation(
            errors
                .into_iter()
                .map(|error| FieldError {
                    field: error.field.into(),
                    message: error.reason,
                })
                .collect(),
        ));
    };
    context.caller.require(report.permission())?;
    let tenant = context.caller.tenant.clone();
    let id = context.new_id();
    let command = ExportCommand::Request {
        tenant: tenant.clone(),
        report: report.as_str().to_owned(),
        format: format.as_str().to_owned(),
        params,
        as_of,
        requester: Requester {
            key_id: context.caller.key_id.to_string(),
            name: context.caller.key_name.clone(),
        },
    };
    app.create(&app.exports, &id.to_string(), command, &context)
        .await?;
    app.export_requested.notify_one();
    Ok(respond(
        StatusCode::ACCEPTED,
        read_export(&app, &tenant, id).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    cursor: Option<Uuid>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_exports` builds
struct ExportPage {
    items: Vec<ExportView>,
    next_cursor: Option<Uuid>,
}

/// `GET /v1/exports`: the tenant's exports, newest first.
#[utoipa::path(
    get,
    path = "/v1/exports",
    tag = "exports",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of exports, newest first", body = ExportPage),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_exports(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let limit = page_size(query.limit, 50, 500)?;
    Ok(Json(
        exports::exports(&app.pool, &caller.tenant, query.cursor, limit).await?,
    ))
}

/// `GET /v1/exports/{id}`: the export's status, progress and, once done, its file's hash.
#[utoipa::path(
    get,
    path = "/v1/exports/{export_id}",
    tag = "exports",
    params(("export_id" = Uuid, Path, description = "The export's id")),
    responses(
        (status = 200, description = "The export", body = ExportResponse,
            headers(("ETag" = String, description = "The job's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_export(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let view = read_export(&app, &caller.tenant, id).await?;
    Ok((etag(view.version as u64), Json(with_download(view))))
}

/// `POST /v1/exports/{id}/cancel`: stop a queued or running export; its partial file is
/// deleted. Cancelling a cancelled export changes nothing.
#[utoipa::path(
    post,
    path = "/v1/exports/{export_id}/cancel",
    tag = "exports",
    params(("export_id" = Uuid, Path, description = "The export's id"), CreateHeaders),
    responses(
        (status = 202, description = "The export, cancelled", body = ExportResponse),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
async fn cancel_export(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Read)?;
    let tenant = context.caller.tenant.clone();
    read_export(&app, &tenant, id).await?;
    app.execute(&app.exports, &id.to_string(), ExportCommand::Cancel, &context)
        .await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        read_export(&app, &tenant, id).await?,
    ))
}

/// A JSON export: the report's point and parameters, then each section's rows as objects of
/// its columns.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the file `reports::text::JsonWriter` writes
struct ExportDocument {
    report: String,
    title: String,
    tenant: String,
    /// `{from, to}` days, when the report covers a period.
    period: Option<Value>,
    as_of: String,
    cursor: String,
    params: Value,
    /// `{<section>: {title, rows: [{<column>: <value>}]}}`
    sections: Value,
}

/// `GET /v1/exports/{id}/download`: the file, streamed, once the export is done.
#[utoipa::path(
    get,
    path = "/v1/exports/{export_id}/download",
    tag = "exports",
    params(("export_id" = Uuid, Path, description = "The export's id")),
    responses(
        (status = 200, description = "The file: CSV, JSON, NDJSON, XLSX or PDF", content(
            (String = "text/csv"),
            (ExportDocument = "application/json"),
            (String = "application/x-ndjson"),
            (String = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            (String = "application/pdf")),
            headers(
                ("Content-Disposition" = String, description = "attachment, with the file's name"),
                ("ETag" = String, description = "The SHA-256 of the file"),
                ("Aipm-Data-Cursor" = String, description = "The global cursor of the last event the file reflects"),
                ("Aipm-Data-Instant" = String, description = "The instant the file reflects"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn download_export(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    caller.require(Permission::Read)?;
    let view = read_export(&app, &caller.tenant, id).await?;
    // The file holds what its report needs to be asked for (an auditor's audit log is not
    // a viewer's to read).
    if let Ok(report) = ReportKind::parse("report", &view.report) {
        caller.require(report.permission())?;
    }
    if view.status != "done" {
        return Err(ApiError::Conflict(format!(
            "the export is {}; only a done export has a file",
            view.status
        )));
    }
    let format = Format::parse(&view.format)
        .ok_or_else(|| ApiError::Internal(format!("unknown format {}", view.format)))?;
    let file = app
        .export_store
        .open(id, format.extension())
        .await
        .map_err(|error| ApiError::Unavailable(format!("the export's file cannot be read: {error}")))?
        .ok_or_else(|| ApiError::Conflict("the export's file is gone".into()))?;
    let file_name = view
        .file_name
        .clone()
        .unwrap_or_else(|| format!("{id}.{}", format.extension()));
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        1 << 16,
    )));
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, format.content_type().to_owned());
    set(
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{file_name}\""),
    );
    if let Some(size) = view.size_bytes {
        set(header::CONTENT_LENGTH, size.to_string());
    }
    if let Some(sha) = &view.content_sha256 {
        set(header::ETAG, format!("\"{sha}\""));
    }
    if let Some(cursor) = &view.cursor {
        set(
            header::HeaderName::from_static("aipm-data-cursor"),
            cursor.clone(),
        );
    }
    if let Some(instant) = view.instant {
        set(
            header::HeaderName::from_static("aipm-data-instant"),
            reports::model::format_instant(instant),
        );
    }
    Ok(response)
}

/// `GET /v1/exports/{id}/history`: the export's events (requested, started, progress,
/// completed, expired).
#[utoipa::path(
    get,
    path = "/v1/exports/{export_id}/history",
    tag = "exports",
    params(("export_id" = Uuid, Path, description = "The export's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the export's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn export_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    history::events(
        &app,
        &caller.tenant,
        ExportJob::TYPE,
        &id.to_string(),
        query,
        "export",
    )
    .await
}
