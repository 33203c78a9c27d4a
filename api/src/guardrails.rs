//! Pauses a running experiment whose guardrail metric is significantly worse than the
//! control in some variant, with the evidence in the pause's event. Every process checks
//! its running experiments with guardrails every [`INTERVAL`]; reading an experiment's
//! results checks it at once. Pausing is a command on the experiment, which pauses once.

use std::time::Duration;

use chrono::Utc;
use commands::CommandMetadata;
use domain::experiment::{ExperimentCommand, ExperimentStatus};
use domain::experiment_results::{results, Correction, ExperimentResults, Method};
use projections::experiment::queries::{every_experiment, StoredExperiment};
use serde_json::json;

use crate::state::AppState;

/// How often running experiments' guardrails are checked.
const INTERVAL: Duration = Duration::from_secs(30);
/// Who automatic pauses are recorded as.
const ACTOR: &str = "guardrail";

/// The running checker; it stops when this is dropped.
pub struct GuardrailChecker(tokio::task::JoinHandle<()>);

impl Drop for GuardrailChecker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks every running experiment with guardrails every [`INTERVAL`] until dropped.
pub fn spawn(app: AppState) -> GuardrailChecker {
    GuardrailChecker(tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            let running = match every_experiment(&app.pool).await {
                Ok(all) => all,
                Err(error) => {
                    tracing::warn!(%error, "reading experiments for their guardrails failed; retrying");
                    continue;
                }
            };
            for experiment in running
                .iter()
                .filter(|e| e.status == ExperimentStatus::Running && !e.spec.guardrail_metrics.is_empty())
            {
                let units = match projections::experiment::results::units(
                    &app.pool,
                    &experiment.tenant,
                    experiment.id,
                    &experiment.spec,
                    Utc::now(),
                )
                .await
                {
                    Ok(units) => units,
                    Err(error) => {
                        tracing::warn!(experiment = %experiment.id, %error, "reading an experiment's units failed");
                        continue;
                    }
                };
                let figures = results(
                    &experiment.spec,
                    &units.variants,
                    units.subjects_in_several_variants,
                    Method::Fixed,
                    Correction::None,
                );
                enforce(&app, experiment, &figures).await;
            }
        }
    }))
}

/// Pauses `experiment` when `figures` (fixed method) show a guardrail breached while it
/// runs; true when it did.
pub async fn enforce(app: &AppState, experiment: &StoredExperiment, figures: &ExperimentResults) -> bool {
    if experiment.status != ExperimentStatus::Running || figures.guardrails_breached.is_empty() {
        return false;
    }
    let breaches: Vec<String> = figures
        .guardrails_breached
        .iter()
        .map(|breach| format!("{} in {}", breach.metric, breach.variant))
        .collect();
    let metadata = CommandMetadata {
        tenant: experiment.tenant.clone(),
        actor_key_id: ACTOR.into(),
        actor_name: ACTOR.into(),
        request_id: format!("guardrail-{}-{}", experiment.id, experiment.version),
        reason: Some(format!("guardrail worse than control: {}", breaches.join(", "))),
        timestamp: Utc::now().to_rfc3339(),
        ..CommandMetadata::default()
    };
    let command = ExperimentCommand::Pause {
        evidence: Some(json!({ "guardrails_breached": figures.guardrails_breached })),
    };
    match app
        .experiments
        .execute(&experiment.id.to_string(), command, None, &metadata)
        .await
    {
        Ok(committed) => {
            app.live_experiments
                .apply_committed(experiment.id, &committed.events, committed.version);
            !committed.events.is_empty()
        }
        Err(error) => {
            tracing::warn!(experiment = %experiment.id, %error, "pausing an experiment for its guardrail failed");
            false
        }
    }
}
