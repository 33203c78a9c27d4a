//! Prompts, their versions and labels.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::access::Permission;
use domain::prompt::{parse_model, parse_note, Prompt, PromptCommand, PromptEvent, Template};
use domain::text::{DisplayName, Slug};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, ApiJson, ApiPath, ApiQuery, CommandContext};
use crate::routes::{page_size, Checks};
use crate::state::AppState;

const MAX_DESCRIPTION_CHARS: usize = 2_000;
const MAX_MESSAGE_CHARS: usize = 2_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/prompts", post(create_prompt).get(list_prompts))
        .route("/v1/prompts/{prompt_id}", get(get_prompt).patch(update_prompt))
        .route("/v1/prompts/{prompt_id}/category", put(move_prompt))
        .route("/v1/prompts/{prompt_id}/tags", post(tag_prompt))
        .route(
            "/v1/prompts/{prompt_id}/tags/{tag}",
            axum::routing::delete(untag_prompt),
        )
        .route("/v1/prompts/{prompt_id}/archive", post(archive_prompt))
        .route("/v1/prompts/{prompt_id}/restore", post(restore_prompt))
        .route(
            "/v1/prompts/{prompt_id}/versions",
            post(publish_version).get(list_versions),
        )
        .route("/v1/prompts/{prompt_id}/versions/{version}", get(get_version))
        .route(
            "/v1/prompts/{prompt_id}/labels/{label}",
            put(move_label).delete(remove_label),
        )
        .route("/v1/prompts/{prompt_id}/resolve", get(resolve))
        .route("/v1/prompts/{prompt_id}/diff", get(diff))
        .route("/v1/prompts/{prompt_id}/history", get(history))
}

/// A prompt as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct PromptView {
    id: Uuid,
    name: String,
    category: Option<Uuid>,
    description: String,
    tags: Vec<String>,
    archived: bool,
    latest_version: i32,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePromptBody {
    name: String,
    category: Option<Uuid>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    reason: Option<String>,
}

/// `POST /v1/prompts`: create a prompt.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    category: Option<Uuid>,
    tag: Option<String>,
    archived: Option<bool>,
    /// Case-insensitive substring of the name.
    q: Option<String>,
    cursor: Option<Uuid>,
    limit: Option<i64>,
}

/// `GET /v1/prompts`: list prompts, oldest first, with filters and cursor pagination.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AsOfQuery {
    as_of: Option<String>,
}

/// `GET /v1/prompts/{id}`: the prompt now, or as it was at `?as_of=<RFC 3339>`.
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
    let at = DateTime::parse_from_rfc3339(&as_of)
        .map_err(|_| {
            ApiError::invalid(
                "as_of",
                "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z",
            )
        })?
        .with_timezone(&Utc);
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatePromptBody {
    name: Option<String>,
    description: Option<String>,
    reason: Option<String>,
}

/// `PATCH /v1/prompts/{id}`: change name and/or description.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    category: Option<Uuid>,
    reason: Option<String>,
}

/// `PUT /v1/prompts/{id}/category`: move the prompt to a category (`null`: none).
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsBody {
    tags: Vec<String>,
    reason: Option<String>,
}

/// `POST /v1/prompts/{id}/tags`: add tags.
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

/// `POST /v1/prompts/{id}/archive`.
async fn archive_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    change_prompt(&app, id, PromptCommand::ArchivePrompt, &context).await
}

/// `POST /v1/prompts/{id}/restore`.
async fn restore_prompt(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    change_prompt(&app, id, PromptCommand::RestorePrompt, &context).await
}

/// A version as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct VersionView {
    prompt_id: Uuid,
    version: i32,
    template: String,
    variables: Vec<String>,
    model: Option<String>,
    params: Option<Value>,
    message: String,
    created_at: DateTime<Utc>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    template: String,
    model: Option<String>,
    params: Option<Value>,
    #[serde(default)]
    message: String,
    reason: Option<String>,
}

/// `POST /v1/prompts/{id}/versions`: publish a new immutable version.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionsQuery {
    after: Option<i32>,
    limit: Option<i64>,
}

/// `GET /v1/prompts/{id}/versions`: versions in ascending order, paginated by `after`.
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

/// `GET /v1/prompts/{id}/versions/{version}`.
async fn get_version(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath((id, version)): ApiPath<(Uuid, i32)>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    Ok(Json(read_version(&app, &caller.tenant, id, version).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    version: u32,
    reason: Option<String>,
}

/// `PUT /v1/prompts/{id}/labels/{label}`: point a label at a version (rollback: point it back).
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

/// `DELETE /v1/prompts/{id}/labels/{label}`.
async fn remove_label(
    State(app): State<AppState>,
    context: CommandContext,
    ApiPath((id, label)): ApiPath<(Uuid, String)>,
) -> ApiResult<impl IntoResponse> {
    let label = Slug::parse("label", &label)?;
    change_prompt(&app, id, PromptCommand::RemovePromptLabel { label }, &context).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveQuery {
    label: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Resolved {
    prompt_id: Uuid,
    label: String,
    version: i32,
    template: String,
    variables: Vec<String>,
    model: Option<String>,
    params: Option<Value>,
}

/// `GET /v1/prompts/{id}/resolve?label=production`: the version a label points at, in one
/// indexed query; what an application calls at run time.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: i32,
    to: i32,
}

/// `GET /v1/prompts/{id}/diff?from=1&to=2`: template line diff and changed parameters.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow)]
struct HistoryRow {
    sequence: i64,
    event_type: String,
    event_version: String,
    recorded_at: DateTime<Utc>,
    #[sqlx(skip)]
    cursor: String,
    #[serde(skip)]
    transaction_id: i64,
    #[serde(skip)]
    position: i64,
    #[serde(skip)]
    metadata: Value,
    #[sqlx(skip)]
    actor: Value,
    #[sqlx(skip)]
    request_id: Option<String>,
    #[sqlx(skip)]
    reason: Option<String>,
    #[sqlx(skip)]
    client_addr: Option<String>,
    #[sqlx(skip)]
    user_agent: Option<String>,
    data: Value,
}

/// `GET /v1/prompts/{id}/history`: the prompt's events with who, when, why and from where.
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
