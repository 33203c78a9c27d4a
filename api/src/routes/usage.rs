//! Usage: records of calls to models as clients report them, priced at ingestion with the
//! model's price in force at each record's time. Telemetry, not events: stored by
//! `commands::usage`, read through `projections::usage`.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use commands::usage::CostedRecord;
use domain::access::Permission;
use domain::usage::{self, UsageRecord, MAX_RECORDS};
use projections::registry::queries as registry;
use projections::usage::queries::{
    self as usage_queries, SpendDimension, SpendReport, UsageCursor, UsageFilter, UsageView,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::extract::ApiQuery;
use crate::openapi::ValidationFailed;
use crate::routes::{page_size, parse_day, parse_instant};
use crate::state::AppState;

/// `POST /v1/usage`: mounted with the ingestion limits (`hardening::ingestion_routes`).
pub fn ingestion_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// The reads.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_usage))
        .routes(routes!(spend))
}

/// A record refused, with why.
#[derive(Debug, Serialize, ToSchema)]
struct Rejected {
    /// Its place in the request, from 0.
    index: usize,
    /// Its id, when it had a readable one.
    id: Option<String>,
    errors: Vec<FieldError>,
}

/// What ingestion did with a request's records.
#[derive(Debug, Serialize, ToSchema)]
struct IngestOutcome {
    /// Records stored now.
    accepted: usize,
    /// Records whose id was sent before (in this request or an earlier one): not counted again.
    duplicates: usize,
    /// Accepted records that could not be priced (unknown model, or no price at their time).
    uncosted: usize,
    rejected: Vec<Rejected>,
}

/// One record of `POST /v1/usage`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes what `domain::usage::parse_record` reads
struct UsageRecordBody {
    /// Chosen by the client; a record sent again with the same id is counted once.
    #[schema(max_length = 200)]
    id: String,
    #[schema(format = DateTime)]
    timestamp: String,
    /// A model reference, `provider/model_id`.
    #[schema(example = "openai/gpt-4o-mini")]
    model: String,
    prompt_id: Option<Uuid>,
    prompt_version: Option<u32>,
    /// Resolved to the version it points at when the record is ingested.
    prompt_label: Option<String>,
    experiment_id: Option<Uuid>,
    variant: Option<String>,
    feature: Option<String>,
    subject: Option<String>,
    /// All input tokens, cached ones included.
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    /// The part of `input_tokens` read from the provider's cache.
    cached_input_tokens: Option<u64>,
    latency_ms: Option<u32>,
    /// `ok` (default) or an error kind such as `timeout`.
    status: Option<String>,
    /// `{name: number}`, e.g. `{"rating": 4, "converted": true}`.
    #[schema(value_type = Option<Object>)]
    metrics: Option<Value>,
}

/// `POST /v1/usage`: a JSON array, or NDJSON (`Content-Type: application/x-ndjson`), of up
/// to 10,000 usage records. Each record is checked on its own: bad ones are listed, the
/// others stored. A record for an unknown model is stored and counted as uncosted.
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    request_body(content(
        (Vec<UsageRecordBody> = "application/json"),
        (Vec<UsageRecordBody> = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "What was accepted, what was a duplicate, what was refused and why", body = IngestOutcome),
        (status = 400, description = "The body is not JSON (or NDJSON) at all"),
        (status = 403, description = "The key's role may not write usage"),
        (status = 413, description = "More than 10,000 records, or a body over the ingestion limit"),
        (status = 422, response = ValidationFailed),
    )
)]
async fn ingest(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::IngestUsage)?;
    let values = read_records(&headers, &body)?;
    let now = Utc::now();
    let mut rejected = Vec::new();
    let mut valid: Vec<(usize, UsageRecord)> = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let value = match value {
            Ok(value) => value,
            Err(message) => {
                rejected.push(Rejected {
                    index,
                    id: None,
                    errors: vec![FieldError {
                        field: "record".into(),
                        message,
                    }],
                });
                continue;
            }
        };
        match usage::parse_record(&value, now) {
            Ok(record) => valid.push((index, record)),
            Err(errors) => rejected.push(Rejected {
                index,
                id: value.get("id").and_then(Value::as_str).map(str::to_string),
                errors: errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.field.to_string(),
                        message: e.reason,
                    })
                    .collect(),
            }),
        }
    }
    let models: Vec<String> = valid
        .iter()
        .map(|(_, record)| record.model.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let prices = registry::price_periods(&app.pool, &caller.tenant, &models).await?;
    let mut costed = Vec::with_capacity(valid.len());
    for (index, record) in valid {
        let prompt_version = match (record.prompt_id, &record.prompt_label) {
            (Some(prompt), Some(label)) => match app.live_labels.resolve(&caller.tenant, prompt, label) {
                Some(resolved) => u32::try_from(resolved.version).ok(),
                None => {
                    rejected.push(Rejected {
                        index,
                        id: Some(record.id.clone()),
                        errors: vec![FieldError {
                            field: "prompt_label".into(),
                            message: "the prompt has no such label".into(),
                        }],
                    });
                    continue;
                }
            },
            _ => None,
        };
        let cost = prices
            .get(&record.model)
            .and_then(|periods| usage::price_at(periods, record.timestamp))
            .map(|price| usage::cost(&record, price));
        costed.push(CostedRecord {
            record,
            cost,
            prompt_version,
            attempts: None,
        });
    }
    rejected.sort_by_key(|r| r.index);
    let stored = app
        .usage
        .store(&app.pool, &caller.tenant, caller.key_id, costed)
        .await?;
    for (outcome, count) in [
        ("accepted", stored.accepted),
        ("duplicate", stored.duplicates),
        ("rejected", rejected.len()),
    ] {
        app.metrics
            .usage_records
            .with_label_values(&[caller.tenant.as_str(), outcome])
            .inc_by(count as u64);
    }
    // The budget check and the threshold crossings see these records before the answer (a
    // budget defined meanwhile in another process is refreshed within a second anyway).
    if stored.accepted > stored.uncosted && app.live_budgets.any_of(&caller.tenant) {
        app.refresh_budgets().await;
    }
    Ok(Json(IngestOutcome {
        accepted: stored.accepted,
        duplicates: stored.duplicates,
        uncosted: stored.uncosted,
        rejected,
    }))
}

