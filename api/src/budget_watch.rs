//! Keeps every budget's standing current in memory (`projections::budget::live`) and
//! records the thresholds spend crosses. Every process runs one; it refreshes at once when
//! this process ingests usage or changes a budget, and at least every [`INTERVAL`] for
//! what other processes did and for a period that begins.
//!
//! A period's start and each threshold reached in it are recorded by a command on the
//! budget's aggregate, which records each once per period: two processes racing to record it, or a process that stopped
//! before recording and the next one to start, record it once between them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::CommandMetadata;
use domain::budget::BudgetCommand;
use projections::budget::live::LiveBudget;

use crate::state::AppState;

/// The longest a process goes without reading the budgets' spend.
const INTERVAL: Duration = Duration::from_secs(1);

/// The running watcher; it stops when this is dropped.
pub struct BudgetWatcher(tokio::task::JoinHandle<()>);

impl Drop for BudgetWatcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the watcher until the returned value is dropped.
pub fn spawn(app: AppState) -> BudgetWatcher {
    BudgetWatcher(tokio::spawn(async move {
        app.live_budgets.request_refresh();
        loop {
            let ticket = app.live_budgets.next_round(INTERVAL).await;
            let now = Utc::now();
            match app.live_budgets.refresh(&app.pool, now).await {
                Ok(standings) => {
                    for budget in standings.values().flatten() {
                        record_crossings(&app, budget, now).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "reading the budgets' spend failed; retrying"),
            }
            app.live_budgets.answered(ticket);
        }
    }))
}

/// Records the start of `budget`'s period and the thresholds it has reached in it, those
/// not recorded yet.
async fn record_crossings(app: &AppState, live: &LiveBudget, now: DateTime<Utc>) {
    let (budget, standing) = (&live.budget, &live.standing);
    let recorded: &[u32] = if budget.crossed_period == Some(standing.period_start) {
        &budget.crossed
    } else {
        &[]
    };
    let highest = standing
        .thresholds_crossed
        .iter()
        .filter(|t| !recorded.contains(t))
        .max();
    // A period begins for the record when the budget lived before it (its first period is
    // implied by its definition, and recording it would change every new budget's version
    // under its creator), or with the first threshold crossed in it.
    let period_start = standing.period_start.and_time(chrono::NaiveTime::MIN).and_utc();
    let period_due = match budget.current_period {
        Some(started) => started < standing.period_start,
        None => budget.created_at < period_start,
    };
    if highest.is_none() && !period_due {
        return;
    }
    let highest = highest.copied().unwrap_or(0);
    let metadata = CommandMetadata {
        tenant: budget.tenant.clone(),
        actor_key_id: "budget-watch".into(),
        actor_name: "budget-watch".into(),
        request_id: format!("budget-{}-{}-{highest}", budget.id, standing.period_start),
        reason: Some(format!("spend reached {}% of the budget", standing.percent_used)),
        timestamp: now.to_rfc3339(),
        ..CommandMetadata::default()
    };
    let command = BudgetCommand::RecordSpend {
        period_start: standing.period_start,
        period_end: standing.period_end,
        spent: standing.spent,
        percent_used: standing.percent_used,
    };
    if let Err(error) = app
        .budgets
        .execute(&budget.id.to_string(), command, None, &metadata)
        .await
    {
        // The read model still lacks the crossing: the next round tries again.
        tracing::warn!(budget = %budget.id, %error, "recording a budget threshold failed; retrying");
    }
}
