//! Analytics: how prompts and features perform, from the usage roll-ups and their latency
//! and metric summaries (never a read of the raw records).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{Days, NaiveDate, Utc};
use domain::access::Permission;
use projections::catalog::queries as catalog;
use projections::usage::analytics::{self, FeatureAnalytics, PromptAnalytics};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::openapi::{NotFound, ValidationFailed};
use crate::routes::parse_day;
use crate::state::AppState;

/// The longest range analytics cover, in days.
const MAX_DAYS: u64 = 366;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(prompt_analytics))
        .routes(routes!(feature_analytics))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    /// The first day covered (`YYYY-MM-DD`, UTC).
    #[param(format = Date, example = "2026-11-01")]
    from: Option<String>,
    /// The day after the last one covered (`YYYY-MM-DD`, UTC); default tomorrow.
    #[param(format = Date, example = "2026-12-01")]
    to: Option<String>,
}

impl RangeQuery {
    /// The days asked for: `default_days` up to today when not given; at most a year.
    fn days(&self, default_days: u64) -> ApiResult<(NaiveDate, NaiveDate)> {
        let tomorrow = Utc::now().date_naive() + Days::new(1);
        let to = parse_day("to", self.to.as_deref())?.unwrap_or(tomorrow);
        let from = match parse_day("from", self.from.as_deref())? {
            Some(from) => from,
            None => to
                .checked_sub_days(Days::new(default_days))
                .ok_or_else(|| ApiError::invalid("to", "is too early"))?,
        };
        if to <= from {
            return Err(ApiError::invalid("to", "must be after from"));
        }
        if (to - from).num_days() > MAX_DAYS as i64 {
            return Err(ApiError::invalid("from", "must be at most 366 days before to"));
        }
        // The previous period of the features' comparison must be a date too.
        if from.checked_sub_signed(to - from).is_none() {
            return Err(ApiError::invalid("from", "is too early"));
        }
        Ok((from, to))
    }
}

/// `GET /v1/analytics/prompts/{id}?from=&to=`: per version, calls, tokens, cost, latency
/// percentiles, error rate, metric means and last use; per label and day, the same for the
/// calls made through it. Default: the last 30 days.
#[utoipa::path(
    get,
    path = "/v1/analytics/prompts/{prompt_id}",
    tag = "usage",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), RangeQuery),
    responses(
        (status = 200, description = "The prompt's figures by version and by label over time", body = PromptAnalytics),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn prompt_analytics(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let days = query.days(30)?;
    catalog::prompt(&app.pool, &caller.tenant, id)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    Ok(Json(
        analytics::prompt(&app.pool, &caller.tenant, id, days).await?,
    ))
}

/// `GET /v1/analytics/features?from=&to=`: per feature, calls, cost, latency percentiles,
/// error rate and metric means, each against the period of the same length before.
/// Default: the last 7 days.
#[utoipa::path(
    get,
    path = "/v1/analytics/features",
    tag = "usage",
    params(RangeQuery),
    responses(
        (status = 200, description = "Each feature's figures and their change", body = FeatureAnalytics),
        (status = 422, response = ValidationFailed),
    )
)]
async fn feature_analytics(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let days = query.days(7)?;
    Ok(Json(analytics::features(&app.pool, &caller.tenant, days).await?))
}
