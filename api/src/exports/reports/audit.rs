//! `audit`: a range of the tenant's audit log and the verification of its hash chain, at
//! the report's point. Parameters: `from` and `to` (RFC 3339 instants, as in
//! `GET /v1/audit`: entries recorded at or after `from` and before `to`), and `actor` (a key
//! id or name), `aggregate_type` and `event_type`, each an exact match. Needs `ReadAudit`.
//!
//! Entries are the audit log's rows of events at or before the point's cursor and recorded
//! by its instant; rows are written once, so once the audit log has reached the point (the
//! report waits for it) the same point reads the same entries. The verification recomputes
//! the tenant's chain from the event log up to the point's cursor and compares it with the
//! audit table; the external anchors are not checked here (`GET /v1/audit/verify` does).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use domain::text::InvalidText;
use futures::StreamExt;
use projections::audit::verify::verify_until;
use projections::export::sources::{self, AuditRange};
use reports::{Cell, Column, ColumnKind, Section};
use serde_json::Value;

use super::{ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &["entries", "verification"];

/// Longest accepted text filter, in characters (as `GET /v1/audit`).
const MAX_FILTER_CHARS: usize = 200;
/// How long the report waits for the audit log to reach its point before failing rather
/// than leaving entries out.
const CATCH_UP: Duration = Duration::from_secs(30);

/// `params.<name>`: the field an error of a parameter is reported on.
fn field(name: &str) -> &'static str {
    match name {
        "from" => "params.from",
        "to" => "params.to",
        "actor" => "params.actor",
        "aggregate_type" => "params.aggregate_type",
        "event_type" => "params.event_type",
        _ => "params",
    }
}

/// An RFC 3339 instant parameter.
pub fn instant_param(name: &str, value: &Value) -> Result<DateTime<Utc>, InvalidText> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
        .ok_or_else(|| InvalidText::new(field(name), "must be an instant, RFC 3339"))
}

/// A text filter: 1 to [`MAX_FILTER_CHARS`] characters.
pub fn text_param(name: &str, value: &Value) -> Result<String, InvalidText> {
    match value.as_str() {
        Some(text) if !text.is_empty() && text.chars().count() <= MAX_FILTER_CHARS => Ok(text.to_owned()),
        _ => Err(InvalidText::new(
            field(name),
            format!("must be a string of 1 to {MAX_FILTER_CHARS} characters"),
        )),
    }
}

/// The range and filters asked for; parameters were checked when the export was accepted.
fn range(params: &Value) -> AuditRange {
    let instant = |name: &str| params.get(name).and_then(|value| instant_param(name, value).ok());
    let text = |name: &str| params.get(name).and_then(|value| text_param(name, value).ok());
    AuditRange {
        from: instant("from"),
        to: instant("to"),
        actor: text("actor"),
        aggregate_type: text("aggregate_type"),
        event_type: text("event_type"),
    }
}

/// The days `from` and `to` span, when both are given.
pub fn period(input: &ReportInput<'_>) -> Option<(NaiveDate, NaiveDate)> {
    let range = range(input.params);
    let (from, to) = (range.from?, range.to?);
    // `to` is exclusive: an instant at midnight ends the day before.
    let last = (to - chrono::Duration::microseconds(1)).max(from);
    Some((from.date_naive(), last.date_naive()))
}

fn entries_section() -> Section {
    let text = |name: &str| Column::new(name, ColumnKind::Text);
    let integer = |name: &str| Column::new(name, ColumnKind::Integer);
    Section {
        name: "entries".into(),
        title: "Audit entries".into(),
        columns: vec![
            integer("sequence"),
            Column::new("recorded_at", ColumnKind::Timestamp),
            text("actor_key_id"),
            text("actor_name"),
            text("aggregate_type"),
            text("aggregate_id"),
            integer("aggregate_version"),
            text("event_type"),
            text("reason"),
            text("request_id"),
            text("cursor"),
            text("changes"),
            text("prev_hash"),
            text("hash"),
        ],
        charts: Vec::new(),
    }
}

fn verification_section() -> Section {
    let text = |name: &str| Column::new(name, ColumnKind::Text);
    let integer = |name: &str| Column::new(name, ColumnKind::Integer);
    Section {
        name: "verification".into(),
        title: "Chain verification".into(),
        columns: vec![
            integer("entries_checked"),
            Column::new("verified", ColumnKind::Boolean),
            integer("first_broken_sequence"),
            text("problem"),
            integer("head_sequence"),
            text("head_hash"),
            text("covered_through"),
            text("coverage"),
        ],
        charts: Vec::new(),
    }
}

/// Waits until the audit log holds every event up to the point.
async fn caught_up(input: &ReportInput<'_>) -> Result<(), Stop> {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while !sources::audit_reached(input.pool, input.point.cursor).await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(Stop::Failed(format!(
                "the audit log had not reached the report's point ({}) after {} seconds",
                input.point.cursor,
                CATCH_UP.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    caught_up(input).await?;
    let range = range(input.params);
    sink.section(entries_section()).await?;
    let mut entries = std::pin::pin!(sources::audit_entries(
        input.pool,
        input.tenant,
        input.point,
        &range
    ));
    while let Some(entry) = entries.next().await {
        let chained = entry?;
        let entry = chained.entry;
        sink.row(vec![
            Cell::Integer(entry.sequence),
            Cell::Timestamp(entry.recorded_at),
            Cell::optional_text(entry.actor_key_id),
            Cell::optional_text(entry.actor_name),
            Cell::Text(entry.aggregate_type),
            Cell::Text(entry.aggregate_id),
            Cell::Integer(entry.aggregate_version),
            Cell::Text(entry.event_type),
            Cell::optional_text(entry.reason),
            Cell::optional_text(entry.request_id),
            Cell::Text(entry.cursor.to_string()),
            if entry.changes.is_null() {
                Cell::Empty
            } else {
                Cell::Text(entry.changes.to_string())
            },
            Cell::Text(chained.prev_hash),
            Cell::Text(chained.hash),
        ])
        .await?;
    }

    sink.section(verification_section()).await?;
    let (report, through) = verify_until(input.pool, input.tenant, input.point.cursor)
        .await
        .map_err(|error| match error {
            projections::ProjectionError::Database(error) => Stop::Source(error),
            other => Stop::Failed(format!("the chain could not be recomputed: {other}")),
        })?;
    let mismatch = report.first_mismatch.as_ref();
    sink.row(vec![
        Cell::Integer(report.entries),
        Cell::Boolean(report.ok),
        mismatch.map_or(Cell::Empty, |mismatch| Cell::Integer(mismatch.sequence)),
        Cell::optional_text(mismatch.map(|mismatch| mismatch.detail.clone())),
        Cell::Integer(report.head.sequence),
        Cell::Text(report.head.hash),
        Cell::Text(through.to_string()),
        Cell::Text(format!(
            "the tenant's whole chain up to event {through}, recomputed from the event log and \
             compared with the audit table, regardless of the filters; anchors not checked"
        )),
    ])
    .await?;
    sink.flush().await
}
