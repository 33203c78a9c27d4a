//! Opening an incident, by a person (`POST /v1/incidents`) or by the prober when a provider
//! goes down: what it affects is looked up in the tenant, and the changes of the
//! [`RELATED_WINDOW_HOURS`] before it that touch that (`domain::incident::relates`) are
//! recorded with it.

use chrono::{DateTime, Utc};
use domain::incident::{relates, Affected, RelatedChange, Scope, MAX_RELATED, RELATED_WINDOW_HOURS};
use projections::incident::queries as incidents;
use sqlx::PgPool;

/// The changes of `tenant` in the window before `now` that touch `affected`, newest first,
/// at most [`MAX_RELATED`].
pub async fn related_changes(
    pool: &PgPool,
    tenant: &str,
    affected: &Affected,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<RelatedChange>> {
    if affected.is_empty() {
        return Ok(Vec::new());
    }
    let registry = incidents::model_providers(pool, tenant).await?;
    let scope = Scope::of(affected, &registry);
    let from = now - chrono::Duration::hours(RELATED_WINDOW_HOURS);
    let candidates = incidents::candidates(pool, tenant, from, now).await?;
    Ok(candidates
        .into_iter()
        .filter_map(|candidate| {
            let why = relates(&scope, &candidate.subject)?;
            Some(RelatedChange {
                why,
                ..candidate.change
            })
        })
        .take(MAX_RELATED)
        .collect())
}
