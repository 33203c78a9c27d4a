//! Counts of the commands this process ran and the events it appended, by type, for the
//! metrics endpoint. Plain counters behind one lock: a command takes it once, after it has
//! committed or failed.

use std::collections::HashMap;
use std::sync::Mutex;

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Events were appended.
    Committed,
    /// Accepted, but nothing to change.
    Unchanged,
    /// The aggregate refused it, or it broke a rule of names and references.
    Rejected,
    /// A stale `If-Match`, or concurrent writers kept winning.
    Conflict,
    /// The database failed.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
        }
    }
}

#[derive(Default)]
struct Counts {
    commands: HashMap<(&'static str, Outcome), u64>,
    events: HashMap<(&'static str, String), u64>,
}

/// The counts since the process started. Cloning an `EventStore` shares them.
#[derive(Default)]
pub struct CommandStats(Mutex<Counts>);

impl CommandStats {
    pub(crate) fn record(&self, aggregate_type: &'static str, outcome: Outcome, event_types: &[String]) {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.commands.entry((aggregate_type, outcome)).or_default() += 1;
        for event_type in event_types {
            *counts
                .events
                .entry((aggregate_type, event_type.clone()))
                .or_default() += 1;
        }
    }

    /// Commands by aggregate type and outcome.
    pub fn commands(&self) -> Vec<(&'static str, Outcome, u64)> {
        let counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts
            .commands
            .iter()
            .map(|((aggregate, outcome), n)| (*aggregate, *outcome, *n))
            .collect()
    }

    /// Events appended by aggregate type and event type.
    pub fn events(&self) -> Vec<(&'static str, String, u64)> {
        let counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts
            .events
            .iter()
            .map(|((aggregate, event), n)| (*aggregate, event.clone(), *n))
            .collect()
    }
}
