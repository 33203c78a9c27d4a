//! Prompt categories.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use domain::access::Permission;
use domain::category::{CategoryCommand, CategoryEvent};
use domain::text::DisplayName;
use projections::catalog::queries::{self as catalog, CategoryView};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{Conflict, NameText, NotFound, ReasonText, ValidationFailed};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_category, list_categories))
        .routes(routes!(get_category, rename_category, delete_category))
}

/// The tenant's categories, by name.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_categories` builds
struct CategoryList {
    items: Vec<CategoryView>,
}

async fn read_category(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<CategoryView> {
    catalog::category(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("category"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NameBody {
    #[schema(value_type = NameText)]
    name: String,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/categories`: create a category.
#[utoipa::path(
    post,
    path = "/v1/categories",
    tag = "categories",
    params(CreateHeaders),
    request_body = NameBody,
    responses(
        (status = 201, description = "The new category", body = CategoryView, headers(
            ("ETag" = String, description = "The category's version"),
            ("Location" = String, description = "The category's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn create_category(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<NameBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let name = DisplayName::parse("name", &body.name)?;
    let id = context.new_id();
    let command = CategoryCommand::CreateCategory {
        tenant: context.caller.tenant.clone(),
        name,
    };
    let committed = app
        .create(&app.categories, &id.to_string(), command, &context)
        .await?;
    // The new category is exactly what its event says: no need to read it back.
    let created = committed.events.into_iter().next().zip(committed.recorded_at);
    let Some((CategoryEvent::CategoryCreated { name, .. }, created_at)) = created else {
        return Err(ApiError::Internal(
            "creating a category recorded no CategoryCreated".into(),
        ));
    };
    let view = CategoryView::created(id, name, committed.version, created_at);
    let location = [(header::LOCATION, format!("/v1/categories/{id}"))];
    Ok((StatusCode::CREATED, etag(committed.version), location, Json(view)))
}

/// `GET /v1/categories`: all categories of the tenant, by name.
#[utoipa::path(
    get,
    path = "/v1/categories",
    tag = "categories",
    responses((status = 200, description = "The tenant's categories, by name", body = CategoryList))
)]
async fn list_categories(State(app): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let items = catalog::categories(&app.pool, &caller.tenant).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/categories/{id}`: one category.
#[utoipa::path(
    get,
    path = "/v1/categories/{category_id}",
    tag = "categories",
    params(("category_id" = Uuid, Path, description = "The category's id")),
    responses(
        (status = 200, description = "The category", body = CategoryView,
            headers(("ETag" = String, description = "The category's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
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
#[utoipa::path(
    patch,
    path = "/v1/categories/{category_id}",
    tag = "categories",
    params(("category_id" = Uuid, Path, description = "The category's id"), ChangeHeaders),
    request_body = NameBody,
    responses(
        (status = 200, description = "The renamed category", body = CategoryView,
            headers(("ETag" = String, description = "The category's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
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

/// `DELETE /v1/categories/{id}`: only when no prompt is in it (checked with the delete, so a
/// prompt moving in at the same time either makes it fail or fails itself).
#[utoipa::path(
    delete,
    path = "/v1/categories/{category_id}",
    tag = "categories",
    params(("category_id" = Uuid, Path, description = "The category's id"), ChangeHeaders),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn delete_category(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let command = CategoryCommand::DeleteCategory;
    app.execute(&app.categories, &id.to_string(), command, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
