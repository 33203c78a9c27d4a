//! Reads of incidents, each scoped to a tenant, and the search of the log for the changes
//! an incident relates to. The `incident` table is [`super::IncidentProjection`]'s.

use chrono::{DateTime, Utc};
use domain::incident::{Affected, IncidentEvent, IncidentStatus, RelatedChange, Subject};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{timeline_entry, TimelineEntry};

/// Most incidents a listing returns, newest first.
const MAX_LISTED: i64 = 1_000;

/// An incident as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IncidentView {
    pub id: Uuid,
    /// `sev1` (worst) to `sev4`.
    #[cfg_attr(feature = "openapi", schema(example = "sev2"))]
    pub severity: String,
    pub title: String,
    /// `investigating`, `identified`, `monitoring` or `resolved`.
    #[cfg_attr(feature = "openapi", schema(example = "investigating"))]
    pub status: String,
    /// `manual`, or `auto` when aipm opened it as a provider went down.
    #[cfg_attr(feature = "openapi", schema(example = "manual"))]
    pub opened_by: String,
    #[sqlx(json)]
    #[cfg_attr(feature = "openapi", schema(value_type = AffectedView))]
    pub affected: Affected,
    /// The changes of the 24 hours before the opening that touch what is affected, newest
    /// first, as recorded when it opened.
    #[sqlx(json)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<RelatedChangeView>))]
    pub related_changes: Vec<RelatedChange>,
    /// The opening, each update and the resolution, oldest first.
    #[sqlx(json)]
    pub timeline: Vec<TimelineEntry>,
    /// How it ended, once resolved.
    pub summary: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The incident's version, also sent as `ETag`.
    pub version: i64,
    /// When it opened.
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An event of an incident with when it was recorded and the name of the key that made it.
pub struct RecordedEvent {
    pub event: IncidentEvent,
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub by: Option<String>,
}

impl IncidentView {
    /// The incident its events (oldest first) make, as the projection would have written
    /// it: a point-in-time read. `None` without its opening.
    pub fn fold(id: Uuid, events: Vec<RecordedEvent>) -> Option<Self> {
        let mut view: Option<Self> = None;
        for RecordedEvent {
            event,
            sequence,
            recorded_at,
            by,
        } in events
        {
            let status = view
                .as_ref()
                .and_then(|v| IncidentStatus::parse("status", &v.status).ok())
                .unwrap_or_default();
            let entry = timeline_entry(&event, status, recorded_at, by);
            match (event, view.as_mut()) {
                (
                    IncidentEvent::IncidentOpened {
                        severity,
                        title,
                        affected,
                        opened_by,
                        related_changes,
                        ..
                    },
                    None,
                ) => {
                    view = Some(Self {
                        id,
                        severity: severity.as_str().to_string(),
                        title,
                        status: entry.status.clone(),
                        opened_by: opened_by.as_str().to_string(),
                        affected,
                        related_changes,
                        timeline: vec![entry],
                        summary: None,
                        resolved_at: None,
                        version: sequence,
                        created_at: recorded_at,
                        updated_at: recorded_at,
                    });
                }
                (event, Some(view)) => {
                    if let IncidentEvent::IncidentResolved { summary } = event {
                        view.summary = Some(summary);
                        view.resolved_at = Some(recorded_at);
                    }
                    view.status = entry.status.clone();
                    view.timeline.push(entry);
                    view.version = sequence;
                    view.updated_at = recorded_at;
                }
                (_, None) => {}
            }
        }
        view
    }
}

/// What an incident affects (`domain::incident::Affected`).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes `Affected`'s JSON
pub struct AffectedView {
    /// Model references (`openai/gpt-4o-mini`).
    models: Vec<String>,
    /// Feature names.
    features: Vec<String>,
    /// Provider names.
    providers: Vec<String>,
}

