//! Reading raw input (a request body, a query, a bulk operation's parameters) into domain
//! values, reporting every invalid field at once rather than the first one.
//!
//! Each field is parsed on its own into a `Result`; a tuple of those results becomes the
//! tuple of values, or [`Invalid`] with the errors of every field that failed:
//!
//! ```
//! use domain::fields::AllValid;
//! use domain::text::{DisplayName, Slug};
//!
//! let read = (DisplayName::parse("name", " "), Slug::parse("label", "Prod")).all_valid();
//! let fields: Vec<&str> = read.unwrap_err().errors().iter().map(|e| e.field).collect();
//! assert_eq!(fields, ["name", "label"]);
//! ```

use crate::text::InvalidText;

/// Every invalid field of one input, in the order the fields were read.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct Invalid(Vec<InvalidText>);

fn describe(errors: &[InvalidText]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

impl Invalid {
    /// One invalid field.
    pub fn field(field: &'static str, reason: impl Into<String>) -> Self {
        Self(vec![InvalidText::new(field, reason)])
    }

    pub fn errors(&self) -> &[InvalidText] {
        &self.0
    }

    pub fn into_errors(self) -> Vec<InvalidText> {
        self.0
    }

    pub fn extend(&mut self, other: Invalid) {
        self.0.extend(other.0);
    }

    pub fn push(&mut self, error: InvalidText) {
        self.0.push(error);
    }

    /// `Ok` when nothing was found invalid.
    pub fn into_result(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl From<InvalidText> for Invalid {
    fn from(error: InvalidText) -> Self {
        Self(vec![error])
    }
}

/// Parses each item of `values` with `parse`, collecting the values or every error.
pub fn each<T, E: Into<Invalid>>(
    values: impl IntoIterator<Item = impl AsRef<str>>,
    mut parse: impl FnMut(&str) -> Result<T, E>,
) -> Result<Vec<T>, Invalid> {
    let mut parsed = Vec::new();
    let mut invalid = Invalid::default();
    for value in values {
        match parse(value.as_ref()) {
            Ok(value) => parsed.push(value),
            Err(error) => invalid.extend(error.into()),
        }
    }
    if invalid.0.is_empty() {
        Ok(parsed)
    } else {
        Err(invalid)
    }
}

/// A tuple of field results that becomes the tuple of their values, or every error.
pub trait AllValid {
    type Values;

    fn all_valid(self) -> Result<Self::Values, Invalid>;
}

macro_rules! all_valid_for_tuples {
    ($(($($value:ident $error:ident),+))+) => {$(
        impl<$($value, $error: Into<Invalid>),+> AllValid for ($(Result<$value, $error>,)+) {
            type Values = ($($value,)+);

            #[allow(non_snake_case)]
            fn all_valid(self) -> Result<Self::Values, Invalid> {
                let ($($value,)+) = self;
                let mut invalid = Invalid::default();
                $(
                    let $value = match $value {
                        Ok(value) => Some(value),
                        Err(error) => {
                            invalid.extend(error.into());
                            None
                        }
                    };
                )+
                match ($($value,)+) {
                    ($(Some($value),)+) => Ok(($($value,)+)),
                    _ => Err(invalid),
                }
            }
        }
    )+};
}

all_valid_for_tuples! {
    (A EA)
    (A EA, B EB)
    (A EA, B EB, C EC)
    (A EA, B EB, C EC, D ED)
    (A EA, B EB, C EC, D ED, E EE)
    (A EA, B EB, C EC, D ED, E EE, F EF)
    (A EA, B EB, C EC, D ED, E EE, F EF, G EG)
    (A EA, B EB, C EC, D ED, E EE, F EF, G EG, H EH)
    (A EA, B EB, C EC, D ED, E EE, F EF, G EG, H EH, I EI)
    (A EA, B EB, C EC, D ED, E EE, F EF, G EG, H EH, I EI, J EJ)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{DisplayName, Slug};

    #[test]
    fn valid_fields_give_their_values_in_order() {
        let (name, label) = (DisplayName::parse("name", " a "), Slug::parse("label", "prod"))
            .all_valid()
            .unwrap();
        assert_eq!((name.as_ref(), label.as_ref()), ("a", "prod"));
    }

    #[test]
    fn every_invalid_field_is_reported_in_the_order_read() {
        let invalid = (
            Slug::parse("label", "Bad"),
            DisplayName::parse("name", "fine"),
            each(["ok", "Not ok", "also bad!"], |t| Slug::parse("tags", t)),
        )
            .all_valid()
            .unwrap_err();
        let fields: Vec<&str> = invalid.errors().iter().map(|e| e.field).collect();
        assert_eq!(fields, ["label", "tags", "tags"]);
    }

    #[test]
    fn each_keeps_every_value_when_all_parse() {
        let tags = each(["a", "b"], |t| Slug::parse("tags", t)).unwrap();
        assert_eq!(tags.len(), 2);
    }
}
