//! Every experiment's salt, variants and status in this process's memory, kept current from
//! the event log ([`crate::live`]), so that an assignment is a read from memory and every
//! process answers alike.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::experiment::{
    assign, targets, Assignment, Experiment, ExperimentEvent, ExperimentStatus, Targeting, Variant,
};
use eventlog::StoredEvent;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::queries::every_experiment;
use crate::live::{self, LiveView};

/// What assignment needs of an experiment.
#[derive(Debug, Clone)]
struct Held {
    tenant: String,
    salt: String,
    variants: Vec<Variant>,
    targeting: Targeting,
    status: ExperimentStatus,
    version: i64,
}

/// The process's experiments. Cloning shares them.
#[derive(Clone, Default)]
pub struct LiveExperiments {
    held: Arc<RwLock<HashMap<Uuid, Held>>>,
}

impl LiveExperiments {
    /// Loads every experiment and follows the log from there, woken by `appended`.
    pub async fn start(pool: PgPool, appended: watch::Receiver<u64>) -> Result<Self, sqlx::Error> {
        let live = Self::default();
        let cursor = live::start_cursor(&pool).await?;
        for experiment in every_experiment(&pool).await? {
            live.hold(
                experiment.id,
                Held {
                    tenant: experiment.tenant,
                    salt: experiment.salt,
                    variants: experiment.spec.variants,
                    targeting: experiment.spec.targeting,
                    status: experiment.status,
                    version: experiment.version,
                },
            );
        }
        live::follow(Arc::new(live.clone()), pool, cursor, appended);
        Ok(live)
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
        let experiment = held.get(&id).filter(|held| held.tenant == tenant)?;
        let targeted = targets(&experiment.targeting, feature, key);
        assign(
            &experiment.salt,
            &experiment.variants,
            experiment.status,
            targeted,
            subject,
        )
    }

    /// Holds `experiment` unless a newer version of it is held already.
    fn hold(&self, id: Uuid, experiment: Held) {
        let mut held = self.held.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if held
            .get(&id)
            .is_none_or(|current| current.version < experiment.version)
        {
            held.insert(id, experiment);
        }
    }

    /// Applies one of the experiment's events at `version`.
    pub fn apply_event(&self, id: Uuid, event: &ExperimentEvent, version: i64) {
        if let ExperimentEvent::ExperimentCreated { tenant, spec, salt } = event {
            self.hold(
                id,
                Held {
                    tenant: tenant.clone(),
                    salt: salt.clone(),
                    variants: spec.variants.clone(),
                    targeting: spec.targeting.clone(),
                    status: ExperimentStatus::Draft,
                    version,
                },
            );
            return;
        }
        let mut held = self.held.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(experiment) = held.get_mut(&id).filter(|held| held.version < version) else {
            return;
        };
        if let ExperimentEvent::ExperimentAllocationChanged {
            weights, targeting, ..
        } = event
        {
            for variant in &mut experiment.variants {
                if let Some((_, weight)) = weights.iter().find(|(name, _)| *name == variant.name) {
                    variant.weight = *weight;
                }
            }
            experiment.targeting = targeting.clone();
            experiment.version = version;
            return;
        }
        experiment.status = match event {
            ExperimentEvent::ExperimentStarted | ExperimentEvent::ExperimentResumed => {
                ExperimentStatus::Running
            }
            ExperimentEvent::ExperimentPaused { .. } => ExperimentStatus::Paused,
            ExperimentEvent::ExperimentStopped => ExperimentStatus::Stopped,
            ExperimentEvent::ExperimentConcluded { .. } => ExperimentStatus::Concluded,
            ExperimentEvent::ExperimentCreated { .. }
            | ExperimentEvent::ExperimentAllocationChanged { .. } => experiment.status,
        };
        experiment.version = version;
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
        self.apply_event(id, &payload, event.sequence);
        Ok(())
    }
}
