//! The `BulkJob` aggregate: one operation applied to a fixed list of targets, item by item;
//! tracked, cancellable between items, and in `atomic` mode undone as a whole when an item
//! fails.
//!
//! A job records what it is about to do before doing it: `BulkItemsPlanned` names, for each
//! item, the version of the target the change expects and how to undo it; then
//! `BulkItemsProcessed` says what happened. A job whose process died therefore knows, for
//! every item, whether it was never started, may have been applied (planned: the target's
//! own log says, by the item's request id), or is finished, so resuming it applies no item
//! twice and forgets none. The job decides its own next status from what it is told.
//!
//! What the operations are and how an item is applied is not this aggregate's business: it
//! stores the operation's name, its parameters and each item's undo as given.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod operations;

use crate::governed::Governed;
use crate::text::InvalidText;

/// Most targets one job may have: its submission is one event, and every event must fit in
/// one message of the live feeds.
pub const MAX_TARGETS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkMode {
    /// Every item is tried; what fails is reported and the rest stays applied.
    BestEffort,
    /// All or nothing: when an item fails (or the job is cancelled), every item already
    /// applied is undone, in reverse order.
    Atomic,
}

impl BulkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BestEffort => "best_effort",
            Self::Atomic => "atomic",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        [Self::BestEffort, Self::Atomic]
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| InvalidText::new(field, "must be best_effort or atomic"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    #[default]
    Queued,
    Running,
    /// Every item was tried (some may have failed, in best-effort mode).
    Done,
    /// An atomic job could not undo every item it had applied.
    Failed,
    Cancelled,
    Compensating,
    /// An atomic job undid every item it had applied.
    Compensated,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
        }
    }

    /// Why an item never started when the job finished with this status.
    pub fn never_started_reason(self) -> &'static str {
        match self {
            Self::Cancelled => "the job was cancelled before this item",
            _ => "the job stopped before this item",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Cancelled | Self::Compensated
        )
    }
}

/// Why an atomic job undoes what it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CompensationCause {
    ItemFailed {
        index: usize,
    },
    Cancelled,
    /// Its process stopped (a restart, a crash) while it ran: an interrupted atomic job is
    /// undone, as an interrupted transaction is rolled back.
    Interrupted,
}

/// The key that submitted a job, and why: the job's changes are made as that key's, with
/// this reason.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Submitter {
    pub key_id: String,
    pub name: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Where one item stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ItemState {
    Pending,
    /// About to be applied, or applied by a process that died before saying so.
    Planned {
        expected_version: u64,
        undo: Option<Value>,
    },
    Applied {
        version: u64,
        undo: Option<Value>,
    },
    Failed {
        error: String,
    },
    Skipped {
        reason: String,
    },
    /// Applied, then undone: the target is at `version` after the undo.
    Compensated {
        version: u64,
    },
    /// Applied, and the undo failed.
    CompensationFailed {
        error: String,
    },
}

