//! Applies scheduled configuration changes when their time comes. Every process runs one;
//! applying is a command on the key's aggregate, which applies a schedule at most once, so
//! two processes racing for the same schedule change the key once. A schedule whose time
//! passed while no process ran is applied at the next start.

use std::time::Duration;

use chrono::Utc;
use commands::CommandMetadata;
use domain::config::{ConfigCommand, ConfigKey};
use projections::config::queries::{self as config, DueSchedule};

use crate::state::AppState;

/// The longest the scheduler sleeps: a schedule made by another process is noticed within it.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Schedules applied per round.
const BATCH: i64 = 100;

/// The running scheduler; it stops when this is dropped (with the server that holds it).
pub struct Scheduler(tokio::task::JoinHandle<()>);

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the scheduler until the returned value is dropped.
pub fn spawn(app: AppState) -> Scheduler {
    Scheduler(tokio::spawn(async move {
        loop {
            if let Err(error) = apply_due(&app).await {
                tracing::warn!(%error, "applying scheduled changes failed; retrying");
            }
            let wait = match config::next_due(&app.pool).await {
                Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or_default().min(MAX_WAIT),
                Ok(None) | Err(_) => MAX_WAIT,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = app.schedule_added.notified() => {}
            }
        }
    }))
}

async fn apply_due(app: &AppState) -> Result<(), sqlx::Error> {
    loop {
        let now = Utc::now();
        let due = config::due_schedules(&app.pool, now, BATCH).await?;
        let mut applied = 0;
        for schedule in &due {
            applied += usize::from(apply(app, schedule, now).await);
        }
        // A full batch that applied nothing would come back unchanged: wait for the next round.
        if (due.len() as i64) < BATCH || applied == 0 {
            return Ok(());
        }
    }
}

/// Applies one due schedule; false when that failed (it is tried again next round).
async fn apply(app: &AppState, schedule: &DueSchedule, now: chrono::DateTime<Utc>) -> bool {
    let metadata = CommandMetadata {
        tenant: schedule.tenant.clone(),
        actor_key_id: "scheduler".into(),
        actor_name: "scheduler".into(),
        request_id: format!("schedule-{}", schedule.id),
        reason: Some(format!("scheduled change {}", schedule.id)),
        timestamp: now.to_rfc3339(),
        causation_id: Some(schedule.id.to_string()),
        ..CommandMetadata::default()
    };
    let Ok(key) = ConfigKey::parse("key", &schedule.key) else {
        tracing::error!(schedule = %schedule.id, key = %schedule.key, "a scheduled change names an invalid key");
        return false;
    };
    let command = ConfigCommand::ApplySchedule {
        schedule: schedule.id,
        now,
    };
    let id = key.aggregate_id(&schedule.tenant);
    match app.config.execute(&id, command, None, &metadata).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(schedule = %schedule.id, %error, "a scheduled change could not be applied; retrying");
            false
        }
    }
}
