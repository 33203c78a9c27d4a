//! Runs bulk jobs. Every process runs one runner; it takes up every unfinished job, so a
//! job whose process died (or was killed) is resumed by the next one to start or look.
//!
//! A job runs in one process at a time: its runner holds a PostgreSQL advisory lock on a
//! connection of its own for as long as it works on the job, and a process that dies
//! loses the connection and with it the lock.
//!
//! Items go in batches: the batch is planned (each target loaded, the change and its undo
//! decided) and the plan recorded on the job before any item is applied; each item then
//! runs on its target at the planned version, with the job as its causation and a request
//! id of its own, [`CONCURRENT_ITEMS`] at a time; outcomes are recorded at most every
//! [`FLUSH_EVERY`], which is also when a cancellation is noticed.
//!
//! A job taken up after its process stopped finds its planned items in doubt: one whose
//! target moved on since it was planned was applied if the target's log holds the item's
//! request id, else someone else changed the target and the item fails; one whose target
//! has not moved was not applied, and runs now. An atomic job is not resumed but undone,
//! once its items in doubt are settled. Undoing goes one item at a time, last applied
//! first, each undo at the version its item left, settled the same way.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::CommandMetadata;
use domain::bulk::operations::{Change, ItemCommand, Plan, TargetKind};
use domain::bulk::{
    BulkCommand, BulkJob, BulkMode, CompensationOutcome, CompensationResult, ItemOutcome, ItemResult,
    JobStatus, PlannedItem,
};
use futures::StreamExt;
use projections::bulk::queries as bulk;
use projections::history;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::items::{self, ItemFailure};
use crate::state::AppState;

/// The longest the runner waits before looking for jobs another process submitted or left.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Items planned and recorded at once.
const BATCH: usize = 200;
/// Items of a batch applied at once: enough for their commits to share a flush of the
/// log, few enough to leave the write path to interactive commands.
const CONCURRENT_ITEMS: usize = 4;
/// How often a running job records its progress (and looks for a cancellation): its
/// progress reaches the live feeds at most this often, however many items it has.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The running runner; it stops, and its jobs with it, when this is dropped.
pub struct BulkRunner(tokio::task::JoinHandle<()>);

impl Drop for BulkRunner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the runner until the returned value is dropped.
pub fn spawn(app: AppState) -> BulkRunner {
    BulkRunner(tokio::spawn(async move {
        let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let mut jobs = tokio::task::JoinSet::new();
        loop {
            match bulk::unfinished(&app.pool).await {
                Ok(unfinished) => {
                    for (job, _tenant) in unfinished {
                        let fresh = running.lock().map(|mut set| set.insert(job)).unwrap_or(false);
                        if fresh {
                            let (app, running) = (app.clone(), running.clone());
                            jobs.spawn(async move {
                                if let Err(error) = run(&app, job).await {
                                    tracing::warn!(%job, %error, "a bulk job stopped; it is taken up again");
                                }
                                if let Ok(mut set) = running.lock() {
                                    set.remove(&job);
                                }
                            });
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for bulk jobs failed; retrying"),
            }
            while jobs.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(MAX_WAIT) => {}
                _ = app.bulk_submitted.notified() => {}
            }
        }
    }))
}

/// Why a job stopped before it finished; it is taken up again.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Unavailable(String),
    #[error("the job refused a step: {0}")]
    Refused(String),
}

/// Works on `job` until it finishes, unless another process holds it.
async fn run(app: &AppState, job: Uuid) -> Result<(), Stopped> {
    let mut lock = PgConnection::connect_with(&app.pool.connect_options()).await?;
    let held: bool =
        sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended('bulk_job:' || $1, 0))")
            .bind(job.to_string())
            .fetch_one(&mut lock)
            .await?;
    if !held {
        return Ok(()); // another process runs it
    }
    let runner = JobRunner::new(app, job);
    let result = runner.run().await;
    // Closing the connection releases the lock.
    let _ = lock.close().await;
    result
}

struct JobRunner<'a> {
    app: &'a AppState,
    id: Uuid,
    aggregate_id: String,
}

impl<'a> JobRunner<'a> {
    fn new(app: &'a AppState, id: Uuid) -> Self {
        Self {
            app,
            id,
            aggregate_id: id.to_string(),
        }
    }

