//! Validated text values shared by several aggregates (parse, don't validate).

use serde::{Deserialize, Serialize};

/// Why a piece of text was refused; names the field so that clients can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidText {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidText {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Trims `value` and checks it is non-empty, at most `max_chars` long and free of control
/// characters.
pub fn parse_line(field: &'static str, value: &str, max_chars: usize) -> Result<String, InvalidText> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(InvalidText::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(InvalidText::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidText::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

/// A name shown to people: a prompt's, a category's, a key's. 1–200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, InvalidText> {
        parse_line(field, value, 200).map(Self)
    }
}

impl AsRef<str> for DisplayName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A machine-friendly identifier (tags, labels, tenant slugs): 1–64 characters of
/// lowercase ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, InvalidText> {
        let valid_start = value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid_chars = value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
        if value.is_empty() || value.len() > 64 || !valid_start || !valid_chars {
            return Err(InvalidText::new(
                field,
                "must be 1-64 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit",
            ));
        }
        Ok(Self(value.to_string()))
    }
}

impl AsRef<str> for Slug {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Slug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_trimmed_and_over_long_names_are_rejected() {
        assert_eq!(
            DisplayName::parse("name", "  hi ").map(|n| n.0),
            Ok("hi".to_string())
        );
        assert!(DisplayName::parse("name", &"x".repeat(201)).is_err());
        assert!(DisplayName::parse("name", "   ").is_err());
        assert!(DisplayName::parse("name", "a\u{0}b").is_err());
    }

    #[test]
    fn slugs_are_lowercase_identifiers() {
        assert!(Slug::parse("tag", "prod-eu.1").is_ok());
        assert!(Slug::parse("tag", "Prod").is_err());
        assert!(Slug::parse("tag", "-x").is_err());
        assert!(Slug::parse("tag", "").is_err());
        assert!(Slug::parse("tag", "a b").is_err());
    }
}
