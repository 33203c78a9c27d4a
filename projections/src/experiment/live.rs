//! Every experiment in this process's memory, kept current from the event log
//! ([`crate::live`]), so that an assignment is a read from memory and every process answers
//! alike. The experiment is held as its aggregate, so its own `apply` keeps it current.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::experiment::{
    assign, targets, Assignment, Experiment, ExperimentEvent, ExperimentStatus, Variant,
};
use eventlog::StoredEvent;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::queries::every_experiment;
use crate::live::{self, LiveView};

/// The process's experiments, each with the version it is at. Cloning shares them.
#[derive(Clone, Default)]
pub struct LiveExperiments {
    held: Arc<RwLock<HashMap<Uuid, (Experiment, i64)>>>,
    followed: live::Followed,
}

impl LiveExperiments {
    /// Loads every experiment and follows the log from there, woken by `appended`.
    pub async fn start(pool: PgPool, appended: watch::Receiver<u64>) -> Result<Self, sqlx::Error> {
        let live = Self::default();
        let cursor = live::start_cursor(&pool).await?;
        let stored_experiments = every_experiment(&pool).await?;
        {
            let mut held = live.held.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for stored in stored_experiments {
                let experiment = Experiment {
                    tenant: Some(stored.tenant),
                    spec: Some(stored.spec),
                    salt: stored.salt,
                    status: stored.status,
                    winner: stored.winner,
                    promotion: stored.promotion,
                    reallocated_while_running: stored.reallocated_while_running,
                };
                held.insert(stored.id, (experiment, stored.version));
            }
        }
        live::follow(
            Arc::new(live.clone()),
            pool,
            cursor,
            appended,
            live.followed.clone(),
        );
        Ok(live)
    }

    /// How far this view has read the log.
    pub fn followed(&self) -> &live::Followed {
        &self.followed
    }

    /// The variant of `tenant`'s experiment `id` for `subject` in a call for `feature` made
    /// with the key `key`; `None` when the tenant has no such experiment (that this process
    /// has seen).
    pub fn assign(
        &self,
        tenant: &str,
        id: Uuid,
        subject: &str,
        feature: Option<&str>,
        key: Uuid,
    ) -> Option<Assignment> {
        let held = self.held.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (experiment, _) = held
            .get(&id)
            .filter(|(experiment, _)| experiment.tenant.as_deref() == Some(tenant))?;
        let spec = experiment.spec.as_ref()?;
        let targeted = targets(&spec.targeting, feature, key);
        assign(
            &experiment.salt,
            &spec.variants,
            experiment.status,
            targeted,
            subject,
        )
    }

    /// The running experiment of `tenant` over the prompt `prompt` (that this process has
    /// seen), and the variant `subject` gets in it: what a run of the prompt without a label
    /// or version uses. Of several running at once, the oldest (ids are UUID v7).
    pub fn running_for_prompt(
        &self,
        tenant: &str,
        prompt: Uuid,
        subject: &str,
        feature: Option<&str>,
        key: Uuid,
    ) -> Option<(Uuid, Variant, Assignment)> {
        let held = self.held.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (id, experiment) = held
            .iter()
            .filter(|(_, (experiment, _))| {
                experiment.tenant.as_deref() == Some(tenant)
                    && experiment.status == ExperimentStatus::Running
                    && experiment
                        .spec
                        .as_ref()
                        .is_some_and(|spec| spec.prompt_id == Some(prompt))
            })
            .map(|(id, (experiment, _))| (id, experiment))
            .min_by_key(|(id, _)| **id)?;
        {
            let spec = experiment.spec.as_ref()?;
            let targeted = targets(&spec.targeting, feature, key);
            let assignment = assign(
                &experiment.salt,
                &spec.variants,
                experiment.status,
                targeted,
                subject,
            )?;
            let variant = spec.variant(&assignment.variant)?.clone();
            Some((*id, variant, assignment))
        }
    }

    /// Applies the events a command of this process just committed, the last at `version`,
    /// so that this process assigns with them at once (others follow the log).
    pub fn apply_committed(&self, id: Uuid, events: &[ExperimentEvent], version: u64) {
        let first = version as i64 - events.len() as i64 + 1;
        for (offset, event) in events.iter().enumerate() {
            self.apply_event(id, event.clone(), first + offset as i64);
        }
    }

    /// Applies one of the experiment's events at `version`, unless it is held at that version
    /// or a later one already.
    fn apply_event(&self, id: Uuid, event: ExperimentEvent, version: i64) {
        let mut held = self.held.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (experiment, at) = held.entry(id).or_insert_with(|| (Experiment::default(), 0));
        if *at < version {
            experiment.apply(event);
            *at = version;
        }
    }
}

#[async_trait]
impl LiveView for LiveExperiments {
    fn name(&self) -> &'static str {
        "experiments"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Experiment::TYPE]
    }

    async fn apply(&self, _: &PgPool, event: &StoredEvent) -> Result<(), sqlx::Error> {
        let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
            return Ok(());
        };
        let payload = event
            .decode::<ExperimentEvent>()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        self.apply_event(id, payload, event.sequence);
        Ok(())
    }
}
