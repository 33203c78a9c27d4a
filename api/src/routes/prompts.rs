//! Prompts, their versions and labels.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::access::Permission;
use domain::prompt::{parse_model, parse_note, Prompt, PromptCommand, PromptEvent, Template};
use domain::text::{DisplayName, Slug};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, ChangeHeaders, CommandContext, CreateHeaders};
use crate::openapi::{
    Conflict, JsonObject, NameText, NotFound, NoteText, ReasonText, SlugText, ValidationFailed,
};
use crate::routes::{page_size, Checks};
use crate::state::AppState;

const MAX_DESCRIPTION_CHARS: usize = 2_000;
const MAX_MESSAGE_CHARS: usize = 2_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_prompt, list_prompts))
        .routes(routes!(get_prompt, update_prompt))
        .routes(routes!(move_prompt))
        .routes(routes!(tag_prompt))
        .routes(routes!(untag_prompt))
        .routes(routes!(archive_prompt))
        .routes(routes!(restore_prompt))
        .routes(routes!(publish_version, list_versions))
        .routes(routes!(get_version))
        .routes(routes!(move_label, remove_label))
        .routes(routes!(resolve))
        .routes(routes!(diff))
        .routes(routes!(history))
}

/// A prompt as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct PromptView {
    id: Uuid,
    name: String,
    category: Option<Uuid>,
    description: String,
    tags: Vec<String>,
    archived: bool,
    /// The newest version's number (0: none published yet).
    latest_version: i32,
    /// Each label and the version it points at.
    #[schema(value_type = BTreeMap<String, i32>, example = json!({"production": 2}))]
    labels: Value,
    /// The aggregate version, also sent as the `ETag`.
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const PROMPT_COLUMNS: &str = "prompt_id as id, name, category_id as category, description, tags, archived, \
     latest_version, labels, version, created_at, updated_at";

