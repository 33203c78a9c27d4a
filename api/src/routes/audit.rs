//! The audit log of the caller's tenant (auditors and admins): entries with filters and
//! downloads, verification of the hash chain against the event log, and permission history.
//!
//! Every read here is itself recorded as an event (`ReadRecorded`) before it is answered,
//! so the audit log shows who looked at it, when and with which filters.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::access::Permission;
use domain::audit::{ReadRecord, ReadRecordCommand};
use domain::fields::AllValid;
use domain::position::GlobalCursor;
use domain::text::InvalidText;
use projections::audit::queries::{self as entries, AuditFilter};
use projections::audit::{self, ChainedEntry, ENTRY_FIELDS};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, CommandContext};
use crate::openapi::ValidationFailed;
use crate::routes::{page_size, parse_instant};
use crate::state::AppState;

/// How long a read of the audit log waits for the audit projection to reach the moment of
/// the request before answering with what it has.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a download gathered before they are sent.
const STREAM_CHUNK: usize = 64 * 1024;
/// Chunks a download may have in flight: a slow client holds back the database read
/// instead of filling memory.
const STREAM_BUFFER: usize = 4;
/// Longest accepted filter value, in characters.
const MAX_FILTER_CHARS: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
        .routes(routes!(permission_history))
}

// The types below describe the JSON the handlers build (`ChainedEntry::to_json`); the
// OpenAPI test validates real responses against them.

/// One audit entry: an event with its metadata, what it changed, and its link in the
/// tenant's hash chain.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AuditEntry {
    tenant: String,
    /// The entry's place in the tenant's chain, from 1.
    sequence: i64,
    /// The event's place in the global order, `<transaction>-<position>`: of the log it was
    /// first written to, which a restore into another database keeps.
    cursor: String,
    recorded_at: DateTime<Utc>,
    actor_key_id: Option<String>,
    actor_name: Option<String>,
    request_id: Option<String>,
    client_addr: Option<String>,
    user_agent: Option<String>,
    reason: Option<String>,
    aggregate_type: String,
    aggregate_id: String,
    aggregate_version: i64,
    event_type: String,
    event_version: String,
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    /// The event as stored.
    payload: serde_json::Value,
    /// What the event changed.
    changes: serde_json::Value,
    /// The previous entry's `hash` (the genesis hash for the first).
    prev_hash: String,
    /// SHA-256 of `prev_hash` and this entry's canonical JSON, hex.
    hash: String,
}

/// A page of audit entries.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AuditPage {
    items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<i64>,
}

/// How `GET /v1/audit` answers.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum AuditFormat {
    Json,
    Ndjson,
    Csv,
}

/// The tenant's chain recomputed from the event log and compared with the audit table.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AuditVerification {
    #[serde(flatten)]
    report: audit::verify::TenantReport,
    /// The audit projection's checkpoint: the log was compared up to here.
    checkpoint: String,
}

/// Which keys held which role at an instant.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PermissionHistory {
    as_of: DateTime<Utc>,
    items: Vec<audit::permissions::KeyPermission>,
}

/// Records that the caller read `resource` with `filters`, and returns where the record
/// stands in the global order. A read that cannot be recorded is not served.
pub async fn record_read(
    app: &AppState,
    context: &CommandContext,
    resource: &str,
    filters: BTreeMap<String, String>,
) -> ApiResult<Option<GlobalCursor>> {
    let command = ReadRecordCommand::RecordRead {
        tenant: context.caller.tenant.clone(),
        resource: resource.to_string(),
        filters,
    };
    let committed = app
        .create::<ReadRecord>(&app.read_records, &Uuid::now_v7().to_string(), command, context)
        .await?;
    Ok(committed.cursor)
}

/// Waits until the audit log holds everything up to `cursor` (normally the read's own
/// record), so that a read sees every change made before it.
async fn catch_up(app: &AppState, cursor: Option<GlobalCursor>) {
    if let Some(cursor) = cursor {
        if !app
            .projections
            .wait_for_projection(audit::NAME, cursor, CATCH_UP_TIMEOUT)
            .await
        {
            tracing::warn!(%cursor, "the audit log did not catch up in time; answering with what it has");
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// An actor's key id or name.
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    actor: Option<String>,
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$", example = "prompt")]
    aggregate_type: Option<String>,
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    aggregate_id: Option<String>,
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*$",
        example = "PromptVersionPublished"
    )]
    event_type: Option<String>,
    /// Entries recorded at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Entries recorded before this instant (RFC 3339); not before `from`.
    #[param(format = DateTime)]
    to: Option<String>,
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    request_id: Option<String>,
    /// Entries of events caused by this (a bulk job's id: everything the job changed).
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    causation: Option<String>,
    /// The `sequence` of the last entry already seen (`next_cursor` of the previous page).
    #[param(pattern = r"^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 100, at most 1000); a download is the whole range unless limited.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// `json` (a page), `ndjson` or `csv` (a download of the whole filtered range); also
    /// chosen by `Accept`.
    #[param(value_type = Option<AuditFormat>, inline)]
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Page,
    Ndjson,
    Csv,
}