/// A change before an incident that touches what it affects
/// (`domain::incident::RelatedChange`).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes `RelatedChange`'s JSON
pub struct RelatedChangeView {
    #[schema(example = "ModelDefaultParamsSet")]
    event_type: String,
    #[schema(example = "model")]
    aggregate_type: String,
    aggregate_id: String,
    /// The event's number within its aggregate (see its `…/history`).
    sequence: i64,
    recorded_at: DateTime<Utc>,
    /// The name of the key that made the change.
    actor: Option<String>,
    reason: Option<String>,
    /// Why it relates to the incident.
    #[schema(example = "changes the model openai/gpt-4o-mini")]
    why: String,
}

const INCIDENT_COLUMNS: &str =
    "incident_id as id, severity, title, status, opened_by, affected, related_changes, \
     timeline, summary, resolved_at, version, created_at, updated_at";

/// An incident of `tenant`.
pub async fn incident(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<IncidentView>> {
    let sql = format!("select {INCIDENT_COLUMNS} from incident where incident_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The latest incidents of `tenant` (of `status`, when given), newest first.
pub async fn incidents(pool: &PgPool, tenant: &str, status: Option<&str>) -> sqlx::Result<Vec<IncidentView>> {
    let sql = format!(
        "select {INCIDENT_COLUMNS} from incident
         where tenant_id = $1 and ($2::text is null or status = $2)
         order by created_at desc, incident_id desc limit $3"
    );
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(status)
        .bind(MAX_LISTED)
        .fetch_all(pool)
        .await
}

/// Every model of `tenant` as `(reference, provider name)`: what widens an incident's scope.
pub async fn model_providers(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as("select reference, provider_name from model where tenant_id = $1")
        .bind(tenant)
        .fetch_all(pool)
        .await
}

/// A change of the log that may relate to an incident, with what it is about.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub change: RelatedChange,
    pub subject: Subject,
}

type CandidateRow = (
    String,
    String,
    i64,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Vec<String>,
);

/// The changes of `tenant` recorded from `from` to `until` that an incident can relate to,
/// newest first: model and provider changes, prompt label moves and removals, configuration
/// and flag changes. `why` is left empty for the caller to fill.
pub async fn candidates(
    pool: &PgPool,
    tenant: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Vec<Candidate>> {
    let rows: Vec<CandidateRow> = sqlx::query_as(
        "select e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.recorded_at,
                e.metadata ->> 'actor_name', e.metadata ->> 'reason', e.payload::text,
                m.reference, p.name,
                array_remove(array[now_at.model, before.model], null)
         from events e
         left join model m on e.aggregate_type = 'model' and m.model_id::text = e.aggregate_id
         left join provider p on e.aggregate_type = 'provider' and p.provider_id::text = e.aggregate_id
         left join prompt_version now_at
             on e.aggregate_type = 'prompt' and now_at.prompt_id::text = e.aggregate_id
            and now_at.version = case when e.aggregate_type = 'prompt'
                                      then (e.payload -> e.event_type ->> 'version')::int end
         left join prompt_version before
             on e.aggregate_type = 'prompt' and before.prompt_id::text = e.aggregate_id
            and before.version = case when e.aggregate_type = 'prompt'
                                      then (e.payload -> e.event_type ->> 'previous_version')::int end
         where e.tenant_id = $1 and e.recorded_at >= $2 and e.recorded_at <= $3
           and (e.aggregate_type in ('model', 'provider', 'config', 'flag')
                or (e.aggregate_type = 'prompt' and e.event_type in ('PromptLabelMoved', 'PromptLabelRemoved')))
         order by e.recorded_at desc, e.position desc",
    )
    .bind(tenant)
    .bind(from)
    .bind(until)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let (
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                recorded_at,
                actor,
                reason,
                payload,
                model,
                provider,
                models,
            ) = row;
            let subject = match aggregate_type.as_str() {
                "model" => Subject::Model { reference: model? },
                "provider" => Subject::Provider { name: provider? },
                "prompt" => Subject::PromptLabel { models },
                _ => Subject::Configuration { payload },
            };
            Some(Candidate {
                change: RelatedChange {
                    event_type,
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    recorded_at,
                    actor,
                    reason,
                    why: String::new(),
                },
                subject,
            })
        })
        .collect())
}
