//! Prompts, their versions and labels.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use commands::Committed;
use cqrs_es::Aggregate;
use domain::access::Permission;
use domain::approval::ProposedChange;
use domain::fields::AllValid;
use domain::prompt::diff::{VersionContent, VersionDiff};
use domain::prompt::{
    parse_model, parse_note, parse_params, parse_tags, Prompt, PromptCommand, PromptEvent, Template,
    MAX_DESCRIPTION_CHARS, MAX_MESSAGE_CHARS,
};
use domain::text::{DisplayName, Slug};
use projections::approval::queries::ChangeRequestView;
use projections::catalog::queries::{self as catalog, PromptFilter, PromptView, Resolved, VersionView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
use crate::routes::approvals;
use crate::routes::history::{self, AsOfQuery, HistoryPage, HistoryQuery};
use crate::routes::page_size;
use crate::state::AppState;

/// Longest substring a listing searches names for, in characters.
const MAX_QUERY_CHARS: usize = 200;

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

fn respond(status: StatusCode, view: PromptView) -> impl IntoResponse {
    let location = [(header::LOCATION, format!("/v1/prompts/{}", view.id))];
    (status, etag(view.version as u64), location, Json(view))
}

/// A prompt of the caller's tenant, from the catalogue.
async fn read_prompt(app: &AppState, tenant: &str, id: Uuid) -> ApiResult<PromptView> {
    catalog::prompt(&app.pool, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("prompt"))
}

/// A version of a prompt of the caller's tenant, from the catalogue.
async fn read_version(app: &AppState, tenant: &str, id: Uuid, version: i32) -> ApiResult<VersionView> {
    catalog::version(&app.pool, tenant, id, version)
        .await?
        .ok_or(ApiError::NotFound("version"))
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

impl CreatePromptBody {
    /// The command; whether the category exists is checked when it is appended.
    fn into_command(self, tenant: &str) -> Result<PromptCommand, ApiError> {
        let (name, description, tags) = (
            DisplayName::parse("name", &self.name),
            parse_note("description", &self.description, MAX_DESCRIPTION_CHARS),
            parse_tags("tags", &self.tags),
        )
            .all_valid()?;
        Ok(PromptCommand::CreatePrompt {
            tenant: tenant.to_string(),
            name,
            category: self.category,
            description,
            tags,
        })
    }
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
    ApiJson(mut body): ApiJson<CreatePromptBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.take())?;
    let command = body.into_command(&context.caller.tenant)?;
    let id = context.new_id();
    let committed = app
        .create(&app.prompts, &id.to_string(), command, &context)
        .await?;
    Ok(respond(StatusCode::CREATED, created(id, committed)?))
}

/// The prompt a create committed: exactly what its events say, with no need to read it back.
fn created(id: Uuid, committed: Committed<PromptEvent>) -> ApiResult<PromptView> {
    let recorded_at = committed
        .recorded_at
        .ok_or_else(|| ApiError::Internal("creating a prompt recorded no event".into()))?;
    let mut prompt = Prompt::default();
    for event in committed.events {
        prompt.apply(event);
    }
    Ok(PromptView::from_state(
        id,
        prompt,
        committed.version,
        recorded_at,
        recorded_at,
    ))
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

impl ListQuery {
    fn into_filter(self) -> Result<PromptFilter, ApiError> {
        let limit = page_size(self.limit, 50, 500)?;
        if self
            .q
            .as_ref()
            .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
        {
            return Err(ApiError::invalid(
                "q",
                format!("must be at most {MAX_QUERY_CHARS} characters"),
            ));
        }
        Ok(PromptFilter {
            category: self.category,
            tag: self.tag,
            archived: self.archived,
            name_contains: self.q,
            after: self.cursor,
            limit,
        })
    }
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
    let filter = query.into_filter()?;
    Ok(Json(catalog::prompts(&app.pool, &caller.tenant, &filter).await?))
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
    let past = history::as_of(&app.prompts, &caller.tenant, &id.to_string(), &as_of, "prompt").await?;
    let view = PromptView::from_state(id, past.aggregate, past.version, past.created_at, past.updated_at);
    Ok(respond(StatusCode::OK, view))
}

/// Runs a command on a prompt of the caller's tenant and answers with the prompt after it.
async fn change_prompt(
    app: &AppState,
    id: Uuid,
    command: PromptCommand,
    context: &CommandContext,
) -> ApiResult<impl IntoResponse> {
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

impl UpdatePromptBody {
    fn into_command(self) -> Result<PromptCommand, ApiError> {
        let (name, description) = (
            self.name.map(|n| DisplayName::parse("name", &n)).transpose(),
            self.description
                .map(|d| parse_note("description", &d, MAX_DESCRIPTION_CHARS))
                .transpose(),
        )
            .all_valid()?;
        Ok(PromptCommand::UpdatePromptMetadata { name, description })
    }
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
    ApiJson(mut body): ApiJson<UpdatePromptBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.take())?;
    change_prompt(&app, id, body.into_command()?, &context).await
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
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let command = PromptCommand::MovePromptToCategory {
        category: body.category,
    };
    change_prompt(&app, id, command, &context).await
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
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let tags = parse_tags("tags", &body.tags)?;
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
    context.caller.require(Permission::Write)?;
    let tags = parse_tags("tag", &[tag])?;
    change_prompt(&app, id, PromptCommand::UntagPrompt { tags }, &context).await
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
    context.caller.require(Permission::Write)?;
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
    context.caller.require(Permission::Write)?;
    change_prompt(&app, id, PromptCommand::RestorePrompt, &context).await
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

impl PublishBody {
    fn into_command(self) -> Result<PromptCommand, ApiError> {
        let (template, model, message, params) = (
            Template::parse(&self.template),
            self.model.map(|m| parse_model(&m)).transpose(),
            parse_note("message", &self.message, MAX_MESSAGE_CHARS),
            parse_params("params", self.params),
        )
            .all_valid()?;
        Ok(PromptCommand::PublishPromptVersion {
            template,
            model,
            params,
            message,
        })
    }
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
    ApiJson(mut body): ApiJson<PublishBody>,
) -> ApiResult<impl IntoResponse> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason.take())?;
    let committed = app
        .execute(&app.prompts, &id.to_string(), body.into_command()?, &context)
        .await?;
    // The version is exactly what its event says; no need to read it back.
    let published = committed.events.into_iter().next().zip(committed.recorded_at);
    let Some(view) = published.and_then(|(event, created_at)| {
        VersionView::published(id, event, created_at, context.metadata.actor_name.clone())
    }) else {
        return Err(ApiError::Internal(
            "publishing recorded no PromptVersionPublished".into(),
        ));
    };
    let location = [(
        header::LOCATION,
        format!("/v1/prompts/{id}/versions/{}", view.version),
    )];
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
    let after = query.after.unwrap_or(0);
    Ok(Json(
        catalog::versions(&app.pool, &caller.tenant, id, after, limit).await?,
    ))
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
        (status = 202, description = "The label is protected: a change request waiting for another key's approval",
            body = ChangeRequestView, headers(("Location" = String, description = "The change request's URL"))),
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
) -> ApiResult<Response> {
    context.caller.require(Permission::Write)?;
    let context = context.with_reason(body.reason)?;
    let label = Slug::parse("label", &label)?;
    let proposal = ProposedChange::MovePromptLabel {
        prompt: id,
        label: label.to_string(),
        version: body.version,
    };
    if let Some(accepted) = propose_if_protected_prompt(&app, &context, id, proposal).await? {
        return Ok(accepted);
    }
    let command = PromptCommand::MovePromptLabel {
        label,
        version: body.version,
    };
    let changed = change_prompt(&app, id, command, &context).await?;
    app.live_labels.refresh(&app.pool, id).await?;
    Ok(changed.into_response())
}

/// A change to a protected label of a prompt of the caller's tenant becomes a change
/// request (a prompt of another tenant is not found first).
async fn propose_if_protected_prompt(
    app: &AppState,
    context: &CommandContext,
    id: Uuid,
    proposal: ProposedChange,
) -> ApiResult<Option<Response>> {
    read_prompt(app, &context.caller.tenant, id).await?;
    approvals::propose_if_protected(app, context, proposal).await
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
        (status = 202, description = "The label is protected: a change request waiting for another key's approval",
            body = ChangeRequestView, headers(("Location" = String, description = "The change request's URL"))),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = ValidationFailed),
    )
)]
async fn remove_label(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, label)): ApiPath<(Uuid, String)>,
) -> ApiResult<Response> {
    context.caller.require(Permission::Write)?;
    let label = Slug::parse("label", &label)?;
    let proposal = ProposedChange::RemovePromptLabel {
        prompt: id,
        label: label.to_string(),
    };
    if let Some(accepted) = propose_if_protected_prompt(&app, &context, id, proposal).await? {
        return Ok(accepted);
    }
    let command = PromptCommand::RemovePromptLabel { label };
    let changed = change_prompt(&app, id, command, &context).await?;
    app.live_labels.refresh(&app.pool, id).await?;
    Ok(changed.into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ResolveQuery {
    /// The label to resolve (default `production`).
    #[param(value_type = Option<SlugText>)]
    label: Option<String>,
}

/// `GET /v1/prompts/{id}/resolve?label=production`: the version a label points at, from
/// memory; what an application calls at run time.
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
) -> ApiResult<Json<Resolved>> {
    caller.require(Permission::Read)?;
    let label = Slug::parse("label", query.label.as_deref().unwrap_or("production"))?;
    if let Some(resolved) = app.live_labels.resolve(&caller.tenant, id, label.as_ref()) {
        return Ok(Json(Resolved::clone(&resolved)));
    }
    // Not in memory: a label this process has not read from the log yet, or none at all.
    match catalog::resolve(&app.pool, &caller.tenant, id, label.as_ref()).await? {
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

fn content(version: &VersionView) -> VersionContent<'_> {
    VersionContent {
        version: version.version as u32,
        template: &version.template,
        model: version.model.as_deref(),
        params: version.params.as_ref(),
        variables: &version.variables,
    }
}

/// What `diff` answers: the versions compared and what changed between them.
#[derive(Serialize)]
struct DiffAnswer {
    prompt_id: Uuid,
    from: i32,
    to: i32,
    #[serde(flatten)]
    diff: VersionDiff,
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
    let diff = VersionDiff::between(content(&from), content(&to));
    Ok(Json(DiffAnswer {
        prompt_id: id,
        from: from.version,
        to: to.version,
        diff,
    }))
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
    history::events(
        &app,
        &caller.tenant,
        Prompt::TYPE,
        &id.to_string(),
        query,
        "prompt",
    )
    .await
}
