//! `usage`: the usage records of a period, one row each, priced at the report's point.
//! Parameters: `from` and `to` (days, inclusive; by default the month of the point, up to
//! its day).

use chrono::{Days, NaiveDate};
use futures::StreamExt;
use projections::export::sources;
use reports::{Cell, Column, ColumnKind, Section};

use super::{day_param, month_of, start_of, Prices, ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &["records"];

/// The days covered, inclusive.
pub fn period(input: &ReportInput<'_>) -> (NaiveDate, NaiveDate) {
    let day = |name: &str| {
        input
            .params
            .get(name)
            .and_then(|value| day_param(name, value).ok())
    };
    let today = input.point.instant.date_naive();
    let to = day("to").unwrap_or(today);
    let from = day("from").unwrap_or_else(|| month_of(to));
    (from, to)
}

fn section() -> Section {
    let text = |name: &str| Column::new(name, ColumnKind::Text);
    let integer = |name: &str| Column::new(name, ColumnKind::Integer);
    Section {
        name: "records".into(),
        title: "Usage records".into(),
        columns: vec![
            Column::new("timestamp", ColumnKind::Timestamp),
            text("record_id"),
            text("model"),
            text("prompt_id"),
            integer("prompt_version"),
            text("prompt_label"),
            text("feature"),
            text("experiment_id"),
            text("variant"),
            text("subject"),
            text("key_id"),
            integer("input_tokens"),
            integer("output_tokens"),
            integer("cached_input_tokens"),
            integer("latency_ms"),
            text("status"),
            Column::new(
                "cost",
                ColumnKind::Money {
                    currency_column: Some(17),
                },
            ),
            text("currency"),
            Column::new("received_at", ColumnKind::Timestamp),
        ],
        charts: Vec::new(),
    }
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    let (from, to) = period(input);
    let range = (start_of(from), start_of(to + Days::new(1)));
    let prices = Prices::at(input).await?;
    let expected = sources::count_usage(input.pool, input.tenant, range, input.point.instant).await?;
    sink.expect_rows(u64::try_from(expected).unwrap_or(0));
    sink.section(section()).await?;
    let mut records = std::pin::pin!(sources::usage(
        input.pool,
        input.tenant,
        range,
        input.point.instant
    ));
    while let Some(record) = records.next().await {
        let record = record?;
        let cost = prices.cost(&record);
        let uuid = |id: Option<uuid::Uuid>| id.map_or(Cell::Empty, |id| Cell::Text(id.to_string()));
        let integer = |value: Option<i64>| value.map_or(Cell::Empty, Cell::Integer);
        let (amount, currency) = match cost {
            Some(cost) => (Cell::Money(cost.amount), Cell::Text(cost.currency)),
            None => (Cell::Empty, Cell::Empty),
        };
        sink.row(vec![
            Cell::Timestamp(record.ts),
            Cell::Text(record.record_id),
            Cell::Text(record.model),
            uuid(record.prompt_id),
            integer(record.prompt_version.map(i64::from)),
            Cell::optional_text(record.prompt_label),
            Cell::optional_text(record.feature),
            uuid(record.experiment_id),
            Cell::optional_text(record.variant),
            Cell::optional_text(record.subject),
            Cell::Text(record.key_id.to_string()),
            Cell::Integer(record.input_tokens),
            Cell::Integer(record.output_tokens),
            Cell::Integer(record.cached_input_tokens),
            integer(record.latency_ms.map(i64::from)),
            Cell::Text(record.status),
            amount,
            currency,
            Cell::Timestamp(record.ingested_at),
        ])
        .await?;
    }
    sink.flush().await
}