    async fn run(&self) -> Result<(), Stopped> {
        // A running job this runner did not start was interrupted: its process stopped.
        let mut interrupted = true;
        loop {
            let (job, _) = self
                .app
                .bulk_jobs
                .load(&self.aggregate_id)
                .await
                .map_err(|e| Stopped::Unavailable(e.to_string()))?;
            let Some(tenant) = job.tenant.clone() else {
                return Ok(());
            };
            let change = match Change::parse(&job.operation, &job.params) {
                Ok(change) => change,
                Err(error) => return Err(Stopped::Refused(format!("its operation cannot be read: {error}"))),
            };
            let context = Context {
                tenant,
                change,
                job: &job,
            };
            match job.status {
                status if status.is_finished() => return Ok(()),
                JobStatus::Queued => {
                    interrupted = false;
                    self.step(BulkCommand::Start, &context.tenant).await?
                }
                JobStatus::Running if interrupted && job.mode == Some(BulkMode::Atomic) => {
                    // All or nothing: an interrupted atomic job is undone, once what its
                    // items in doubt did is known.
                    let in_doubt = job.planned();
                    if in_doubt.is_empty() {
                        self.step(BulkCommand::RollBack, &context.tenant).await?;
                    } else {
                        let outcomes = self.settle_in_doubt(&context, &in_doubt, false).await?;
                        self.step(BulkCommand::Record { outcomes }, &context.tenant)
                            .await?;
                    }
                }
                JobStatus::Running => {
                    interrupted = false;
                    self.advance(&context).await?
                }
                JobStatus::Compensating => self.compensate(&context).await?,
                _ => return Ok(()),
            }
        }
    }

    /// Runs a command on the job itself, as the runner.
    async fn step(&self, command: BulkCommand, tenant: &str) -> Result<(), Stopped> {
        let metadata = CommandMetadata {
            tenant: tenant.to_string(),
            actor_key_id: "bulk-runner".into(),
            actor_name: "bulk-runner".into(),
            request_id: format!("bulk-{}", self.id),
            timestamp: Utc::now().to_rfc3339(),
            causation_id: Some(self.aggregate_id.clone()),
            ..CommandMetadata::default()
        };
        self.app
            .bulk_jobs
            .execute(&self.aggregate_id, command, None, &metadata)
            .await
            .map_err(|error| match error {
                commands::CommandError::Rejected(rule) => Stopped::Refused(rule.to_string()),
                other => Stopped::Unavailable(other.to_string()),
            })?;
        Ok(())
    }

    /// The metadata of an item's change (or, with `undo`, of its undo): made as the key that
    /// submitted the job, caused by the job.
    fn item_metadata(&self, context: &Context<'_>, index: usize, undo: bool) -> CommandMetadata {
        let submitter = &context.job.submitter;
        let suffix = if undo { "-undo" } else { "" };
        CommandMetadata {
            tenant: context.tenant.clone(),
            actor_key_id: submitter.key_id.clone(),
            actor_name: submitter.name.clone(),
            request_id: format!("bulk-{}-{index}{suffix}", self.id),
            reason: Some(match &submitter.reason {
                Some(reason) => format!("bulk job {}: {reason}", self.id),
                None => format!("bulk job {}", self.id),
            }),
            timestamp: Utc::now().to_rfc3339(),
            correlation_id: Some(self.aggregate_id.clone()),
            causation_id: Some(self.aggregate_id.clone()),
            ..CommandMetadata::default()
        }
    }

    /// One batch of a running job: items in doubt from a process that died, else the next
    /// items planned and applied.
    async fn advance(&self, context: &Context<'_>) -> Result<(), Stopped> {
        let job = context.job;
        let in_doubt = job.planned();
        if !in_doubt.is_empty() {
            let outcomes = self.settle_in_doubt(context, &in_doubt, true).await?;
            return self.step(BulkCommand::Record { outcomes }, &context.tenant).await;
        }
        let batch = job.next_pending(BATCH);
        if batch.is_empty() || job.cancel_requested {
            // Nothing left to start: recording nothing lets the job take its next step.
            return self
                .step(BulkCommand::Record { outcomes: Vec::new() }, &context.tenant)
                .await;
        }
        let atomic = job.mode == Some(BulkMode::Atomic);
        let mut decided: Vec<ItemOutcome> = Vec::new();
        let mut planned: Vec<(PlannedItem, ItemCommand, String)> = Vec::new();
        for index in batch {
            let target = &job.targets[index];
            let result = match items::load(self.app, &context.tenant, context.change.target_kind(), target)
                .await
            {
                Ok(loaded) => match items::plan(self.app, &context.tenant, &context.change, &loaded).await {
                    Ok(Plan::Apply { command, undo }) => {
                        planned.push((
                            PlannedItem {
                                index,
                                expected_version: loaded.version,
                                undo: undo.map(|undo| serde_json::to_value(undo).unwrap_or_default()),
                            },
                            command,
                            loaded.aggregate_id,
                        ));
                        continue;
                    }
                    Ok(Plan::Skip(reason)) => ItemResult::Skipped { reason },
                    Err(failure) => failed(failure)?,
                },
                Err(failure) => failed(failure)?,
            };
            let stop = atomic && matches!(result, ItemResult::Failed { .. });
            decided.push(ItemOutcome { index, result });
            if stop {
                break; // nothing after an atomic job's failure is started
            }
        }
        if !planned.is_empty() {
            let items = planned.iter().map(|(item, _, _)| item.clone()).collect();
            self.step(BulkCommand::Plan { items }, &context.tenant).await?;
        }
        self.apply_planned(context, planned, decided, atomic).await
    }