/// The request's records, each a JSON value or why it could not be read. A body that is
/// not an array (JSON) is refused whole; NDJSON is read line by line.
fn read_records(headers: &HeaderMap, body: &Bytes) -> ApiResult<Vec<Result<Value, String>>> {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson") || v.starts_with("application/ndjson"));
    let records: Vec<Result<Value, String>> = if ndjson {
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::MalformedBody("the body is not UTF-8".into()))?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).map_err(|e| format!("is not JSON: {e}")))
            .collect()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => items.into_iter().map(Ok).collect(),
            Ok(_) => return Err(ApiError::invalid("body", "must be a JSON array of usage records")),
            Err(e) => return Err(ApiError::MalformedBody(format!("the body is not JSON: {e}"))),
        }
    };
    if records.len() > MAX_RECORDS {
        return Err(ApiError::TooManyRecords { limit: MAX_RECORDS });
    }
    Ok(records)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// Records at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Records before this instant (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// A model reference.
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    model: Option<String>,
    prompt_id: Option<Uuid>,
    experiment_id: Option<Uuid>,
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    feature: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 300, pattern = r"^[0-9]{1,16}:.*$")]
    cursor: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of usage records.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_usage` builds
struct UsagePage {
    items: Vec<UsageView>,
    next_cursor: Option<String>,
}

/// `GET /v1/usage`: the tenant's usage records with their cost, newest first.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "A page of records, newest first", body = UsagePage),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_usage(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let limit = page_size(query.limit, 100, 1_000)?;
    let instant = |field, value: Option<String>| value.map(|text| parse_instant(field, &text)).transpose();
    let after = match &query.cursor {
        Some(text) => Some(
            UsageCursor::parse(text)
                .ok_or_else(|| ApiError::invalid("cursor", "must be the next_cursor of a page"))?,
        ),
        None => None,
    };
    crate::routes::check_short_texts(&[("model", &query.model), ("feature", &query.feature)])?;
    let filter = UsageFilter {
        from: instant("from", query.from)?,
        to: instant("to", query.to)?,
        model: query.model,
        prompt_id: query.prompt_id,
        experiment_id: query.experiment_id,
        feature: query.feature,
        after,
    };
    Ok(Json(
        usage_queries::records(&app.pool, &caller.tenant, &filter, limit).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SpendQuery {
    /// The first day counted (`YYYY-MM-DD`, UTC).
    #[param(format = Date, example = "2026-11-01")]
    from: Option<String>,
    /// The day after the last one counted (`YYYY-MM-DD`, UTC).
    #[param(format = Date, example = "2026-12-01")]
    to: Option<String>,
    /// What to group by, one or several separated by commas: `day`, `model`, `prompt`,
    /// `feature`, `key`.
    #[param(
        pattern = "^(day|model|prompt|feature|key)(,(day|model|prompt|feature|key))*$",
        example = "model,day"
    )]
    group_by: Option<String>,
}

/// `GET /v1/spend?from=&to=&group_by=`: what usage cost, in total and by group, from the
/// roll-ups ingestion keeps current (never a scan of the records).
#[utoipa::path(
    get,
    path = "/v1/spend",
    tag = "usage",
    params(SpendQuery),
    responses(
        (status = 200, description = "Totals and groups; costs are exact decimals as strings", body = SpendReport),
        (status = 422, response = ValidationFailed),
    )
)]
async fn spend(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SpendQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let (from, to) = (
        parse_day("from", query.from.as_deref())?,
        parse_day("to", query.to.as_deref())?,
    );
    if let (Some(from), Some(to)) = (from, to) {
        if to < from {
            return Err(ApiError::invalid("to", "must not be before from"));
        }
    }
    let mut group_by = Vec::new();
    for name in query
        .group_by
        .as_deref()
        .map(|text| text.split(','))
        .into_iter()
        .flatten()
    {
        let dimension = SpendDimension::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "group_by",
                "must be day, model, prompt, feature or key, separated by commas",
            )
        })?;
        // Naming a dimension twice groups by it once.
        if !group_by.contains(&dimension) {
            group_by.push(dimension);
        }
    }
    Ok(Json(
        usage_queries::spend(&app.pool, &caller.tenant, from, to, &group_by).await?,
    ))
}
