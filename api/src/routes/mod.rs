//! One module per resource; each exposes `router()`. A handler authorises, parses the
//! request into a domain command or a typed query (every invalid field at once), runs it
//! through the application state or a projection's queries, and renders the answer. SQL
//! lives with the projections, not here.

pub mod analytics;
pub mod approvals;
pub mod audit;
pub mod budgets;
pub mod bulk;
pub mod categories;
pub mod config;
pub mod conversations;
pub mod docs;
pub mod experiments;
pub mod exports;
pub mod feed;
pub mod flags;
pub mod health;
pub mod history;
pub mod incidents;
pub mod keys;
pub mod models;
pub mod prompts;
pub mod providers;
pub mod rate_limits;
pub mod runs;
pub mod schedules;
pub mod system;
pub mod usage;

use domain::text::InvalidText;

/// An instant given as RFC 3339 text in `field`.
pub fn parse_instant(field: &'static str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, InvalidText> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|instant| instant.with_timezone(&chrono::Utc))
        .map_err(|_| InvalidText::new(field, "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z"))
}

/// A day given as `YYYY-MM-DD` in `field`, when given.
pub fn parse_day(field: &'static str, text: Option<&str>) -> Result<Option<chrono::NaiveDate>, InvalidText> {
    text.map(|text| {
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| InvalidText::new(field, "must be a date, YYYY-MM-DD"))
    })
    .transpose()
}

/// Optional query texts (`(field, value)`) that, when given, must be 1 to 200 characters.
pub fn check_short_texts(texts: &[(&'static str, &Option<String>)]) -> Result<(), InvalidText> {
    for (field, value) in texts {
        if value
            .as_ref()
            .is_some_and(|text| text.is_empty() || text.chars().count() > 200)
        {
            return Err(InvalidText::new(field, "must be 1 to 200 characters"));
        }
    }
    Ok(())
}

/// Page size: `limit` when given (1..=max), else `default`.
pub fn page_size(limit: Option<i64>, default: i64, max: i64) -> Result<i64, InvalidText> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(InvalidText::new("limit", format!("must be between 1 and {max}"))),
    }
}
