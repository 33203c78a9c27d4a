//! Every budget's standing in its current period, in this process's memory: what the budget
//! check answers from without touching the database. Usage is not in the event log, so this
//! is not kept current by following the log: it is computed anew from the budgets and the
//! spend roll-ups ([`LiveBudgets::refresh`]) by the process's budget watcher, at once after
//! each ingestion and each budget change in this process, and at least every second for the
//! others'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::budget::{standing, BudgetStanding, ScopeKind};
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::queries::{every_budget, WatchedBudget};
use crate::usage::queries::{spent_on, BudgetSpend};

/// A budget and where it stood at the last refresh.
#[derive(Debug, Clone)]
pub struct LiveBudget {
    pub budget: WatchedBudget,
    pub standing: BudgetStanding,
}

impl LiveBudget {
    /// Whether spend on `call` counts against this budget.
    pub fn covers(&self, call: &Call<'_>) -> bool {
        let id = self.budget.scope.id.as_deref();
        match self.budget.scope.kind {
            ScopeKind::Tenant => true,
            ScopeKind::Model => call.model.is_some() && call.model == id,
            ScopeKind::Feature => call.feature.is_some() && call.feature == id,
            ScopeKind::Prompt => matches(call.prompt, id),
            ScopeKind::Key => matches(call.key, id),
        }
    }
}

fn matches(wanted: Option<Uuid>, scope_id: Option<&str>) -> bool {
    wanted.is_some() && wanted == scope_id.and_then(|id| id.parse().ok())
}

/// What a call about to be made is: what a budget may be over.
#[derive(Debug, Default, Clone, Copy)]
pub struct Call<'a> {
    pub model: Option<&'a str>,
    pub prompt: Option<Uuid>,
    pub feature: Option<&'a str>,
    pub key: Option<Uuid>,
}

type Standings = HashMap<String, Vec<Arc<LiveBudget>>>;

/// The budgets' standings, and the refresh requests of this process. Cloning shares them.
#[derive(Clone)]
pub struct LiveBudgets {
    standings: Arc<RwLock<Arc<Standings>>>,
    /// Refreshes asked for; a refresh started after a request answers it.
    requested: Arc<AtomicU64>,
    wake: Arc<Notify>,
    /// The last request a finished refresh answered.
    done: watch::Sender<u64>,
}

impl Default for LiveBudgets {
    fn default() -> Self {
        Self {
            standings: Arc::default(),
            requested: Arc::default(),
            wake: Arc::default(),
            done: watch::Sender::new(0),
        }
    }
}

impl LiveBudgets {
    /// The budgets of `tenant` that cover `call`, as of the last refresh.
    pub fn covering(&self, tenant: &str, call: &Call<'_>) -> Vec<Arc<LiveBudget>> {
        let standings = self
            .standings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        standings
            .get(tenant)
            .map(|budgets| budgets.iter().filter(|b| b.covers(call)).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `tenant` had a budget at the last refresh.
    pub fn any_of(&self, tenant: &str) -> bool {
        self.standings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(tenant)
    }

    /// Every budget of every tenant, as of the last refresh.
    pub fn every(&self) -> Vec<Arc<LiveBudget>> {
        let standings = self
            .standings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        standings.values().flatten().cloned().collect()
    }

    /// Reads every budget and what it spent in its current period at `now`, and holds that.
    pub async fn refresh(&self, pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<Arc<Standings>> {
        let budgets = every_budget(pool).await?;
        let periods: Vec<_> = budgets.iter().map(|b| b.period.bounds(now)).collect();
        let spends: Vec<BudgetSpend<'_>> = budgets
            .iter()
            .zip(&periods)
            .map(|(budget, days)| BudgetSpend {
                id: budget.id,
                tenant: &budget.tenant,
                scope: &budget.scope,
                currency: budget.terms.currency.as_ref(),
                days: *days,
            })
            .collect();
        let spent = spent_on(pool, &spends).await?;
        let mut standings = Standings::new();
        for budget in budgets {
            let spent = spent.get(&budget.id).copied().unwrap_or_default();
            let standing = standing(&budget.terms, budget.period, spent, now);
            standings
                .entry(budget.tenant.clone())
                .or_default()
                .push(Arc::new(LiveBudget { budget, standing }));
        }
        let standings = Arc::new(standings);
        *self
            .standings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = standings.clone();
        Ok(standings)
    }

    /// Asks for a refresh that starts after this call, and waits (at most `patience`) until
    /// one has finished. Concurrent requests share one refresh.
    pub async fn refreshed(&self, patience: Duration) {
        let ticket = self.request_refresh();
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(patience, done.wait_for(|answered| *answered >= ticket)).await;
    }

    /// Asks for a refresh without waiting for it; returns the request's ticket.
    pub fn request_refresh(&self) -> u64 {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        ticket
    }

    /// For the watcher: waits for a request or `interval`, and returns the last request a
    /// refresh started now answers.
    pub async fn next_round(&self, interval: Duration) -> u64 {
        let _ = tokio::time::timeout(interval, self.wake.notified()).await;
        self.requested.load(Ordering::SeqCst)
    }

    /// For the watcher: the refresh that started at `ticket` has finished.
    pub fn answered(&self, ticket: u64) {
        self.done.send_if_modified(|answered| {
            let newer = ticket > *answered;
            if newer {
                *answered = ticket;
            }
            newer
        });
    }
}
