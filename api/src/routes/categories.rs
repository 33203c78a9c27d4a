//! Prompt categories.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::access::Permission;
use domain::category::CategoryCommand;
use domain::text::DisplayName;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, CommandContext};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/categories", post(create_category).get(list_categories))
        .route(
            "/v1/categories/{category_id}",
            get(get_category).patch(rename_category).delete(delete_category),
        )
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct CategoryView {
    id: Uuid,
    name: String,
    prompt_count: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

async fn read_category(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<CategoryView> {
    sqlx::query_as(
        "select category_id as id, name, prompt_count, version, created_at, updated_at
         from prompt_category where category_id = $1 and tenant_id = $2",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&app.pool)
    .await?
    .ok_or(ApiError::NotFound("category"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
    reason: Option<String>,
}

/// `POST /v1/categories`.
async fn create_category(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<NameBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let name = DisplayName::parse("name", &body.name)?;
    let id = context.new_id();
    let tenant = context.caller.tenant.clone();
    let command = CategoryCommand::CreateCategory {
        tenant: tenant.clone(),
        name,
    };
    app.create(&app.categories, &id.to_string(), command, &context)
        .await?;
    let view = read_category(&app, &tenant, id).await?;
    let location = [(header::LOCATION, format!("/v1/categories/{id}"))];
    Ok((
        StatusCode::CREATED,
        etag(view.version as u64),
        location,
        Json(view),
    ))
}

/// `GET /v1/categories`: all categories of the tenant, by name.
async fn list_categories(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let items: Vec<CategoryView> = sqlx::query_as(
        "select category_id as id, name, prompt_count, version, created_at, updated_at
         from prompt_category where tenant_id = $1 order by lower(name), category_id",
    )
    .bind(&caller.tenant)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/categories/{id}`.
async fn get_category(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let view = read_category(&app, &caller.tenant, id).await?;
    Ok((etag(view.version as u64), Json(view)))
}

/// `PATCH /v1/categories/{id}`: rename.
async fn rename_category(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<NameBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let name = DisplayName::parse("name", &body.name)?;
    app.execute(
        &app.categories,
        &id.to_string(),
        CategoryCommand::RenameCategory { name },
        &context,
    )
    .await?;
    let view = read_category(&app, &context.caller.tenant, id).await?;
    Ok((etag(view.version as u64), Json(view)))
}

/// `DELETE /v1/categories/{id}`: only when no prompt is in it.
async fn delete_category(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let view = read_category(&app, &context.caller.tenant, id).await?;
    let command = CategoryCommand::DeleteCategory {
        prompt_count: view.prompt_count.max(0) as u64,
    };
    app.execute(&app.categories, &id.to_string(), command, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