    /// Applies the planned items, a few at once, then records them with the outcomes
    /// decided while planning (an atomic job stopped planning at its first failure, so
    /// every planned item comes before it). Outcomes are recorded as they come, at most
    /// every [`FLUSH_EVERY`]; after a cancellation, or an atomic job's failure, no further
    /// item starts and the rest are released.
    async fn apply_planned(
        &self,
        context: &Context<'_>,
        planned: Vec<(PlannedItem, ItemCommand, String)>,
        mut decided: Vec<ItemOutcome>,
        atomic: bool,
    ) -> Result<(), Stopped> {
        let stop = AtomicBool::new(false);
        let mut results = futures::stream::iter(planned.into_iter().map(|(item, command, aggregate_id)| {
            let stop = &stop;
            async move {
                if stop.load(Ordering::SeqCst) {
                    return (item.index, Ok(None));
                }
                let metadata = self.item_metadata(context, item.index, false);
                let result =
                    items::run(self.app, &aggregate_id, command, item.expected_version, &metadata).await;
                (item.index, result.map(Some))
            }
        }))
        .buffered(CONCURRENT_ITEMS);
        let mut pending: Vec<ItemOutcome> = Vec::new();
        let mut last_flush = Instant::now();
        let mut unavailable = None;
        while let Some((index, result)) = results.next().await {
            let result = match result {
                Ok(Some(version)) => ItemResult::Applied { version },
                Ok(None) => ItemResult::Released,
                Err(ItemFailure::Failed(error)) => {
                    if atomic {
                        stop.store(true, Ordering::SeqCst);
                    }
                    ItemResult::Failed { error }
                }
                Err(ItemFailure::Unavailable(error)) => {
                    // Left planned: the item is settled when the job is taken up again.
                    stop.store(true, Ordering::SeqCst);
                    unavailable = Some(error);
                    continue;
                }
            };
            pending.push(ItemOutcome { index, result });
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush(context, &mut pending).await?;
                last_flush = Instant::now();
                if self.cancel_requested(&context.tenant).await? {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        }
        drop(results);
        if let Some(error) = unavailable {
            self.flush(context, &mut pending).await?;
            return Err(Stopped::Unavailable(error));
        }
        pending.append(&mut decided);
        self.flush(context, &mut pending).await
    }

    async fn flush(&self, context: &Context<'_>, pending: &mut Vec<ItemOutcome>) -> Result<(), Stopped> {
        if pending.is_empty() {
            return Ok(());
        }
        let outcomes = std::mem::take(pending);
        self.step(BulkCommand::Record { outcomes }, &context.tenant).await
    }

    async fn cancel_requested(&self, tenant: &str) -> Result<bool, Stopped> {
        Ok(bulk::job(&self.app.pool, tenant, self.id)
            .await?
            .is_some_and(|job| job.cancel_requested))
    }

    /// Decides what became of items planned by a process that died: applied (the target's
    /// log holds the item's request id), or not. One not applied is applied now when
    /// `resume` and the target has not moved since it was planned, failed when someone else
    /// changed it meanwhile, and released (never applied) when the job is being rolled back.
    async fn settle_in_doubt(
        &self,
        context: &Context<'_>,
        in_doubt: &[(usize, u64)],
        resume: bool,
    ) -> Result<Vec<ItemOutcome>, Stopped> {
        let kind = context.change.target_kind();
        let mut outcomes = Vec::new();
        for &(index, expected) in in_doubt {
            let target = &context.job.targets[index];
            let result = match items::load(self.app, &context.tenant, kind, target).await {
                Err(failure) => failed(failure)?,
                Ok(loaded) if loaded.version == expected && !resume => ItemResult::Released,
                Ok(loaded) if loaded.version == expected => {
                    match items::plan(self.app, &context.tenant, &context.change, &loaded).await {
                        Ok(Plan::Apply { command, .. }) => {
                            let metadata = self.item_metadata(context, index, false);
                            match items::run(self.app, &loaded.aggregate_id, command, expected, &metadata)
                                .await
                            {
                                Ok(version) => ItemResult::Applied { version },
                                Err(failure) => failed(failure)?,
                            }
                        }
                        Ok(Plan::Skip(reason)) => ItemResult::Skipped { reason },
                        Err(failure) => failed(failure)?,
                    }
                }
                Ok(loaded) => {
                    let request = format!("bulk-{}-{index}", self.id);
                    let aggregate_type = items::aggregate_type(kind);
                    match history::version_after_request(
                        &self.app.pool,
                        aggregate_type,
                        &loaded.aggregate_id,
                        &request,
                    )
                    .await?
                    {
                        Some(version) => ItemResult::Applied {
                            version: version as u64,
                        },
                        None if !resume => ItemResult::Released,
                        None => ItemResult::Failed {
                            error: "changed by someone else after the job planned it".into(),
                        },
                    }
                }
            };
            outcomes.push(ItemOutcome { index, result });
        }
        Ok(outcomes)
    }

    /// Undoes applied items, last applied first, recording as it goes.
    async fn compensate(&self, context: &Context<'_>) -> Result<(), Stopped> {
        let kind = context.change.target_kind();
        let mut pending = Vec::new();
        let mut last_flush = Instant::now();
        let to_undo = context.job.to_compensate();
        if to_undo.is_empty() {
            return self
                .step(
                    BulkCommand::RecordCompensations { outcomes: Vec::new() },
                    &context.tenant,
                )
                .await;
        }
        for (index, version, undo) in to_undo {
            let target = &context.job.targets[index];
            let result = self.undo_item(context, kind, index, target, version, undo).await;
            let result = match result {
                Ok(result) => result,
                Err(ItemFailure::Failed(error)) => CompensationResult::Failed { error },
                Err(ItemFailure::Unavailable(error)) => {
                    self.flush_compensations(context, &mut pending).await?;
                    return Err(Stopped::Unavailable(error));
                }
            };
            pending.push(CompensationOutcome { index, result });
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush_compensations(context, &mut pending).await?;
                last_flush = Instant::now();
            }
        }
        self.flush_compensations(context, &mut pending).await
    }