/// The checked request of a listing: which entries, how many, in which format.
struct Listing {
    filter: AuditFilter,
    limit: Option<i64>,
    format: Format,
}

/// A text filter: 1 to [`MAX_FILTER_CHARS`] characters when given.
fn filter_text(field: &'static str, value: Option<String>) -> Result<Option<String>, InvalidText> {
    match value {
        Some(value) if value.is_empty() || value.chars().count() > MAX_FILTER_CHARS => Err(InvalidText::new(
            field,
            format!("must be 1 to {MAX_FILTER_CHARS} characters"),
        )),
        value => Ok(value),
    }
}

type Range = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from` and `to`, each an instant when given, `to` not before `from`.
fn time_range(from: Option<String>, to: Option<String>) -> Result<Range, domain::fields::Invalid> {
    let instant = |field, value: Option<String>| value.map(|text| parse_instant(field, &text)).transpose();
    let (from, to) = (instant("from", from), instant("to", to)).all_valid()?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(InvalidText::new("to", "must not be before from").into());
        }
    }
    Ok((from, to))
}

fn chain_cursor(cursor: Option<&str>) -> Result<Option<i64>, InvalidText> {
    match cursor.map(str::parse::<i64>) {
        None => Ok(None),
        Some(Ok(sequence)) if sequence >= 0 => Ok(Some(sequence)),
        Some(_) => Err(InvalidText::new(
            "cursor",
            "must be the next_cursor of a previous page",
        )),
    }
}

fn download_format(format: Option<&str>, headers: &HeaderMap) -> Result<Format, InvalidText> {
    match (format, accepted(headers)) {
        (Some("json"), _) | (None, None) => Ok(Format::Page),
        (Some("ndjson"), _) | (None, Some(Format::Ndjson)) => Ok(Format::Ndjson),
        (Some("csv"), _) | (None, Some(Format::Csv)) => Ok(Format::Csv),
        (None, Some(Format::Page)) => Ok(Format::Page),
        (Some(_), _) => Err(InvalidText::new("format", "must be json, ndjson or csv")),
    }
}

/// A page's size (default 100, at most 1000); a download is the whole range unless limited.
fn listing_limit(format: Format, limit: Option<i64>) -> Result<Option<i64>, InvalidText> {
    match (format, limit) {
        (Format::Page, limit) => page_size(limit, 100, 1_000).map(Some),
        (_, Some(limit)) if limit < 1 => Err(InvalidText::new("limit", "must be at least 1")),
        (_, limit) => Ok(limit),
    }
}

impl Listing {
    fn parse(query: AuditQuery, headers: &HeaderMap) -> ApiResult<Self> {
        let format = download_format(query.format.as_deref(), headers);
        // An unknown format is reported; the limit is then checked as a page's.
        let limit = listing_limit(*format.as_ref().unwrap_or(&Format::Page), query.limit);
        let (
            actor,
            aggregate_type,
            aggregate_id,
            event_type,
            request_id,
            causation,
            (from, to),
            after,
            format,
            limit,
        ) = (
            filter_text("actor", query.actor),
            filter_text("aggregate_type", query.aggregate_type),
            filter_text("aggregate_id", query.aggregate_id),
            filter_text("event_type", query.event_type),
            filter_text("request_id", query.request_id),
            filter_text("causation", query.causation),
            time_range(query.from, query.to),
            chain_cursor(query.cursor.as_deref()),
            format,
            limit,
        )
            .all_valid()?;
        let filter = AuditFilter {
            actor,
            aggregate_type,
            aggregate_id,
            event_type,
            from,
            to,
            request_id,
            causation,
            after,
        };
        Ok(Self {
            filter,
            limit,
            format,
        })
    }

    /// The request as the reader gave it, for the record of the read.
    fn described(&self) -> BTreeMap<String, String> {
        let filter = &self.filter;
        let mut described = BTreeMap::new();
        let mut put = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                described.insert(name.to_string(), value);
            }
        };
        put("actor", filter.actor.clone());
        put("aggregate_type", filter.aggregate_type.clone());
        put("aggregate_id", filter.aggregate_id.clone());
        put("event_type", filter.event_type.clone());
        put("from", filter.from.map(audit::format_time));
        put("to", filter.to.map(audit::format_time));
        put("request_id", filter.request_id.clone());
        put("causation", filter.causation.clone());
        put("cursor", filter.after.map(|a| a.to_string()));
        put("limit", self.limit.map(|l| l.to_string()));
        let format = match self.format {
            Format::Page => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        };
        put("format", Some(format.to_string()));
        described
    }
}

/// The download format the `Accept` header asks for, if it names one.
fn accepted(headers: &HeaderMap) -> Option<Format> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    if accept.contains("application/x-ndjson") || accept.contains("application/ndjson") {
        Some(Format::Ndjson)
    } else if accept.contains("text/csv") {
        Some(Format::Csv)
    } else {
        None
    }
}

/// `GET /v1/audit`: the tenant's audit entries in chain order, filtered; a page of JSON, or
/// with `format=ndjson|csv` (or `Accept`) a download of the whole filtered range.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries in chain order, or a download", content(
            (AuditPage = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"))),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_audit(
    State(app): State<AppState>,
    context: CommandContext,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    context.caller.require(Permission::ReadAudit)?;
    let listing = Listing::parse(query, &headers)?;
    let recorded = record_read(&app, &context, "audit_log", listing.described()).await?;
    catch_up(&app, recorded).await;
    let tenant = &context.caller.tenant;
    if listing.format != Format::Page {
        return Ok(download(&app, tenant, &listing));
    }
    let limit = listing.limit.unwrap_or(100);
    let page = entries::page(&app.pool, tenant, &listing.filter, limit).await?;
    let items: Vec<serde_json::Value> = page.items.iter().map(ChainedEntry::to_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": page.next_cursor })).into_response())
}

/// Streams the filtered range as NDJSON or CSV. Rows go from the database cursor to the
/// client in chunks through a small buffer, so memory stays flat whatever the range. A
/// database failure mid-way aborts the response, so a cut-off download never looks whole.
fn download(app: &AppState, tenant: &str, listing: &Listing) -> Response {
    let (content_type, extension) = match listing.format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        _ => ("application/x-ndjson", "ndjson"),
    };
    let csv = listing.format == Format::Csv;
    let mut rows = entries::stream(app.pool.clone(), tenant, &listing.filter, listing.limit);
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut chunk = String::with_capacity(STREAM_CHUNK);
        if csv {
            projections::csv::push_record(&mut chunk, ENTRY_FIELDS.iter().map(|f| Some(*f)));
        }
        while let Some(row) = rows.recv().await {
            match row {
                Ok(entry) if csv => {
                    let fields = entry.csv_fields();
                    projections::csv::push_record(&mut chunk, fields.iter().map(Option::as_deref));
                }
                Ok(entry) => {
                    chunk.push_str(&entry.to_json().to_string());
                    chunk.push('\n');
                }
                Err(error) => {
                    tracing::error!(%error, "audit download failed mid-way");
                    let _ = chunks.send(Err(std::io::Error::other(error))).await;
                    return;
                }
            }
            if chunk.len() >= STREAM_CHUNK {
                let full = std::mem::replace(&mut chunk, String::with_capacity(STREAM_CHUNK));
                if chunks.send(Ok(Bytes::from(full))).await.is_err() {
                    return; // the client went away
                }
            }
        }
        if !chunk.is_empty() {
            let _ = chunks.send(Ok(Bytes::from(chunk))).await;
        }
    });
    let body = Body::from_stream(futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    }));
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let disposition = format!("attachment; filename=\"audit-{tenant}-{stamp}.{extension}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `GET /v1/audit/verify`: recomputes the tenant's chain from the event log and compares
/// it with the audit table; names the first entry that does not match, and the head hash.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "The verification of the tenant's chain", body = AuditVerification),
        (status = 422, response = ValidationFailed),
    )
)]
async fn verify_audit(State(app): State<AppState>, context: CommandContext) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ReadAudit)?;
    let recorded = record_read(&app, &context, "audit_verify", BTreeMap::new()).await?;
    catch_up(&app, recorded).await;
    let report = audit::verify::verify(&app.pool, Some(&context.caller.tenant), app.anchors.as_ref())
        .await
        .map_err(projection_failure)?;
    let Some(tenant) = report.tenants.into_iter().next() else {
        return Err(ApiError::Internal("verification reported no tenant".into()));
    };
    let mut body = serde_json::to_value(&tenant).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["checkpoint"] = json!(report.checkpoint);
    Ok(Json(body))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PermissionsQuery {
    /// The instant (RFC 3339; default: now).
    #[param(format = DateTime, example = "2026-01-31T12:00:00Z")]
    as_of: Option<String>,
}

/// `GET /v1/audit/permissions?as_of=<RFC 3339>`: which keys of the tenant held which role,
/// and whether they were active, at that instant (default: now).
#[utoipa::path(
    get,
    path = "/v1/audit/permissions",
    tag = "audit",
    params(PermissionsQuery),
    responses(
        (status = 200, description = "The tenant's keys as they stood then", body = PermissionHistory),
        (status = 422, response = ValidationFailed),
    )
)]
async fn permission_history(
    State(app): State<AppState>,
    context: CommandContext,
    ApiQuery(query): ApiQuery<PermissionsQuery>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::ReadAudit)?;
    let as_of = match query.as_of {
        Some(text) => parse_instant("as_of", &text)?,
        None => Utc::now(),
    };
    let filters = BTreeMap::from([("as_of".to_string(), audit::format_time(as_of))]);
    record_read(&app, &context, "audit_permissions", filters).await?;
    let keys = audit::permissions::as_of(&app.pool, &context.caller.tenant, as_of)
        .await
        .map_err(projection_failure)?;
    Ok(Json(json!({ "as_of": audit::format_time(as_of), "items": keys })))
}

fn projection_failure(error: projections::ProjectionError) -> ApiError {
    match error {
        projections::ProjectionError::Database(error) => error.into(),
        other => ApiError::Internal(other.to_string()),
    }
}
