//! Reads of the prompt catalogue: one function per question the API asks, each scoped to a
//! tenant and answering with the view it serves. The tables are [`super::CatalogProjection`]'s.

use chrono::{DateTime, Utc};
use domain::prompt::{Prompt, PromptEvent};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::page::Page;

/// A prompt as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptView {
    pub id: Uuid,
    pub name: String,
    pub category: Option<Uuid>,
    pub description: String,
    pub tags: Vec<String>,
    pub archived: bool,
    /// The newest version's number (0: none published yet).
    pub latest_version: i32,
    /// Each label and the version it points at.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = std::collections::BTreeMap<String, i32>, example = json!({"production": 2}))
    )]
    pub labels: Value,
    /// The aggregate version, also sent as the `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PromptView {
    /// The view of a prompt's decision state: what a point-in-time read, or a command that
    /// has just committed, shows without the read model.
    pub fn from_state(
        id: Uuid,
        prompt: Prompt,
        version: u64,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            name: prompt.name,
            category: prompt.category,
            description: prompt.description,
            tags: prompt.tags.into_iter().collect(),
            archived: prompt.archived,
            latest_version: prompt.latest_version as i32,
            labels: json!(prompt.labels),
            version: version as i64,
            created_at,
            updated_at,
        }
    }
}

const PROMPT_COLUMNS: &str = "prompt_id as id, name, category_id as category, description, tags, archived, \
     latest_version, labels, version, created_at, updated_at";

/// A version as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionView {
    pub prompt_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub version: i32,
    pub template: String,
    /// The template's `{{variable}}` names, in order of first appearance.
    pub variables: Vec<String>,
    pub model: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub params: Option<Value>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    /// The name of the key that published it.
    pub created_by: String,
}

impl VersionView {
    /// The version a `PromptVersionPublished` event records; `None` for any other event.
    pub fn published(
        prompt_id: Uuid,
        event: PromptEvent,
        created_at: DateTime<Utc>,
        created_by: String,
    ) -> Option<Self> {
        let PromptEvent::PromptVersionPublished {
            version,
            template,
            variables,
            model,
            params,
            message,
        } = event
        else {
            return None;
        };
        Some(Self {
            prompt_id,
            version: version as i32,
            template,
            variables,
            model: model.map(|model| model.reference()),
            params,
            message,
            created_at,
            created_by,
        })
    }
}

const VERSION_COLUMNS: &str =
    "prompt_id, version, template, variables, model, params, message, created_at, created_by";

/// The version a label points at.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resolved {
    pub prompt_id: Uuid,
    pub label: String,
    pub version: i32,
    pub template: String,
    pub variables: Vec<String>,
    pub model: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub params: Option<Value>,
}

/// A category of prompts.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CategoryView {
    pub id: Uuid,
    pub name: String,
    /// Prompts in the category; it can be deleted only when this is 0.
    pub prompt_count: i64,
    /// The category's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CategoryView {
    /// A category as its creation recorded it: without prompts yet.
    pub fn created(id: Uuid, name: String, version: u64, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            name,
            prompt_count: 0,
            version: version as i64,
            created_at,
            updated_at: created_at,
        }
    }
}

const CATEGORY_COLUMNS: &str = "category_id as id, name, prompt_count, version, created_at, updated_at";

