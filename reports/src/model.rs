//! What a report is made of, independent of the file it is written as.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

/// The file formats a report can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Csv,
    Json,
    Ndjson,
    Xlsx,
    Pdf,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Csv,
        Format::Json,
        Format::Ndjson,
        Format::Xlsx,
        Format::Pdf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Xlsx => "xlsx",
            Format::Pdf => "pdf",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|format| format.as_str() == text)
    }

    /// The file name extension (without the dot).
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Pdf => "application/pdf",
        }
    }
}

/// What the whole report states about itself: written on an XLSX cover sheet, a PDF title
/// block and at the head of a JSON document.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// The report's kind (`spend`, `usage`, …).
    pub report: String,
    /// The title a reader sees ("Spend report").
    pub title: String,
    pub tenant: String,
    /// The period the report covers, when it covers one (inclusive days).
    pub period: Option<(NaiveDate, NaiveDate)>,
    /// The instant the report reflects: the state of the log and the telemetry then.
    pub as_of: DateTime<Utc>,
    /// The global cursor (`<transaction>-<position>`) of the last event it reflects.
    pub cursor: String,
    /// The parameters the report was asked with, as given (canonical JSON).
    pub params: serde_json::Value,
}

/// How a column's values are read and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    Integer,
    /// A measurement (a mean, a latency, a ratio): a floating-point number.
    Number,
    /// An amount of money; `currency_column` names the column of the same row holding its
    /// ISO 4217 code, when the section has one.
    Money {
        currency_column: Option<usize>,
    },
    /// A fraction shown as a percentage (0.25 is 25 %).
    Percent,
    Date,
    Timestamp,
    Boolean,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The header and the key in JSON rows: lower_snake_case.
    pub name: String,
    pub kind: ColumnKind,
}

impl Column {
    pub fn new(name: &str, kind: ColumnKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
        }
    }
}

/// One table of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Its key: the NDJSON `section`, the JSON member, the XLSX sheet name (≤ 31 characters).
    pub name: String,
    /// The heading a reader sees.
    pub title: String,
    pub columns: Vec<Column>,
    /// Charts drawn from this section's rows (the section is short where it has any).
    pub charts: Vec<Chart>,
}

/// A chart of a section's rows; columns are given by their index in the section.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub kind: ChartKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChartKind {
    /// A bar per row: `value` by `category`, with an optional horizontal line (a budget).
    Bars {
        category: usize,
        value: usize,
        line: Option<(String, f64)>,
    },
    /// A point per row at `mean` with an interval from `low` to `high` (a variant's mean and
    /// its confidence interval).
    Intervals {
        label: usize,
        mean: usize,
        low: usize,
        high: usize,
    },
    /// A line through the rows: `value` over `at` (a date or timestamp column).
    Line { at: usize, value: usize },
}

/// A value in a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    Integer(i64),
    Number(f64),
    Money(Decimal),
    Percent(f64),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
    Boolean(bool),
}

impl Cell {
    pub fn text(value: impl Into<String>) -> Cell {
        Cell::Text(value.into())
    }

    /// `Empty` for `None`.
    pub fn optional_text(value: Option<impl Into<String>>) -> Cell {
        value.map_or(Cell::Empty, |value| Cell::Text(value.into()))
    }

    /// The value as a number, for charts: money, integers, numbers and percentages.
    pub fn as_f64(&self) -> Option<f64> {
        use rust_decimal::prelude::ToPrimitive;
        match self {
            Cell::Integer(value) => Some(*value as f64),
            Cell::Number(value) | Cell::Percent(value) => Some(*value),
            Cell::Money(value) => value.to_f64(),
            _ => None,
        }
    }

    /// The value as text the way CSV and the PDF show it: money as its exact decimal,
    /// dates as ISO 8601, instants in UTC to the millisecond, numbers shortest round-trip
    /// (the PDF shows a percentage as one, to two decimals).
    pub fn display(&self) -> Option<String> {
        match self {
            Cell::Empty => None,
            Cell::Text(value) => Some(value.clone()),
            Cell::Integer(value) => Some(value.to_string()),
            Cell::Number(value) | Cell::Percent(value) => format_float(*value),
            Cell::Money(value) => Some(value.normalize().to_string()),
            Cell::Date(value) => Some(value.format("%Y-%m-%d").to_string()),
            Cell::Timestamp(value) => Some(format_instant(*value)),
            Cell::Boolean(value) => Some(value.to_string()),
        }
    }
}

/// An instant as the reports write it: RFC 3339 in UTC with milliseconds.
pub fn format_instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Shortest text that reads back as the same `f64`; a non-finite value has none (JSON
/// cannot hold it) and is written empty.
pub fn format_float(value: f64) -> Option<String> {
    value.is_finite().then(|| {
        let text = ryu::Buffer::new().format_finite(value).to_owned();
        match text.strip_suffix(".0") {
            Some(integral) => integral.to_owned(),
            None => text,
        }
    })
}