async fn read_prompt(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<PromptView> {
    let sql = format!("select {PROMPT_COLUMNS} from prompt where prompt_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(&app.pool)
        .await?
        .ok_or(ApiError::NotFound("prompt"))
}

fn respond(status: StatusCode, view: PromptView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/prompts/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

async fn category_exists(app: &AppState, tenant: &str, category: Uuid) -> ApiResult<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("select 1 from prompt_category where category_id = $1 and tenant_id = $2")
            .bind(category)
            .bind(tenant)
            .fetch_optional(&app.pool)
            .await?;
    Ok(found.is_some())
}

fn parse_tags(checks: &mut Checks, tags: &[String]) -> BTreeSet<Slug> {
    tags.iter()
        .filter_map(|t| checks.check(Slug::parse("tags", t)))
        .collect()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreatePromptBody {
    #[schema(value_type = NameText)]
    name: String,
    /// A category of the tenant.
    category: Option<Uuid>,
    #[serde(default)]
    #[schema(value_type = NoteText)]
    description: String,
    /// At most 32 distinct tags.
    #[serde(default)]
    #[schema(value_type = Vec<SlugText>)]
    tags: Vec<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/prompts`: create a prompt.
#[utoipa::path(
    post,
    path = "/v1/prompts",
    tag = "prompts",
    params(CreateHeaders),
    request_body = CreatePromptBody,
    responses(
        (status = 201, description = "The new prompt", body = PromptView, headers(
            ("ETag" = String, description = "The prompt's version"),
            ("Location" = String, description = "The prompt's URL"))),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn create_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiJson(body): ApiJson<CreatePromptBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let tenant = context.caller.tenant.clone();
    let mut checks = Checks::default();
    let name = checks.check(DisplayName::parse("name", &body.name));
    let description = checks.check(parse_note(
        "description",
        &body.description,
        MAX_DESCRIPTION_CHARS,
    ));
    let tags = parse_tags(&mut checks, &body.tags);
    if let Some(category) = body.category {
        if !category_exists(&app, &tenant, category).await? {
            checks.fail("category", "no such category");
        }
    }
    checks.finish()?;
    let (Some(name), Some(description)) = (name, description) else {
        return Err(ApiError::invalid("body", "invalid"));
    };
    let id = context.new_id();
    let command = PromptCommand::CreatePrompt {
        tenant: tenant.clone(),
        name,
        category: body.category,
        description,
        tags,
    };
    let committed = app
        .create(&app.prompts, &id.to_string(), command, &context)
        .await?;
    // The new prompt is exactly what its one event says; no need to read it back.
    let (
        Some(PromptEvent::PromptCreated {
            name,
            category,
            description,
            tags,
            ..
        }),
        Some(recorded_at),
    ) = (committed.events.into_iter().next(), committed.recorded_at)
    else {
        return Err(ApiError::Internal(
            "creating a prompt recorded no PromptCreated".into(),
        ));
    };
    let view = PromptView {
        id,
        name,
        category,
        description,
        tags,
        archived: false,
        latest_version: 0,
        labels: json!({}),
        version: committed.version as i64,
        created_at: recorded_at,
        updated_at: recorded_at,
    };
    Ok(respond(StatusCode::CREATED, view))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only prompts in this category.
    category: Option<Uuid>,
    /// Only prompts with this tag.
    #[param(pattern = r"^[^\x00]*$")]
    tag: Option<String>,
    /// Only archived (`true`) or only active (`false`) prompts.
    archived: Option<bool>,
    /// Case-insensitive substring of the name.
    #[param(max_length = 200, pattern = r"^[^\x00]*$")]
    q: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A page of prompts.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_prompts` builds
struct PromptPage {
    items: Vec<PromptView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<Uuid>,
}

/// `GET /v1/prompts`: list prompts, oldest first, with filters and cursor pagination.
#[utoipa::path(
    get,
    path = "/v1/prompts",
    tag = "prompts",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of prompts, oldest first", body = PromptPage),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_prompts(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let limit = page_size(query.limit, 50, 500)?;
    if query.q.as_ref().is_some_and(|q| q.chars().count() > 200) {
        return Err(ApiError::invalid("q", "must be at most 200 characters"));
    }
    let pattern = query.q.map(|q| {
        format!(
            "%{}%",
            q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
        )
    });
    let sql = format!(
        "select {PROMPT_COLUMNS} from prompt
         where tenant_id = $1
           and ($2::uuid is null or category_id = $2)
           and ($3::text is null or $3 = any(tags))
           and ($4::bool is null or archived = $4)
           and ($5::text is null or name ilike $5)
           and ($6::uuid is null or prompt_id > $6)
         order by prompt_id
         limit $7"
    );
    let mut items: Vec<PromptView> = sqlx::query_as(&sql)
        .bind(&caller.tenant)
        .bind(query.category)
        .bind(query.tag)
        .bind(query.archived)
        .bind(pattern)
        .bind(query.cursor)
        .bind(limit + 1)
        .fetch_all(&app.pool)
        .await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|p| p.id)
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AsOfQuery {
    /// Read the prompt as it was at this instant (RFC 3339).
    #[param(format = DateTime, example = "2026-01-31T12:00:00Z")]
    as_of: Option<String>,
}

/// `GET /v1/prompts/{id}`: the prompt now, or as it was at `?as_of=<RFC 3339>`.
#[utoipa::path(
    get,
    path = "/v1/prompts/{prompt_id}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), AsOfQuery),
    responses(
        (status = 200, description = "The prompt", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_prompt(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AsOfQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let Some(as_of) = query.as_of else {
        return Ok(respond(
            StatusCode::OK,
            read_prompt(&app, &caller.tenant, id).await?,
        ));
    };
    let at = super::parse_instant("as_of", &as_of)?;
    let past = app.prompts.load_as_of(&id.to_string(), at).await?;
    let Some(past) = past.filter(|p| p.aggregate.tenant.as_deref() == Some(caller.tenant.as_str())) else {
        return Err(ApiError::NotFound("prompt"));
    };
    let prompt: Prompt = past.aggregate;
    let view = PromptView {
        id,
        name: prompt.name,
        category: prompt.category,
        description: prompt.description,
        tags: prompt.tags.into_iter().collect(),
        archived: prompt.archived,
        latest_version: prompt.latest_version as i32,
        labels: json!(prompt.labels),
        version: past.version as i64,
        created_at: past.created_at,
        updated_at: past.updated_at,
    };
    Ok(respond(StatusCode::OK, view))
}

/// Runs a command on a prompt of the caller's tenant and answers with the prompt after it.
async fn change_prompt(
    app: &AppState,
    id: Uuid,
    command: PromptCommand,
    context: &CommandContext,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    app.execute(&app.prompts, &id.to_string(), command, context)
        .await?;
    Ok(respond(
        StatusCode::OK,
        read_prompt(app, &context.caller.tenant, id).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdatePromptBody {
    #[schema(value_type = Option<NameText>)]
    name: Option<String>,
    #[schema(value_type = Option<NoteText>)]
    description: Option<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PATCH /v1/prompts/{id}`: change name and/or description.
#[utoipa::path(
    patch,
    path = "/v1/prompts/{prompt_id}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ChangeHeaders),
    request_body = UpdatePromptBody,
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn update_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdatePromptBody>,
) -> ApiResult<impl IntoResponse> {
    let context = context.with_reason(body.reason)?;
    let mut checks = Checks::default();
    let name = body
        .name
        .and_then(|n| checks.check(DisplayName::parse("name", &n)));
    let description = body
        .description
        .and_then(|d| checks.check(parse_note("description", &d, MAX_DESCRIPTION_CHARS)));
    checks.finish()?;
    change_prompt(
        &app,
        id,
        PromptCommand::UpdatePromptMetadata { name, description },
        &context,
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    /// A category of the tenant, or `null` for none.
    category: Option<Uuid>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/prompts/{id}/category`: move the prompt to a category (`null`: none).
#[utoipa::path(
    put,
    path = "/v1/prompts/{prompt_id}/category",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ChangeHeaders),
    request_body = MoveBody,
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn move_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MoveBody>,
) -> ApiResult<impl IntoResponse> {
    let context = context.with_reason(body.reason)?;
    if let Some(category) = body.category {
        if !category_exists(&app, &context.caller.tenant, category).await? {
            return Err(ApiError::invalid("category", "no such category"));
        }
    }
    change_prompt(
        &app,
        id,
        PromptCommand::MovePromptToCategory {
            category: body.category,
        },
        &context,
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TagsBody {
    /// Tags to add; a prompt carries at most 32.
    #[schema(value_type = Vec<SlugText>)]
    tags: Vec<String>,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/prompts/{id}/tags`: add tags.
#[utoipa::path(
    post,
    path = "/v1/prompts/{prompt_id}/tags",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ChangeHeaders),
    request_body = TagsBody,
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn tag_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<TagsBody>,
) -> ApiResult<impl IntoResponse> {
    let context = context.with_reason(body.reason)?;
    let mut checks = Checks::default();
    let tags = parse_tags(&mut checks, &body.tags);
    checks.finish()?;
    change_prompt(&app, id, PromptCommand::TagPrompt { tags }, &context).await
}

/// `DELETE /v1/prompts/{id}/tags/{tag}`: remove a tag.
#[utoipa::path(
    delete,
    path = "/v1/prompts/{prompt_id}/tags/{tag}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ("tag" = SlugText, Path, description = "The tag to remove"), ChangeHeaders),
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn untag_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, tag)): ApiPath<(Uuid, String)>,
) -> ApiResult<impl IntoResponse> {
    let tag = Slug::parse("tag", &tag)?;
    change_prompt(
        &app,
        id,
        PromptCommand::UntagPrompt {
            tags: BTreeSet::from([tag]),
        },
        &context,
    )
    .await
}

/// `POST /v1/prompts/{id}/archive`: archive a prompt.
#[utoipa::path(
    post,
    path = "/v1/prompts/{prompt_id}/archive",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ChangeHeaders),
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn archive_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    change_prompt(&app, id, PromptCommand::ArchivePrompt, &context).await
}

/// `POST /v1/prompts/{id}/restore`: restore an archived prompt.
#[utoipa::path(
    post,
    path = "/v1/prompts/{prompt_id}/restore",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ChangeHeaders),
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn restore_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    change_prompt(&app, id, PromptCommand::RestorePrompt, &context).await
}

/// A version as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
struct VersionView {
    prompt_id: Uuid,
    #[schema(minimum = 1)]
    version: i32,
    template: String,
    /// The template's `{{variable}}` names, in order of first appearance.
    variables: Vec<String>,
    model: Option<String>,
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    message: String,
    created_at: DateTime<Utc>,
    /// The name of the key that published it.
    created_by: String,
}

const VERSION_COLUMNS: &str =
    "prompt_id, version, template, variables, model, params, message, created_at, created_by";

async fn read_version(app: &AppState, tenant: &str, id: Uuid, version: i32) -> ApiResult<VersionView> {
    let sql = format!("select {VERSION_COLUMNS} from prompt_version where prompt_id = $1 and version = $2 and tenant_id = $3");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(version)
        .bind(tenant)
        .fetch_optional(&app.pool)
        .await?
        .ok_or(ApiError::NotFound("version"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// Text with `{{variable}}` placeholders (a variable is a letter or `_` followed by
    /// letters, digits, `_` or `.`); single braces are ordinary text.
    #[schema(
        min_length = 1,
        max_length = 100000,
        pattern = r"^(?:[^{}\x00]|\{(?!\{)|\}(?!\})|\{\{\s*[A-Za-z_][A-Za-z0-9_.]*\s*\}\})*$",
        example = "Answer {{customer}} politely."
    )]
    template: String,
    /// The model it is written for, e.g. `openai/gpt-4o-mini`.
    #[schema(value_type = Option<NameText>)]
    model: Option<String>,
    /// Model parameters.
    #[schema(value_type = Option<JsonObject>, example = json!({"temperature": 0.2}))]
    params: Option<Value>,
    /// What changed, for people.
    #[serde(default)]
    #[schema(value_type = NoteText)]
    message: String,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `POST /v1/prompts/{id}/versions`: publish a new immutable version.
#[utoipa::path(
    post,
    path = "/v1/prompts/{prompt_id}/versions",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ChangeHeaders),
    request_body = PublishBody,
    responses(
        (status = 201, description = "The new version", body = VersionView, headers(
            ("ETag" = String, description = "The prompt's version"),
            ("Location" = String, description = "The version's URL"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn publish_version(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<PublishBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let mut checks = Checks::default();
    let template = checks.check(Template::parse(&body.template));
    let model = body.model.and_then(|m| checks.check(parse_model(&m)));
    let message = checks.check(parse_note("message", &body.message, MAX_MESSAGE_CHARS));
    let params = match body.params {
        None | Some(Value::Null) => None,
        Some(params @ Value::Object(_)) => Some(params),
        Some(_) => {
            checks.fail("params", "must be a JSON object");
            None
        }
    };
    checks.finish()?;
    let (Some(template), Some(message)) = (template, message) else {
        return Err(ApiError::invalid("body", "invalid"));
    };
    let command = PromptCommand::PublishPromptVersion {
        template,
        model,
        params,
        message,
    };
    let committed = app
        .execute(&app.prompts, &id.to_string(), command, &context)
        .await?;
    // The version is exactly what its event says; no need to read it back.
    let (
        Some(PromptEvent::PromptVersionPublished {
            version,
            template,
            variables,
            model,
            params,
            message,
        }),
        Some(created_at),
    ) = (committed.events.into_iter().next(), committed.recorded_at)
    else {
        return Err(ApiError::Internal(
            "publishing recorded no PromptVersionPublished".into(),
        ));
    };
    let view = VersionView {
        prompt_id: id,
        version: version as i32,
        template,
        variables,
        model,
        params,
        message,
        created_at,
        created_by: context.metadata.actor_name.clone(),
    };
    let location = [(header::LOCATION, format!("/v1/prompts/{id}/versions/{version}"))];
    Ok((StatusCode::CREATED, etag(committed.version), location, Json(view)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct VersionsQuery {
    /// Versions after this number (`next_cursor` of the previous page).
    after: Option<i32>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of versions.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `list_versions` builds
struct VersionPage {
    items: Vec<VersionView>,
    /// Pass as `after` for the next page; `null` on the last.
    next_cursor: Option<i32>,
}

/// `GET /v1/prompts/{id}/versions`: versions in ascending order, paginated by `after`.
#[utoipa::path(
    get,
    path = "/v1/prompts/{prompt_id}/versions",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), VersionsQuery),
    responses(
        (status = 200, description = "A page of versions, oldest first", body = VersionPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_versions(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<VersionsQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    read_prompt(&app, &caller.tenant, id).await?;
    let limit = page_size(query.limit, 100, 1000)?;
    let sql = format!(
        "select {VERSION_COLUMNS} from prompt_version where prompt_id = $1 and tenant_id = $2 and version > $3
         order by version limit $4"
    );
    let mut items: Vec<VersionView> = sqlx::query_as(&sql)
        .bind(id)
        .bind(&caller.tenant)
        .bind(query.after.unwrap_or(0))
        .bind(limit + 1)
        .fetch_all(&app.pool)
        .await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|v| v.version)
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `GET /v1/prompts/{id}/versions/{version}`: one version.
#[utoipa::path(
    get,
    path = "/v1/prompts/{prompt_id}/versions/{version}",
    tag = "prompts",
    params(
        ("prompt_id" = Uuid, Path, description = "The prompt's id"),
        ("version" = i32, Path, description = "The version's number"),
    ),
    responses(
        (status = 200, description = "The version", body = VersionView),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_version(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath((id, version)): ApiPath<(Uuid, i32)>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    Ok(Json(read_version(&app, &caller.tenant, id, version).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    /// A published version of the prompt.
    version: u32,
    /// Why; stored with the change (as `X-Reason`).
    #[schema(value_type = Option<ReasonText>)]
    reason: Option<String>,
}

/// `PUT /v1/prompts/{id}/labels/{label}`: point a label at a version (rollback: point it back).
#[utoipa::path(
    put,
    path = "/v1/prompts/{prompt_id}/labels/{label}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ("label" = SlugText, Path, description = "The label, e.g. `production`"), ChangeHeaders),
    request_body = LabelBody,
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn move_label(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, label)): ApiPath<(Uuid, String)>,
    ApiJson(body): ApiJson<LabelBody>,
) -> ApiResult<impl IntoResponse> {
    let context = context.with_reason(body.reason)?;
    let label = Slug::parse("label", &label)?;
    change_prompt(
        &app,
        id,
        PromptCommand::MovePromptLabel {
            label,
            version: body.version,
        },
        &context,
    )
    .await
}

/// `DELETE /v1/prompts/{id}/labels/{label}`: remove a label.
#[utoipa::path(
    delete,
    path = "/v1/prompts/{prompt_id}/labels/{label}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ("label" = SlugText, Path, description = "The label, e.g. `production`"), ChangeHeaders),
    responses(
        (status = 200, description = "The prompt after the change", body = PromptView,
            headers(("ETag" = String, description = "The prompt's version"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn remove_label(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, label)): ApiPath<(Uuid, String)>,
) -> ApiResult<impl IntoResponse> {
    let label = Slug::parse("label", &label)?;
    change_prompt(&app, id, PromptCommand::RemovePromptLabel { label }, &context).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ResolveQuery {
    /// The label to resolve (default `production`).
    #[param(value_type = Option<SlugText>)]
    label: Option<String>,
}

/// The version a label points at.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct Resolved {
    prompt_id: Uuid,
    label: String,
    version: i32,
    template: String,
    variables: Vec<String>,
    model: Option<String>,
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
}

/// `GET /v1/prompts/{id}/resolve?label=production`: the version a label points at, in one
/// indexed query; what an application calls at run time.
#[utoipa::path(
    get,
    path = "/v1/prompts/{prompt_id}/resolve",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), ResolveQuery),
    responses(
        (status = 200, description = "The version the label points at", body = Resolved),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn resolve(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ResolveQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let label = Slug::parse("label", query.label.as_deref().unwrap_or("production"))?;
    let resolved: Option<Resolved> = sqlx::query_as(
        "select v.prompt_id, $3::text as label, v.version, v.template, v.variables, v.model, v.params
         from prompt p
         join prompt_version v on v.prompt_id = p.prompt_id and v.version = (p.labels ->> $3)::int
         where p.prompt_id = $1 and p.tenant_id = $2",
    )
    .bind(id)
    .bind(&caller.tenant)
    .bind(label.as_ref())
    .fetch_optional(&app.pool)
    .await?;
    match resolved {
        Some(resolved) => Ok(Json(resolved)),
        None => {
            read_prompt(&app, &caller.tenant, id).await?;
            Err(ApiError::NotFound("label"))
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    /// The older version's number.
    from: i32,
    /// The newer version's number.
    to: i32,
}

// The types below describe the JSON `diff` builds.

/// What changed between two versions.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PromptDiff {
    prompt_id: Uuid,
    from: i32,
    to: i32,
    template: TemplateDiff,
    /// Parameters whose value differs, with both values (`null`: absent).
    params: Vec<ParamChange>,
    model: ModelChange,
    variables: VariablesChange,
}

/// The templates' line diff.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TemplateDiff {
    lines: Vec<DiffLine>,
    /// The same as a unified diff.
    unified: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct DiffLine {
    op: DiffOp,
    text: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum DiffOp {
    Equal,
    Delete,
    Insert,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ParamChange {
    key: String,
    from: Option<Value>,
    to: Option<Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ModelChange {
    from: Option<String>,
    to: Option<String>,
    changed: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct VariablesChange {
    from: Vec<String>,
    to: Vec<String>,
}

/// `GET /v1/prompts/{id}/diff?from=1&to=2`: template line diff and changed parameters.
#[utoipa::path(
    get,
    path = "/v1/prompts/{prompt_id}/diff",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), DiffQuery),
    responses(
        (status = 200, description = "What changed between the versions", body = PromptDiff),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn diff(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<DiffQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let from = read_version(&app, &caller.tenant, id, query.from).await?;
    let to = read_version(&app, &caller.tenant, id, query.to).await?;
    let text_diff = similar::TextDiff::from_lines(&from.template, &to.template);
    let lines: Vec<Value> = text_diff
        .iter_all_changes()
        .map(|change| {
            let op = match change.tag() {
                similar::ChangeTag::Equal => "equal",
                similar::ChangeTag::Delete => "delete",
                similar::ChangeTag::Insert => "insert",
            };
            json!({ "op": op, "text": change.value().trim_end_matches('\n') })
        })
        .collect();
    let unified = text_diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("v{}", from.version), &format!("v{}", to.version))
        .to_string();
    Ok(Json(json!({
        "prompt_id": id,
        "from": from.version,
        "to": to.version,
        "template": { "lines": lines, "unified": unified },
        "params": changed_params(from.params.as_ref(), to.params.as_ref()),
        "model": { "from": from.model, "to": to.model, "changed": from.model != to.model },
        "variables": { "from": from.variables, "to": to.variables },
    })))
}

/// Keys whose value differs between two parameter objects, with both values.
fn changed_params(from: Option<&Value>, to: Option<&Value>) -> Vec<Value> {
    let as_map = |v: Option<&Value>| -> BTreeMap<String, Value> {
        v.and_then(Value::as_object)
            .map(|o| o.clone().into_iter().collect())
            .unwrap_or_default()
    };
    let (from, to) = (as_map(from), as_map(to));
    let keys: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    keys.into_iter()
        .filter(|k| from.get(*k) != to.get(*k))
        .map(|k| json!({ "key": k, "from": from.get(k), "to": to.get(k) }))
        .collect()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Events after this sequence number (`next_cursor` of the previous page).
    after: Option<i64>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One event of a prompt with who, when, why and from where.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct HistoryRow {
    /// The event's number within the prompt, from 1.
    sequence: i64,
    #[schema(example = "PromptVersionPublished")]
    event_type: String,
    #[schema(example = "1.0.0")]
    event_version: String,
    recorded_at: DateTime<Utc>,
    /// The event's place in the global order, `<transaction>-<position>`.
    #[sqlx(skip)]
    cursor: String,
    #[serde(skip)]
    transaction_id: i64,
    #[serde(skip)]
    position: i64,
    #[serde(skip)]
    metadata: Value,
    /// The key that made the change: `{key_id, name}`.
    #[sqlx(skip)]
    #[schema(value_type = Actor)]
    actor: Value,
    #[sqlx(skip)]
    request_id: Option<String>,
    #[sqlx(skip)]
    reason: Option<String>,
    #[sqlx(skip)]
    client_addr: Option<String>,
    #[sqlx(skip)]
    user_agent: Option<String>,
    /// The event's fields.
    #[schema(value_type = Object)]
    data: Value,
}

/// Who made a change.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `history` builds
struct Actor {
    key_id: Option<String>,
    name: Option<String>,
}

/// A page of a prompt's history.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `history` builds
struct HistoryPage {
    items: Vec<HistoryRow>,
    /// Pass as `after` for the next page; `null` on the last.
    next_cursor: Option<i64>,
}

/// `GET /v1/prompts/{id}/history`: the prompt's events with who, when, why and from where.
#[utoipa::path(
    get,
    path = "/v1/prompts/{prompt_id}/history",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "The prompt's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the prompt's events, oldest first", body = HistoryPage),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let limit = page_size(query.limit, 100, 1000)?;
    let mut items: Vec<HistoryRow> = sqlx::query_as(
        "select sequence, event_type, event_version, recorded_at, transaction_id::text::bigint as transaction_id,
                position, metadata, payload as data
         from events
         where aggregate_type = 'prompt' and aggregate_id = $1 and tenant_id = $2 and sequence > $3
         order by sequence limit $4",
    )
    .bind(id.to_string())
    .bind(&caller.tenant)
    .bind(query.after.unwrap_or(0))
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    if items.is_empty() && query.after.unwrap_or(0) == 0 {
        return Err(ApiError::NotFound("prompt"));
    }
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|e| e.sequence)
    } else {
        None
    };
    for item in &mut items {
        let meta = |key: &str| item.metadata.get(key).and_then(Value::as_str).map(str::to_string);
        item.actor = json!({ "key_id": meta("actor_key_id"), "name": meta("actor_name") });
        item.request_id = meta("request_id");
        item.reason = meta("reason");
        item.client_addr = meta("client_addr");
        item.user_agent = meta("user_agent");
        item.cursor = format!("{}-{}", item.transaction_id, item.position);
        // Stored payloads are tagged with the variant name, which `event_type` already says.
        item.data = match item.data.get(&item.event_type) {
            Some(inner) => inner.clone(),
            None => json!({}),
        };
    }
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}
