//! One module per resource; each exposes `router()`.

pub mod audit;
pub mod categories;
pub mod docs;
pub mod feed;
pub mod keys;
pub mod prompts;
pub mod rate_limits;
pub mod system;

use crate::error::{ApiError, FieldError};

/// Collects every field error of a request, so that a client learns all of them at once.
#[derive(Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    /// Keeps the value, or records the error and returns `None`.
    pub fn check<T, E: Into<ApiError>>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                match error.into() {
                    ApiError::Validation(errors) => self.0.extend(errors),
                    other => self.0.push(FieldError {
                        field: "body".into(),
                        message: other.to_string(),
                    }),
                }
                None
            }
        }
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `Err` with every recorded error, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// An instant given as RFC 3339 text in `field`.
pub fn parse_instant(field: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|instant| instant.with_timezone(&chrono::Utc))
        .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z"))
}

/// Page size: `limit` when given (1..=max), else `default`.
pub fn page_size(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", format!("must be between 1 and {max}"))),
    }
}
