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

impl Cell {
    /// Appends the value's text (as [`Cell::display`] gives it) to `out` without building a
    /// string of it — the formats write millions of cells — and says whether there was one.
    /// Only the kinds whose text never needs quoting or escaping: not text.
    pub fn push_plain(&self, out: &mut Vec<u8>) -> bool {
        use std::io::Write;
        match self {
            Cell::Empty => false,
            Cell::Integer(value) => write!(out, "{value}").is_ok(),
            Cell::Number(value) | Cell::Percent(value) => {
                if !value.is_finite() {
                    return false;
                }
                let mut buffer = ryu::Buffer::new();
                let text = buffer.format_finite(*value);
                out.extend_from_slice(text.strip_suffix(".0").unwrap_or(text).as_bytes());
                true
            }
            Cell::Money(value) => write!(out, "{}", value.normalize()).is_ok(),
            Cell::Date(day) => {
                push_date(out, *day);
                true
            }
            Cell::Timestamp(at) => {
                push_instant(out, *at);
                true
            }
            Cell::Boolean(value) => {
                out.extend_from_slice(if *value { b"true" } else { b"false" });
                true
            }
            Cell::Text(value) => {
                out.extend_from_slice(value.as_bytes());
                true
            }
        }
    }
}

fn push_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut rest = value;
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// `YYYY-MM-DD`, as `%Y-%m-%d` writes it.
fn push_date(out: &mut Vec<u8>, day: NaiveDate) {
    use chrono::Datelike;
    match u32::try_from(day.year()) {
        Ok(year) if year <= 9999 => {
            push_digits(out, year, 4);
            out.push(b'-');
            push_digits(out, day.month(), 2);
            out.push(b'-');
            push_digits(out, day.day(), 2);
        }
        _ => out.extend_from_slice(day.format("%Y-%m-%d").to_string().as_bytes()),
    }
}

/// [`format_instant`] into `out`.
fn push_instant(out: &mut Vec<u8>, at: DateTime<Utc>) {
    use chrono::Timelike;
    let time = at.time();
    let millis = time.nanosecond() / 1_000_000;
    let year = chrono::Datelike::year(&at);
    if !(0..=9999).contains(&year) || millis > 999 {
        // Far years and leap seconds: chrono's own formatting.
        out.extend_from_slice(format_instant(at).as_bytes());
        return;
    }
    push_date(out, at.date_naive());
    out.push(b'T');
    push_digits(out, time.hour(), 2);
    out.push(b':');
    push_digits(out, time.minute(), 2);
    out.push(b':');
    push_digits(out, time.second(), 2);
    out.push(b'.');
    push_digits(out, millis, 3);
    out.push(b'Z');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_the_display_text_of_every_kind() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc))
                .ok()
        };
        let cells = [
            Cell::Integer(-42),
            Cell::Number(0.1),
            Cell::Number(10.0),
            Cell::Number(f64::NAN),
            Cell::Percent(0.25),
            Cell::Money(Decimal::new(1_720_000, 6)),
            Cell::Date(NaiveDate::from_ymd_opt(2026, 7, 1).unwrap_or_default()),
            Cell::Timestamp(at("2026-07-10T10:00:00.123456Z").unwrap_or_default()),
            Cell::Timestamp(at("0099-01-02T03:04:05Z").unwrap_or_default()),
            Cell::Boolean(false),
            Cell::Empty,
        ];
        for cell in cells {
            let mut plain = Vec::new();
            let present = cell.push_plain(&mut plain);
            let display = cell.display();
            assert_eq!(present, display.is_some(), "{cell:?}");
            assert_eq!(
                String::from_utf8(plain).ok(),
                Some(display.unwrap_or_default()),
                "{cell:?}"
            );
        }
    }
}
