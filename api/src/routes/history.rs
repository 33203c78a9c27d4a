//! What every event-sourced resource answers the same way: its history (`…/history`) and
//! its state at an instant (`?as_of=`), both folded from the log.

use axum::Json;
use chrono::{DateTime, Utc};
use commands::store::AsOf;
use commands::AggregateStore;
use domain::Governed;
use projections::history::{self, HistoryEntry};
use projections::page::Page;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, DomainProblem};
use crate::routes::{page_size, parse_instant};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Events after this sequence number (`next_cursor` of the previous page).
    after: Option<i64>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    /// Read the resource as it was at this instant (RFC 3339).
    #[param(format = DateTime, example = "2026-01-31T12:00:00Z")]
    pub as_of: Option<String>,
}

// The types below describe the JSON `events` builds (`projections::history`).

/// One event of a resource with who, when, why and from where.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HistoryRow {
    /// The event's number within the resource, from 1.
    sequence: i64,
    #[schema(example = "PromptVersionPublished")]
    event_type: String,
    #[schema(example = "1.0.0")]
    event_version: String,
    recorded_at: DateTime<Utc>,
    /// The event's place in the global order, `<transaction>-<position>`.
    cursor: String,
    /// The key that made the change: `{key_id, name}`.
    actor: Actor,
    request_id: Option<String>,
    reason: Option<String>,
    client_addr: Option<String>,
    user_agent: Option<String>,
    /// The event's fields.
    #[schema(value_type = Object)]
    data: Value,
}

/// Who made a change.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `events` builds
pub struct Actor {
    key_id: Option<String>,
    name: Option<String>,
}

/// A page of a resource's history.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `events` builds
pub struct HistoryPage {
    items: Vec<HistoryRow>,
    /// Pass as `after` for the next page; `null` on the last.
    next_cursor: Option<i64>,
}

/// A page of the events of `tenant`'s aggregate `aggregate_type`/`id`, oldest first; 404
/// (`what`) when it has none.
pub async fn events(
    app: &AppState,
    tenant: &str,
    aggregate_type: &str,
    id: &str,
    query: HistoryQuery,
    what: &'static str,
) -> ApiResult<Json<Page<HistoryEntry, i64>>> {
    let limit = page_size(query.limit, 100, 1000)?;
    let after = query.after.unwrap_or(0);
    let page = history::events(&app.pool, tenant, aggregate_type, id, after, limit).await?;
    if page.items.is_empty() && after == 0 {
        return Err(ApiError::NotFound(what));
    }
    Ok(Json(page))
}

/// `tenant`'s aggregate `id` as it was at `as_of` (RFC 3339 text); 404 (`what`) when it did
/// not exist then or belongs to another tenant.
pub async fn as_of<A>(
    store: &AggregateStore<A>,
    tenant: &str,
    id: &str,
    as_of: &str,
    what: &'static str,
) -> ApiResult<AsOf<A>>
where
    A: Governed + 'static,
    A::Command: Clone,
    A::Error: DomainProblem,
{
    let at = parse_instant("as_of", as_of)?;
    let past = store.load_as_of(id, at).await?;
    past.filter(|past| past.aggregate.tenant() == Some(tenant))
        .ok_or(ApiError::NotFound(what))
}
