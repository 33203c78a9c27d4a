//! Probes providers' health. Every process runs one (unless `--health-prober false`): each
//! round it probes every enabled provider, of any tenant, whose last probe is older than
//! its interval, stores the probe (telemetry), decides the provider's state from its latest
//! probes (`domain::health::assess`) and records it on the provider's `ProviderHealth`
//! aggregate, which records a change once: two processes that see the same change record it
//! once between them. `POST /v1/health/checks/run` runs [`check`] for a tenant's providers
//! at once.
//!
//! When a provider goes `down` and its health check says so, the process that recorded the
//! change opens an incident whose id derives from that change, so that it is opened once per
//! down spell.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use commands::health::{forget_old_probes, ProbeRecord};
use commands::CommandMetadata;
use domain::health::{
    assess, probe_url, HealthState, ProviderHealthCommand, ProviderHealthEvent, DOWN_AFTER,
};
use domain::incident::{Affected, IncidentCommand, OpenedBy, Severity};
use domain::provider::ProviderKind;
use domain::text::DisplayName;
use projections::health::queries::{self as health, ProbeTarget, ProbeView};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiResult;
use crate::state::AppState;

/// How often the background prober looks for providers due for a probe.
const TICK: Duration = Duration::from_secs(1);
/// How often old probes are deleted.
const CLEANUP_EVERY: Duration = Duration::from_secs(60 * 60);
/// Who the prober's changes are recorded as.
const ACTOR: &str = "health-prober";