    async fn undo_item(
        &self,
        context: &Context<'_>,
        kind: TargetKind,
        index: usize,
        target: &str,
        version: u64,
        undo: Option<serde_json::Value>,
    ) -> Result<CompensationResult, ItemFailure> {
        let Some(undo) = undo.and_then(|undo| serde_json::from_value::<Change>(undo).ok()) else {
            return Err(ItemFailure::Failed("this change cannot be undone".into()));
        };
        let loaded = items::load(self.app, &context.tenant, kind, target).await?;
        if loaded.version != version {
            // Undone already by a process that died, or changed by someone else since.
            let request = format!("bulk-{}-{index}-undo", self.id);
            let aggregate_type = items::aggregate_type(kind);
            return match history::version_after_request(
                &self.app.pool,
                aggregate_type,
                &loaded.aggregate_id,
                &request,
            )
            .await?
            {
                Some(version) => Ok(CompensationResult::Compensated {
                    version: version as u64,
                }),
                None => Err(ItemFailure::Failed(
                    "changed by someone else after the job applied it; left as it is".into(),
                )),
            };
        }
        // Planning an undo uses the same rules as planning the change.
        match items::plan(self.app, &context.tenant, &undo, &loaded).await? {
            Plan::Skip(_) => Ok(CompensationResult::Compensated { version }),
            Plan::Apply { command, .. } => {
                let metadata = self.item_metadata(context, index, true);
                let after = items::run(self.app, &loaded.aggregate_id, command, version, &metadata).await?;
                Ok(CompensationResult::Compensated { version: after })
            }
        }
    }

    async fn flush_compensations(
        &self,
        context: &Context<'_>,
        pending: &mut Vec<CompensationOutcome>,
    ) -> Result<(), Stopped> {
        if pending.is_empty() {
            return Ok(());
        }
        let outcomes = std::mem::take(pending);
        self.step(BulkCommand::RecordCompensations { outcomes }, &context.tenant)
            .await
    }
}

/// What a step of a job works with.
struct Context<'a> {
    tenant: String,
    change: Change,
    job: &'a BulkJob,
}

/// An item's failure as its outcome; an unreachable database stops the job instead.
fn failed(failure: ItemFailure) -> Result<ItemResult, Stopped> {
    match failure {
        ItemFailure::Failed(error) => Ok(ItemResult::Failed { error }),
        ItemFailure::Unavailable(error) => Err(Stopped::Unavailable(error)),
    }
}