/// A planned item: the target's version the change expects, and how to undo it (`None`
/// when the operation cannot be undone; an atomic job never has such an item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedItem {
    pub index: usize,
    pub expected_version: u64,
    pub undo: Option<Value>,
}

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ItemResult {
    /// Applied; the target is at `version`.
    Applied {
        version: u64,
    },
    Failed {
        error: String,
    },
    /// Nothing to change (already so), or not applicable.
    Skipped {
        reason: String,
    },
    /// Planned but not tried (the job stopped first): pending again.
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutcome {
    pub index: usize,
    #[serde(flatten)]
    pub result: ItemResult,
}

/// What undoing one applied item did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CompensationResult {
    Compensated { version: u64 },
    Failed { error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationOutcome {
    pub index: usize,
    #[serde(flatten)]
    pub result: CompensationResult,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BulkCommand {
    Submit {
        tenant: String,
        operation: String,
        params: Value,
        mode: BulkMode,
        targets: Vec<String>,
        /// The filter the targets were resolved from, if they were.
        filter: Option<Value>,
        submitter: Submitter,
    },
    Start,
    Plan {
        items: Vec<PlannedItem>,
    },
    Record {
        outcomes: Vec<ItemOutcome>,
    },
    Cancel,
    RecordCompensations {
        outcomes: Vec<CompensationOutcome>,
    },
    /// An atomic job taken up after its process stopped: undo what it applied.
    RollBack,
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BulkEvent {
    BulkJobSubmitted {
        tenant: String,
        operation: String,
        params: Value,
        mode: BulkMode,
        targets: Vec<String>,
        filter: Option<Value>,
        submitter: Submitter,
    },
    BulkJobStarted,
    BulkItemsPlanned {
        items: Vec<PlannedItem>,
    },
    /// Outcomes of items, with the job's counts after them (for subscribers following its
    /// progress).
    BulkItemsProcessed {
        outcomes: Vec<ItemOutcome>,
        progress: Progress,
    },
    BulkJobCancelRequested,
    BulkJobCompensating {
        because: CompensationCause,
    },
    BulkItemsCompensated {
        outcomes: Vec<CompensationOutcome>,
        progress: Progress,
    },
    BulkJobFinished {
        status: JobStatus,
        progress: Progress,
    },
}

impl DomainEvent for BulkEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BulkJobSubmitted { .. } => "BulkJobSubmitted",
            Self::BulkJobStarted => "BulkJobStarted",
            Self::BulkItemsPlanned { .. } => "BulkItemsPlanned",
            Self::BulkItemsProcessed { .. } => "BulkItemsProcessed",
            Self::BulkJobCancelRequested => "BulkJobCancelRequested",
            Self::BulkJobCompensating { .. } => "BulkJobCompensating",
            Self::BulkItemsCompensated { .. } => "BulkItemsCompensated",
            Self::BulkJobFinished { .. } => "BulkJobFinished",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

/// How many items stand where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub total: usize,
    /// Applied (including those later undone).
    pub done: usize,
    pub failed: usize,
    pub skipped: usize,
    pub compensated: usize,
    pub compensation_failed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    #[error("no such bulk job")]
    NotFound,
    #[error("a bulk job with this id already exists")]
    AlreadyExists,
    #[error("the job is already {0}")]
    Finished(&'static str),
    #[error("item {0} is not in a state this change applies to")]
    UnexpectedItem(usize),
    #[error("the job is {0}, not where this step belongs")]
    WrongStatus(&'static str),
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkJob {
    pub tenant: Option<String>,
    pub operation: String,
    pub params: Value,
    pub mode: Option<BulkMode>,
    pub targets: Vec<String>,
    pub submitter: Submitter,
    pub status: JobStatus,
    pub cancel_requested: bool,
    pub items: Vec<ItemState>,
}

impl BulkJob {
    pub fn progress(&self) -> Progress {
        let mut progress = Progress {
            total: self.items.len(),
            ..Progress::default()
        };
        for item in &self.items {
            match item {
                ItemState::Pending | ItemState::Planned { .. } => {}
                ItemState::Applied { .. } => progress.done += 1,
                ItemState::Failed { .. } => progress.failed += 1,
                ItemState::Skipped { .. } => progress.skipped += 1,
                ItemState::Compensated { .. } => {
                    progress.done += 1;
                    progress.compensated += 1;
                }
                ItemState::CompensationFailed { .. } => {
                    progress.done += 1;
                    progress.compensation_failed += 1;
                }
            }
        }
        progress
    }

    /// Items planned but not yet recorded as processed, in order.
    pub fn planned(&self) -> Vec<(usize, u64)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| match item {
                ItemState::Planned { expected_version, .. } => Some((index, *expected_version)),
                _ => None,
            })
            .collect()
    }

    /// Up to `limit` items not yet started, in order.
    pub fn next_pending(&self, limit: usize) -> Vec<usize> {
        self.items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item, ItemState::Pending))
            .map(|(index, _)| index)
            .take(limit)
            .collect()
    }

    /// Applied items still to undo, last applied first: `(index, version, undo)`.
    pub fn to_compensate(&self) -> Vec<(usize, u64, Option<Value>)> {
        self.items
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(index, item)| match item {
                ItemState::Applied { version, undo } => Some((index, *version, undo.clone())),
                _ => None,
            })
            .collect()
    }

    fn is_processed(item: &ItemState) -> bool {
        !matches!(item, ItemState::Pending | ItemState::Planned { .. })
    }

    /// The events that follow from where the job stands: compensating, or finishing.
    fn next_step(&self) -> Vec<BulkEvent> {
        let planned = self
            .items
            .iter()
            .any(|item| matches!(item, ItemState::Planned { .. }));
        if planned {
            return Vec::new(); // the runner has items in flight; it reports them first
        }
        let applied = self
            .items
            .iter()
            .any(|item| matches!(item, ItemState::Applied { .. }));
        let failed = self
            .items
            .iter()
            .position(|item| matches!(item, ItemState::Failed { .. }));
        let atomic = self.mode == Some(BulkMode::Atomic);
        let mut after = self.clone();
        let mut events = Vec::new();
        match self.status {
            JobStatus::Running if atomic && (failed.is_some() || self.cancel_requested) => {
                let because = match failed {
                    Some(index) => CompensationCause::ItemFailed { index },
                    None => CompensationCause::Cancelled,
                };
                let compensating = BulkEvent::BulkJobCompensating { because };
                after.apply(compensating.clone());
                events.push(compensating);
                if !applied {
                    events.push(after.finish(JobStatus::Compensated));
                }
            }
            JobStatus::Running if self.cancel_requested => events.push(after.finish(JobStatus::Cancelled)),
            JobStatus::Running if self.items.iter().all(Self::is_processed) => {
                events.push(after.finish(JobStatus::Done));
            }
            JobStatus::Compensating if !applied => {
                let undo_failed = self
                    .items
                    .iter()
                    .any(|item| matches!(item, ItemState::CompensationFailed { .. }));
                let status = if undo_failed {
                    JobStatus::Failed
                } else {
                    JobStatus::Compensated
                };
                events.push(after.finish(status));
            }
            _ => {}
        }
        events
    }

    /// The event finishing the job with `status`; items never started count as skipped.
    fn finish(&self, status: JobStatus) -> BulkEvent {
        let mut after = self.clone();
        after.status = status;
        after.skip_pending(status);
        BulkEvent::BulkJobFinished {
            status,
            progress: after.progress(),
        }
    }

    fn skip_pending(&mut self, status: JobStatus) {
        for item in &mut self.items {
            if matches!(item, ItemState::Pending) {
                *item = ItemState::Skipped {
                    reason: status.never_started_reason().to_string(),
                };
            }
        }
    }

    fn require_active(&self) -> Result<(), BulkError> {
        if self.status.is_finished() {
            return Err(BulkError::Finished(self.status.as_str()));
        }
        Ok(())
    }

    async fn write_all(&mut self, events: Vec<BulkEvent>, sink: &EventSink<Self>) {
        for event in events {
            sink.write(event, self).await;
        }
    }
}

impl Aggregate for BulkJob {
    /// Keys every stored bulk job event: changing it orphans the history.
    const TYPE: &'static str = "bulk_job";
    type Command = BulkCommand;
    type Event = BulkEvent;
    type Error = BulkError;
    type Services = ();

    async fn handle(
        &mut self,
        command: BulkCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), BulkError> {
        match command {
            BulkCommand::Submit { .. } if self.tenant.is_some() => return Err(BulkError::AlreadyExists),
            BulkCommand::Submit {
                tenant,
                operation,
                params,
                mode,
                targets,
                filter,
                submitter,
            } => {
                let submitted = BulkEvent::BulkJobSubmitted {
                    tenant,
                    operation,
                    params,
                    mode,
                    targets,
                    filter,
                    submitter,
                };
                sink.write(submitted, self).await;
                // A job with nothing to do is done at once.
                let next = self.next_step_of_empty();
                self.write_all(next, sink).await;
            }
            _ if self.tenant.is_none() => return Err(BulkError::NotFound),
            BulkCommand::Start => {
                if self.status != JobStatus::Queued {
                    return Ok(()); // started already: starting again changes nothing
                }
                sink.write(BulkEvent::BulkJobStarted, self).await;
                let next = self.next_step();
                self.write_all(next, sink).await;
            }
            BulkCommand::Plan { items } => {
                if self.status != JobStatus::Running || self.cancel_requested {
                    return Err(BulkError::WrongStatus(self.status.as_str()));
                }
                for item in &items {
                    if !matches!(self.items.get(item.index), Some(ItemState::Pending)) {
                        return Err(BulkError::UnexpectedItem(item.index));
                    }
                }
                if !items.is_empty() {
                    sink.write(BulkEvent::BulkItemsPlanned { items }, self).await;
                }
            }
            BulkCommand::Record { outcomes } => {
                self.require_active()?;
                let mut after = self.clone();
                for outcome in &outcomes {
                    let item = after.items.get(outcome.index);
                    // Only a planned item can have been applied (or be released); any
                    // item not yet processed can fail or be skipped.
                    let recordable = matches!(
                        (&outcome.result, item),
                        (
                            ItemResult::Released | ItemResult::Applied { .. },
                            Some(ItemState::Planned { .. })
                        ) | (
                            ItemResult::Failed { .. } | ItemResult::Skipped { .. },
                            Some(ItemState::Planned { .. } | ItemState::Pending)
                        )
                    );
                    if !recordable {
                        return Err(BulkError::UnexpectedItem(outcome.index));
                    }
                    after.record(outcome);
                }
                if !outcomes.is_empty() {
                    let progress = after.progress();
                    sink.write(BulkEvent::BulkItemsProcessed { outcomes, progress }, self)
                        .await;
                }
                let next = self.next_step();
                self.write_all(next, sink).await;
            }
            BulkCommand::Cancel => {
                self.require_active()?;
                if self.cancel_requested {
                    return Ok(());
                }
                sink.write(BulkEvent::BulkJobCancelRequested, self).await;
                if self.status == JobStatus::Queued {
                    let finished = self.finish(JobStatus::Cancelled);
                    sink.write(finished, self).await;
                } else {
                    let next = self.next_step();
                    self.write_all(next, sink).await;
                }
            }
            BulkCommand::RollBack => {
                if self.status != JobStatus::Running || self.mode != Some(BulkMode::Atomic) {
                    return Err(BulkError::WrongStatus(self.status.as_str()));
                }
                if self
                    .items
                    .iter()
                    .any(|item| matches!(item, ItemState::Planned { .. }))
                {
                    return Err(BulkError::WrongStatus("in doubt"));
                }
                let compensating = BulkEvent::BulkJobCompensating {
                    because: CompensationCause::Interrupted,
                };
                sink.write(compensating, self).await;
                let next = self.next_step();
                self.write_all(next, sink).await;
            }
            BulkCommand::RecordCompensations { outcomes } => {
                if self.status != JobStatus::Compensating {
                    return Err(BulkError::WrongStatus(self.status.as_str()));
                }
                let mut after = self.clone();
                for outcome in &outcomes {
                    if !matches!(after.items.get(outcome.index), Some(ItemState::Applied { .. })) {
                        return Err(BulkError::UnexpectedItem(outcome.index));
                    }
                    after.compensate(outcome);
                }
                if !outcomes.is_empty() {
                    let progress = after.progress();
                    sink.write(BulkEvent::BulkItemsCompensated { outcomes, progress }, self)
                        .await;
                }
                let next = self.next_step();
                self.write_all(next, sink).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: BulkEvent) {
        match event {
            BulkEvent::BulkJobSubmitted {
                tenant,
                operation,
                params,
                mode,
                targets,
                filter: _,
                submitter,
            } => {
                self.tenant = Some(tenant);
                self.operation = operation;
                self.params = params;
                self.mode = Some(mode);
                self.items = vec![ItemState::Pending; targets.len()];
                self.targets = targets;
                self.submitter = submitter;
                self.status = JobStatus::Queued;
            }
            BulkEvent::BulkJobStarted => self.status = JobStatus::Running,
            BulkEvent::BulkItemsPlanned { items } => {
                for item in items {
                    if let Some(state) = self.items.get_mut(item.index) {
                        *state = ItemState::Planned {
                            expected_version: item.expected_version,
                            undo: item.undo,
                        };
                    }
                }
            }
            BulkEvent::BulkItemsProcessed { outcomes, .. } => {
                for outcome in &outcomes {
                    self.record(outcome);
                }
            }
            BulkEvent::BulkJobCancelRequested => self.cancel_requested = true,
            BulkEvent::BulkJobCompensating { .. } => self.status = JobStatus::Compensating,
            BulkEvent::BulkItemsCompensated { outcomes, .. } => {
                for outcome in &outcomes {
                    self.compensate(outcome);
                }
            }
            BulkEvent::BulkJobFinished { status, .. } => {
                self.status = status;
                self.skip_pending(status);
            }
        }
    }
}

impl BulkJob {
    fn record(&mut self, outcome: &ItemOutcome) {
        let Some(item) = self.items.get_mut(outcome.index) else {
            return;
        };
        *item = match (&outcome.result, &*item) {
            (ItemResult::Applied { version }, ItemState::Planned { undo, .. }) => ItemState::Applied {
                version: *version,
                undo: undo.clone(),
            },
            (ItemResult::Applied { version }, _) => ItemState::Applied {
                version: *version,
                undo: None,
            },
            (ItemResult::Failed { error }, _) => ItemState::Failed { error: error.clone() },
            (ItemResult::Skipped { reason }, _) => ItemState::Skipped {
                reason: reason.clone(),
            },
            (ItemResult::Released, _) => ItemState::Pending,
        };
    }

    fn compensate(&mut self, outcome: &CompensationOutcome) {
        let Some(item) = self.items.get_mut(outcome.index) else {
            return;
        };
        *item = match &outcome.result {
            CompensationResult::Compensated { version } => ItemState::Compensated { version: *version },
            CompensationResult::Failed { error } => ItemState::CompensationFailed { error: error.clone() },
        };
    }

    /// A job submitted with no targets finishes at once.
    fn next_step_of_empty(&self) -> Vec<BulkEvent> {
        if self.items.is_empty() {
            vec![self.finish(JobStatus::Done)]
        } else {
            Vec::new()
        }
    }
}

impl Governed for BulkJob {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    use super::*;

    type Given = TestFramework<BulkJob>;

    fn submitted(mode: BulkMode, targets: usize) -> BulkEvent {
        BulkEvent::BulkJobSubmitted {
            tenant: "acme".into(),
            operation: "prompt.archive".into(),
            params: json!({}),
            mode,
            targets: (0..targets).map(|i| format!("t{i}")).collect(),
            filter: None,
            submitter: Submitter::default(),
        }
    }

    fn planned(indexes: &[usize]) -> BulkEvent {
        BulkEvent::BulkItemsPlanned {
            items: indexes
                .iter()
                .map(|&index| PlannedItem {
                    index,
                    expected_version: 1,
                    undo: Some(json!({"restore": true})),
                })
                .collect(),
        }
    }

    fn outcome(index: usize, result: ItemResult) -> ItemOutcome {
        ItemOutcome { index, result }
    }

    fn applied(index: usize) -> ItemOutcome {
        outcome(index, ItemResult::Applied { version: 2 })
    }

    fn job(events: Vec<BulkEvent>) -> BulkJob {
        let mut job = BulkJob::default();
        for event in events {
            job.apply(event);
        }
        job
    }

    #[test]
    fn a_best_effort_job_is_done_when_every_item_is_processed_failures_included() {
        let failed = outcome(
            1,
            ItemResult::Failed {
                error: "no such prompt".into(),
            },
        );
        let last = vec![applied(0), failed];
        let mut after = job(vec![
            submitted(BulkMode::BestEffort, 2),
            BulkEvent::BulkJobStarted,
            planned(&[0, 1]),
        ]);
        for item in &last {
            after.record(item);
        }
        Given::with(())
            .given(vec![
                submitted(BulkMode::BestEffort, 2),
                BulkEvent::BulkJobStarted,
                planned(&[0, 1]),
            ])
            .when(BulkCommand::Record {
                outcomes: last.clone(),
            })
            .then_expect_events(vec![
                BulkEvent::BulkItemsProcessed {
                    outcomes: last,
                    progress: after.progress(),
                },
                BulkEvent::BulkJobFinished {
                    status: JobStatus::Done,
                    progress: Progress {
                        total: 2,
                        done: 1,
                        failed: 1,
                        ..Progress::default()
                    },
                },
            ]);
    }

    #[test]
    fn an_atomic_job_compensates_after_a_failure_once_nothing_is_in_flight() {
        let history = vec![
            submitted(BulkMode::Atomic, 3),
            BulkEvent::BulkJobStarted,
            planned(&[0, 1, 2]),
        ];
        let outcomes = vec![
            applied(0),
            outcome(
                1,
                ItemResult::Failed {
                    error: "conflict".into(),
                },
            ),
            outcome(2, ItemResult::Released),
        ];
        let events = Given::with(())
            .given(history.clone())
            .when(BulkCommand::Record { outcomes })
            .inspect_result()
            .expect("recorded");
        let state = job(history.into_iter().chain(events).collect());
        assert_eq!(state.status, JobStatus::Compensating);
        assert_eq!(state.to_compensate().len(), 1);
        assert!(matches!(state.items[2], ItemState::Pending));
    }

    #[test]
    fn undoing_every_applied_item_ends_compensated_and_a_failed_undo_ends_failed() {
        let history = vec![
            submitted(BulkMode::Atomic, 3),
            BulkEvent::BulkJobStarted,
            planned(&[0, 1]),
            BulkEvent::BulkItemsProcessed {
                outcomes: vec![applied(0), applied(1)],
                progress: Progress::default(),
            },
            BulkEvent::BulkJobCancelRequested,
            BulkEvent::BulkJobCompensating {
                because: CompensationCause::Cancelled,
            },
        ];
        for (second, status) in [
            (
                CompensationResult::Compensated { version: 3 },
                JobStatus::Compensated,
            ),
            (
                CompensationResult::Failed {
                    error: "changed since".into(),
                },
                JobStatus::Failed,
            ),
        ] {
            let outcomes = vec![
                CompensationOutcome {
                    index: 1,
                    result: CompensationResult::Compensated { version: 3 },
                },
                CompensationOutcome {
                    index: 0,
                    result: second,
                },
            ];
            let events = Given::with(())
                .given(history.clone())
                .when(BulkCommand::RecordCompensations { outcomes })
                .inspect_result()
                .expect("recorded");
            let finished = job(history.iter().cloned().chain(events).collect());
            assert_eq!(finished.status, status);
            assert!(matches!(finished.items[2], ItemState::Skipped { .. }));
        }
    }

    #[test]
    fn an_interrupted_atomic_job_rolls_back_once_its_items_in_doubt_are_settled() {
        let running = vec![
            submitted(BulkMode::Atomic, 2),
            BulkEvent::BulkJobStarted,
            planned(&[0]),
        ];
        Given::with(())
            .given(running.clone())
            .when(BulkCommand::RollBack)
            .then_expect_error(BulkError::WrongStatus("in doubt"));
        let settled: Vec<BulkEvent> = running
            .into_iter()
            .chain([BulkEvent::BulkItemsProcessed {
                outcomes: vec![applied(0)],
                progress: Progress::default(),
            }])
            .collect();
        Given::with(())
            .given(settled)
            .when(BulkCommand::RollBack)
            .then_expect_events(vec![BulkEvent::BulkJobCompensating {
                because: CompensationCause::Interrupted,
            }]);
        Given::with(())
            .given(vec![
                submitted(BulkMode::BestEffort, 2),
                BulkEvent::BulkJobStarted,
            ])
            .when(BulkCommand::RollBack)
            .then_expect_error(BulkError::WrongStatus("running"));
    }

    #[test]
    fn cancelling_a_queued_job_finishes_it_and_a_finished_job_cannot_be_cancelled() {
        Given::with(())
            .given(vec![submitted(BulkMode::BestEffort, 2)])
            .when(BulkCommand::Cancel)
            .then_expect_events(vec![
                BulkEvent::BulkJobCancelRequested,
                BulkEvent::BulkJobFinished {
                    status: JobStatus::Cancelled,
                    progress: Progress {
                        total: 2,
                        skipped: 2,
                        ..Progress::default()
                    },
                },
            ]);
        Given::with(())
            .given(vec![
                submitted(BulkMode::BestEffort, 2),
                BulkEvent::BulkJobCancelRequested,
                BulkEvent::BulkJobFinished {
                    status: JobStatus::Cancelled,
                    progress: Progress::default(),
                },
            ])
            .when(BulkCommand::Cancel)
            .then_expect_error(BulkError::Finished("cancelled"));
    }

    #[test]
    fn an_item_is_applied_only_from_planned_and_recorded_once() {
        Given::with(())
            .given(vec![
                submitted(BulkMode::BestEffort, 2),
                BulkEvent::BulkJobStarted,
            ])
            .when(BulkCommand::Record {
                outcomes: vec![applied(0)],
            })
            .then_expect_error(BulkError::UnexpectedItem(0));
        Given::with(())
            .given(vec![
                submitted(BulkMode::BestEffort, 2),
                BulkEvent::BulkJobStarted,
                planned(&[0]),
            ])
            .when(BulkCommand::Plan {
                items: vec![PlannedItem {
                    index: 0,
                    expected_version: 1,
                    undo: None,
                }],
            })
            .then_expect_error(BulkError::UnexpectedItem(0));
    }
}