/// The running prober; it stops when this is dropped (with the server that holds it).
pub struct Prober(tokio::task::JoinHandle<()>);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the prober until the returned value is dropped.
pub fn spawn(app: AppState) -> Prober {
    Prober(tokio::spawn(async move {
        let mut cleaned = Instant::now();
        loop {
            match health::due(&app.pool, Utc::now()).await {
                Ok(due) => {
                    // Concurrently, so that one slow provider does not hold up the others.
                    futures::future::join_all(due.iter().map(|target| check(&app, target))).await;
                }
                Err(error) => tracing::warn!(%error, "finding providers to probe failed; retrying"),
            }
            if cleaned.elapsed() >= CLEANUP_EVERY {
                cleaned = Instant::now();
                if let Err(error) = forget_old_probes(&app.pool, Utc::now()).await {
                    tracing::warn!(%error, "deleting old probes failed");
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }))
}

/// What one check found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub provider_id: Uuid,
    /// The provider's name.
    pub provider: String,
    pub probe: ProbeView,
    /// The provider's state after this probe: `healthy`, `degraded` or `down`.
    #[schema(example = "healthy")]
    pub state: String,
    /// Whether this check changed the state.
    pub changed: bool,
    /// The incident opened because the provider went down, if this check opened one.
    pub incident_id: Option<Uuid>,
}

/// Probes `target` once, stores the probe and records the state it leads to.
pub async fn check(app: &AppState, target: &ProbeTarget) -> ApiResult<CheckResult> {
    let at = Utc::now();
    let record = probe(app, target, at).await;
    commands::health::record_probe(&app.pool, &record)
        .await
        .inspect_err(
            |error| tracing::warn!(provider = %target.provider_id, %error, "storing a probe failed"),
        )?;
    let latest = health::latest_probes(&app.pool, target.provider_id, DOWN_AFTER as i64).await?;
    let state = assess(&latest, target.health_check.degraded_latency_ms);
    let metadata = CommandMetadata {
        tenant: target.tenant_id.clone(),
        actor_key_id: ACTOR.into(),
        actor_name: ACTOR.into(),
        request_id: format!("probe-{}-{}", target.provider_id, at.timestamp_micros()),
        reason: record.error.clone(),
        timestamp: at.to_rfc3339(),
        ..CommandMetadata::default()
    };
    let command = ProviderHealthCommand::RecordAssessment {
        tenant: target.tenant_id.clone(),
        provider: target.name.clone(),
        state,
        latency_ms: Some(record.latency_ms),
        detail: record.error.clone(),
    };
    let committed = app
        .provider_health
        .execute(&target.provider_id.to_string(), command, None, &metadata)
        .await
        .inspect_err(
            |error| tracing::warn!(provider = %target.provider_id, %error, "recording a health state failed"),
        )?;
    let went_down = committed.events.iter().any(|event| {
        matches!(
            event,
            ProviderHealthEvent::ProviderHealthChanged {
                to: HealthState::Down,
                ..
            }
        )
    });
    let incident_id = match (went_down, committed.recorded_at) {
        (true, Some(recorded_at)) if target.health_check.open_incident_on_down => {
            open_down_incident(app, target, committed.version, recorded_at).await
        }
        _ => None,
    };
    Ok(CheckResult {
        provider_id: target.provider_id,
        provider: target.name.clone(),
        probe: ProbeView {
            at: record.at,
            ok: record.ok,
            latency_ms: i32::try_from(record.latency_ms).unwrap_or(i32::MAX),
            status_code: record.status_code.map(i32::from),
            error: record.error,
        },
        state: state.as_str().to_string(),
        changed: !committed.events.is_empty(),
        incident_id,
    })
}

/// One `GET` of the provider's probe URL: ok when an answer below 500 comes in time.
async fn probe(app: &AppState, target: &ProbeTarget, at: DateTime<Utc>) -> ProbeRecord {
    let timeout = Duration::from_millis(u64::from(target.health_check.timeout_ms));
    let started = Instant::now();
    let outcome =
        match ProviderKind::parse("kind", &target.kind).and_then(|kind| probe_url(kind, &target.base_url)) {
            Ok(url) => app
                .probe_client
                .get(url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|error| {
                    if error.is_timeout() {
                        format!("no answer within {} ms", timeout.as_millis())
                    } else if error.is_connect() {
                        "could not connect".to_string()
                    } else {
                        "the request failed".to_string()
                    }
                }),
            Err(invalid) => Err(invalid.to_string()),
        };
    let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    let (ok, status_code, error) = match outcome {
        Ok(response) if response.status().is_server_error() => (
            false,
            Some(response.status().as_u16()),
            Some(format!("answered {}", response.status().as_u16())),
        ),
        Ok(response) => (true, Some(response.status().as_u16()), None),
        Err(error) => (false, None, Some(error)),
    };
    ProbeRecord {
        provider_id: target.provider_id,
        tenant_id: target.tenant_id.clone(),
        at,
        ok,
        latency_ms,
        status_code,
        error,
    }
}

/// Opens the incident of the down spell that began with the provider's health at
/// `version`; `None` when that failed (logged).
async fn open_down_incident(
    app: &AppState,
    target: &ProbeTarget,
    version: u64,
    went_down_at: DateTime<Utc>,
) -> Option<Uuid> {
    let id = down_spell_incident_id(target.provider_id, version, went_down_at);
    let affected = Affected {
        providers: [target.name.clone()].into(),
        ..Affected::default()
    };
    let related = match crate::incidents::related_changes(
        &app.pool,
        &target.tenant_id,
        &affected,
        went_down_at,
    )
    .await
    {
        Ok(related) => related,
        Err(error) => {
            tracing::warn!(provider = %target.provider_id, %error, "finding an incident's related changes failed");
            Vec::new()
        }
    };
    let title = DisplayName::parse("title", &format!("Provider {} is down", target.name)).ok()?;
    let metadata = CommandMetadata {
        tenant: target.tenant_id.clone(),
        actor_key_id: ACTOR.into(),
        actor_name: ACTOR.into(),
        request_id: format!("provider-down-{}-{version}", target.provider_id),
        reason: Some(format!("{DOWN_AFTER} probes in a row failed")),
        timestamp: Utc::now().to_rfc3339(),
        causation_id: Some(format!("{}:{version}", target.provider_id)),
        ..CommandMetadata::default()
    };
    let command = IncidentCommand::OpenIncident {
        tenant: target.tenant_id.clone(),
        severity: Severity::Sev2,
        title,
        affected,
        opened_by: OpenedBy::Auto,
        related_changes: related,
    };
    match app.incidents.create(&id.to_string(), command, &metadata).await {
        Ok(_) => Some(id),
        Err(error) => {
            tracing::warn!(provider = %target.provider_id, %error, "opening an incident for a provider that went down failed");
            None
        }
    }
}

/// A UUID v7 that is the same for the same down spell (provider and the health version its
/// going down produced), so that a second attempt finds the incident already open.
fn down_spell_incident_id(provider: Uuid, version: u64, at: DateTime<Utc>) -> Uuid {
    let digest = Sha256::digest(format!("{provider}:{version}").as_bytes());
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}
