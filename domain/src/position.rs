//! The place of an event in the one global order that every reader tails.

use serde::{Deserialize, Serialize};

/// `(transaction id, position)` of an event: events are read in this order, and a reader
/// that has seen a cursor has seen every committed event before it.
///
/// Positions alone are not enough: they are assigned at insert, not at commit, so a
/// transaction that commits late can hold a smaller position than events already read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GlobalCursor {
    pub transaction_id: i64,
    pub position: i64,
}

impl GlobalCursor {
    /// The cursor before the first event.
    pub const START: GlobalCursor = GlobalCursor {
        transaction_id: 0,
        position: 0,
    };

    pub fn new(transaction_id: i64, position: i64) -> Self {
        Self {
            transaction_id,
            position,
        }
    }
}

impl std::fmt::Display for GlobalCursor {
    /// Formats as `<transaction id>-<position>`, the form clients pass back to resume.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.transaction_id, self.position)
    }
}

impl std::str::FromStr for GlobalCursor {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let invalid = || format!("invalid cursor {value:?}; expected <transaction>-<position>");
        let (transaction, position) = value.split_once('-').ok_or_else(invalid)?;
        let transaction_id = transaction.parse::<i64>().map_err(|_| invalid())?;
        let position = position.parse::<i64>().map_err(|_| invalid())?;
        if transaction_id < 0 || position < 0 {
            return Err(invalid());
        }
        Ok(Self {
            transaction_id,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::GlobalCursor;

    #[test]
    fn cursors_order_by_transaction_first_and_round_trip_through_text() {
        assert!(GlobalCursor::new(5, 100) < GlobalCursor::new(6, 1));
        let cursor: GlobalCursor = "42-7".parse().unwrap();
        assert_eq!(cursor, GlobalCursor::new(42, 7));
        assert_eq!(cursor.to_string(), "42-7");
        assert!("42".parse::<GlobalCursor>().is_err());
        assert!("-1-2".parse::<GlobalCursor>().is_err());
    }
}
