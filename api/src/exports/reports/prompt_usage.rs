//! `prompt_usage`: one prompt's analytics over a period, from its usage records received by
//! the report's point and priced at it: per version its calls, errors, tokens, cost,
//! latency percentiles and metric means, and per day and version its calls and cost.
//! Parameters: `prompt_id` (required), `from` and `to` (days, inclusive; by default the
//! month of the point).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Days, NaiveDate, Utc};
use domain::call_summary::CallSummary;
use futures::StreamExt;
use projections::export::sources;
use reports::{Cell, Chart, ChartKind, Column, ColumnKind, Section};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{day_param, month_of, start_of, Prices, ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &["versions", "daily"];

/// The days covered, inclusive.
pub fn period(input: &ReportInput<'_>) -> (NaiveDate, NaiveDate) {
    let day = |name: &str| {
        input
            .params
            .get(name)
            .and_then(|value| day_param(name, value).ok())
    };
    let to = day("to").unwrap_or_else(|| {
        let start = month_of(day("from").unwrap_or(input.point.instant.date_naive()));
        start
            .checked_add_months(chrono::Months::new(1))
            .and_then(|next| next.pred_opt())
            .unwrap_or(start)
    });
    let from = day("from").unwrap_or_else(|| month_of(to));
    (from, to)
}

/// The `prompt_id` parameter, once checked.
pub fn prompt_id(input: &ReportInput<'_>) -> Option<Uuid> {
    input
        .params
        .get("prompt_id")
        .and_then(|value| value.as_str())
        .and_then(|text| text.parse().ok())
}

/// A version, newest first (calls that named none last).
type VersionKey = std::cmp::Reverse<Option<i32>>;

/// A day's row: by day, newest version first, then currency (empty: unpriced).
type DayKey = (NaiveDate, VersionKey, String);

/// What a set of calls came to.
#[derive(Default)]
struct Totals {
    calls: i64,
    errors: i64,
    input_tokens: i64,
    output_tokens: i64,
    /// By currency.
    costs: BTreeMap<String, Decimal>,
    uncosted: i64,
    labels: BTreeSet<String>,
    last_call: Option<DateTime<Utc>>,
    summary: CallSummary,
}

/// A column's name for a metric's mean: lower_snake_case whatever the metric is called.
fn metric_column(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("mean_{cleaned}")
}

/// A cost and its currency: the currency's total when every priced call was in one currency;
/// with several, none (each day's rows keep them apart).
fn cost_cells(costs: &BTreeMap<String, Decimal>) -> (Cell, Cell) {
    match costs.iter().collect::<Vec<_>>().as_slice() {
        [] => (Cell::Empty, Cell::Empty),
        [(currency, cost)] => (Cell::Money(**cost), Cell::Text((*currency).clone())),
        several => (
            Cell::Empty,
            Cell::Text(
                several
                    .iter()
                    .map(|(currency, _)| currency.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ),
    }
}

fn versions_section(metrics: &[String]) -> Section {
    let integer = |name: &str| Column::new(name, ColumnKind::Integer);
    let number = |name: &str| Column::new(name, ColumnKind::Number);
    let mut columns = vec![
        integer("version"),
        Column::new("labels", ColumnKind::Text),
        integer("calls"),
        integer("errors"),
        Column::new("error_rate", ColumnKind::Percent),
        integer("input_tokens"),
        integer("output_tokens"),
        Column::new(
            "cost",
            ColumnKind::Money {
                currency_column: Some(8),
            },
        ),
        Column::new("currency", ColumnKind::Text),
        integer("uncosted_calls"),
        number("latency_p50_ms"),
        number("latency_p95_ms"),
        number("latency_p99_ms"),
    ];
    columns.extend(metrics.iter().map(|name| number(&metric_column(name))));
    columns.push(Column::new("last_call", ColumnKind::Timestamp));
    Section {
        name: "versions".into(),
        title: "By version".into(),
        columns,
        charts: Vec::new(),
    }
}

fn daily_section() -> Section {
    Section {
        name: "daily".into(),
        title: "By day and version".into(),
        columns: vec![
            Column::new("day", ColumnKind::Date),
            Column::new("version", ColumnKind::Integer),
            Column::new("calls", ColumnKind::Integer),
            Column::new(
                "cost",
                ColumnKind::Money {
                    currency_column: Some(4),
                },
            ),
            Column::new("currency", ColumnKind::Text),
        ],
        charts: vec![Chart {
            title: "Calls per day (a bar per day and version)".into(),
            kind: ChartKind::Bars {
                category: 0,
                value: 2,
                line: None,
            },
        }],
    }
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    let Some(prompt) = prompt_id(input) else {
        return Err(Stop::Invalid("params.prompt_id must be a prompt's id".into()));
    };
    if !sources::exists::<domain::prompt::Prompt>(input.pool, input.tenant, input.point, &prompt.to_string())
        .await?
    {
        return Err(Stop::Invalid(format!(
            "the prompt {prompt} did not exist at the report's point"
        )));
    }
    let (from, to) = period(input);
    let range = (start_of(from), start_of(to + Days::new(1)));
    let prices = Prices::at(input).await?;
    // Newest version first, as the analytics show them.
    let mut versions: BTreeMap<VersionKey, Totals> = BTreeMap::new();
    let mut daily: BTreeMap<DayKey, (i64, Decimal)> = BTreeMap::new();
    let mut metric_names: BTreeSet<String> = BTreeSet::new();
    let mut records = std::pin::pin!(sources::prompt_usage(
        input.pool,
        input.tenant,
        prompt,
        range,
        input.point.instant
    ));
    while let Some(row) = records.next().await {
        let row = row?;
        let record = &row.record;
        let cost = prices.cost(record);
        let version = std::cmp::Reverse(record.prompt_version);
        let totals = versions.entry(version).or_default();
        totals.calls += 1;
        totals.errors += i64::from(record.status != "ok");
        totals.input_tokens += record.input_tokens;
        totals.output_tokens += record.output_tokens;
        match &cost {
            Some(cost) => *totals.costs.entry(cost.currency.clone()).or_default() += cost.amount,
            None => totals.uncosted += 1,
        }
        totals.labels.extend(record.prompt_label.clone());
        totals.last_call = totals.last_call.max(Some(record.ts));
        let metrics: BTreeMap<String, f64> = row
            .metrics
            .as_ref()
            .and_then(|metrics| metrics.as_object())
            .map(|object| {
                object
                    .iter()
                    .filter_map(|(name, value)| Some((name.clone(), value.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        metric_names.extend(metrics.keys().cloned());
        totals
            .summary
            .add_call(record.latency_ms.and_then(|ms| u32::try_from(ms).ok()), &metrics);
        let currency = cost
            .as_ref()
            .map(|cost| cost.currency.clone())
            .unwrap_or_default();
        let day = daily
            .entry((record.ts.date_naive(), version, currency))
            .or_default();
        day.0 += 1;
        day.1 += cost.map_or(Decimal::ZERO, |cost| cost.amount);
    }

    let metric_names: Vec<String> = metric_names.into_iter().collect();
    sink.expect_rows((versions.len() + daily.len()) as u64);
    sink.section(versions_section(&metric_names)).await?;
    for (std::cmp::Reverse(version), totals) in &versions {
        let (cost, currency) = cost_cells(&totals.costs);
        let latency = totals.summary.latency_percentiles();
        let means = totals.summary.metric_means();
        let error_rate = if totals.calls == 0 {
            0.0
        } else {
            totals.errors as f64 / totals.calls as f64
        };
        let mut cells = vec![
            version.map_or(Cell::Empty, |version| Cell::Integer(i64::from(version))),
            if totals.labels.is_empty() {
                Cell::Empty
            } else {
                Cell::Text(totals.labels.iter().cloned().collect::<Vec<_>>().join(" "))
            },
            Cell::Integer(totals.calls),
            Cell::Integer(totals.errors),
            Cell::Percent(error_rate),
            Cell::Integer(totals.input_tokens),
            Cell::Integer(totals.output_tokens),
            cost,
            currency,
            Cell::Integer(totals.uncosted),
            latency.map_or(Cell::Empty, |latency| Cell::Number(latency.p50)),
            latency.map_or(Cell::Empty, |latency| Cell::Number(latency.p95)),
            latency.map_or(Cell::Empty, |latency| Cell::Number(latency.p99)),
        ];
        cells.extend(
            metric_names
                .iter()
                .map(|name| means.get(name).map_or(Cell::Empty, |mean| Cell::Number(*mean))),
        );
        cells.push(totals.last_call.map_or(Cell::Empty, Cell::Timestamp));
        sink.row(cells).await?;
    }
    sink.section(daily_section()).await?;
    for ((day, std::cmp::Reverse(version), currency), (calls, cost)) in daily {
        let priced = !currency.is_empty();
        sink.row(vec![
            Cell::Date(day),
            version.map_or(Cell::Empty, |version| Cell::Integer(i64::from(version))),
            Cell::Integer(calls),
            if priced { Cell::Money(cost) } else { Cell::Empty },
            if priced { Cell::Text(currency) } else { Cell::Empty },
        ])
        .await?;
    }
    sink.flush().await
}