/// Which prompts a listing returns, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct PromptFilter {
    pub category: Option<Uuid>,
    pub tag: Option<String>,
    pub archived: Option<bool>,
    /// A case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// The last prompt of the previous page.
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// A prompt of `tenant`.
pub async fn prompt(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<PromptView>> {
    let sql = format!("select {PROMPT_COLUMNS} from prompt where prompt_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// A page of `tenant`'s prompts that match `filter`, oldest first.
pub async fn prompts(
    pool: &PgPool,
    tenant: &str,
    filter: &PromptFilter,
) -> sqlx::Result<Page<PromptView, Uuid>> {
    let pattern = filter.name_contains.as_ref().map(|text| {
        format!(
            "%{}%",
            text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
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
    let rows = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(filter.category)
        .bind(&filter.tag)
        .bind(filter.archived)
        .bind(pattern)
        .bind(filter.after)
        .bind(Page::<PromptView, Uuid>::fetch_size(filter.limit))
        .fetch_all(pool)
        .await?;
    Ok(Page::from_rows(rows, filter.limit, |p: &PromptView| p.id))
}

/// Version `version` of a prompt of `tenant`.
pub async fn version(
    pool: &PgPool,
    tenant: &str,
    prompt: Uuid,
    version: i32,
) -> sqlx::Result<Option<VersionView>> {
    let sql = format!(
        "select {VERSION_COLUMNS} from prompt_version where prompt_id = $1 and version = $2 and tenant_id = $3"
    );
    sqlx::query_as(&sql)
        .bind(prompt)
        .bind(version)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// A page of a prompt's versions after number `after`, in ascending order.
pub async fn versions(
    pool: &PgPool,
    tenant: &str,
    prompt: Uuid,
    after: i32,
    limit: i64,
) -> sqlx::Result<Page<VersionView, i32>> {
    let sql = format!(
        "select {VERSION_COLUMNS} from prompt_version where prompt_id = $1 and tenant_id = $2 and version > $3
         order by version limit $4"
    );
    let rows = sqlx::query_as(&sql)
        .bind(prompt)
        .bind(tenant)
        .bind(after)
        .bind(Page::<VersionView, i32>::fetch_size(limit))
        .fetch_all(pool)
        .await?;
    Ok(Page::from_rows(rows, limit, |v: &VersionView| v.version))
}

/// The version `label` points at, in one indexed query: what an application asks at run
/// time. `None` when the prompt does not exist or the label is not set.
pub async fn resolve(
    pool: &PgPool,
    tenant: &str,
    prompt: Uuid,
    label: &str,
) -> sqlx::Result<Option<Resolved>> {
    sqlx::query_as(
        "select v.prompt_id, $3::text as label, v.version, v.template, v.variables, v.model, v.params
         from prompt p
         join prompt_version v on v.prompt_id = p.prompt_id and v.version = (p.labels ->> $3)::int
         where p.prompt_id = $1 and p.tenant_id = $2",
    )
    .bind(prompt)
    .bind(tenant)
    .bind(label)
    .fetch_optional(pool)
    .await
}

/// A prompt version that a label points at.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LabelledVersion {
    pub prompt_id: Uuid,
    pub version: i32,
    pub labels: Vec<String>,
}

/// The versions of `tenant`'s prompts that a label points at and that name `model` (a
/// model reference), each with its labels.
pub async fn labelled_versions_naming(
    pool: &PgPool,
    tenant: &str,
    model: &str,
) -> sqlx::Result<Vec<LabelledVersion>> {
    sqlx::query_as(
        "select p.prompt_id, v.version, array_agg(l.label order by l.label) as labels
         from prompt p
         cross join lateral jsonb_each_text(p.labels) as l(label, version)
         join prompt_version v on v.prompt_id = p.prompt_id and v.version = l.version::int
         where p.tenant_id = $1 and v.model = $2
         group by p.prompt_id, v.version
         order by p.prompt_id, v.version",
    )
    .bind(tenant)
    .bind(model)
    .fetch_all(pool)
    .await
}

/// A category of `tenant`.
pub async fn category(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<CategoryView>> {
    let sql =
        format!("select {CATEGORY_COLUMNS} from prompt_category where category_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// Every category of `tenant`, by name.
pub async fn categories(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<CategoryView>> {
    let sql = format!(
        "select {CATEGORY_COLUMNS} from prompt_category where tenant_id = $1 order by lower(name), category_id"
    );
    sqlx::query_as(&sql).bind(tenant).fetch_all(pool).await
}
