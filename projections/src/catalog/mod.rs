//! `prompt`, `prompt_version` and `prompt_category`: the prompt catalogue as the API reads it.
//! This module applies events to the tables; [`queries`] reads them.
//!
//! Applied inline: the write side applies a command's events in the transaction that appends
//! them, so the catalogue is never behind the log and a command's next read sees it.
//!
//! A batch is folded in memory (the rows it touches are loaded once, locked, changed event by
//! event, and written back with one statement per table), so applying it costs a handful
//! of round trips however many events it holds. That is what makes a rebuild fast.

pub mod live;
pub mod queries;

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::category::{CategoryEvent, PromptCategory};
use domain::prompt::{Prompt, PromptEvent};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use eventlog::StoredEvent;
use eventlog::{Projection, ProjectionError};

pub struct CatalogProjection;

/// Versions written with COPY rather than one INSERT from this many on.
const COPY_FROM: usize = 64;

#[derive(Debug, Clone, sqlx::FromRow)]
struct PromptRow {
    prompt_id: Uuid,
    tenant_id: String,
    name: String,
    category_id: Option<Uuid>,
    description: String,
    tags: Vec<String>,
    archived: bool,
    latest_version: i32,
    labels: Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct CategoryRow {
    category_id: Uuid,
    tenant_id: String,
    name: String,
    prompt_count: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct VersionRow {
    prompt_id: Uuid,
    version: i32,
    tenant_id: String,
    template: String,
    variables: Vec<String>,
    model: Option<String>,
    params: Option<Value>,
    message: String,
    created_at: DateTime<Utc>,
    created_by: String,
}

/// The rows one batch touches, loaded once and written back once.
#[derive(Default)]
struct Batch {
    prompts: HashMap<Uuid, PromptRow>,
    categories: HashMap<Uuid, CategoryRow>,
    deleted_categories: HashSet<Uuid>,
    versions: Vec<VersionRow>,
}

impl Batch {
    fn category_count(&mut self, category: Option<Uuid>, delta: i64) {
        if let Some(row) = category.and_then(|id| self.categories.get_mut(&id)) {
            row.prompt_count += delta;
        }
    }
}

#[async_trait]
impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Prompt::TYPE, PromptCategory::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&["actor_name"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["prompt", "prompt_version", "prompt_category"]
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        for event in events {
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            if event.aggregate_type == Prompt::TYPE {
                let payload = event
                    .decode::<PromptEvent>()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                decoded.push((event, id, Decoded::Prompt(payload)));
            } else if event.aggregate_type == PromptCategory::TYPE {
                let payload = event
                    .decode::<CategoryEvent>()
                    .map_err(|e| ProjectionError::undecodable(event, e))?;
                decoded.push((event, id, Decoded::Category(payload)));
            }
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = load(tx, &decoded).await?;
        for (event, id, payload) in decoded {
            match payload {
                Decoded::Prompt(payload) => apply_prompt(&mut batch, event, id, payload),
                Decoded::Category(payload) => apply_category(&mut batch, event, id, payload),
            }
        }
        store(tx, batch).await?;
        Ok(())
    }
}

enum Decoded {
    Prompt(PromptEvent),
    Category(CategoryEvent),
}

async fn load(
    tx: &mut PgConnection,
    decoded: &[(&StoredEvent, Uuid, Decoded)],
) -> Result<Batch, sqlx::Error> {
    // Rows created by this batch need no loading (a command creating a prompt reads nothing).
    let created: HashSet<Uuid> = decoded
        .iter()
        .filter(|(_, _, d)| {
            matches!(
                d,
                Decoded::Prompt(PromptEvent::PromptCreated { .. })
                    | Decoded::Category(CategoryEvent::CategoryCreated { .. })
            )
        })
        .map(|(_, id, _)| *id)
        .collect();
    let prompt_ids: Vec<Uuid> = decoded
        .iter()
        .filter(|(_, id, d)| matches!(d, Decoded::Prompt(_)) && !created.contains(id))
        .map(|(_, id, _)| *id)
        .collect::<HashSet<Uuid>>()
        .into_iter()
        .collect();
    let prompts: Vec<PromptRow> = if prompt_ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            // A join with the ids, not `= any($1)`: the generic plan for a long array is a
            // sequential scan of every prompt. Locked, in id order, because commands apply
            // their events concurrently (a category's count is shared by its prompts).
            "select p.* from unnest($1::uuid[]) as wanted(id) join prompt p on p.prompt_id = wanted.id
             order by p.prompt_id for update of p",
        )
        .bind(&prompt_ids)
        .fetch_all(&mut *tx)
        .await?
    };
    // Only the categories whose rows change: the batch's own, and those prompts enter or
    // leave (a prompt being tagged must not lock its category against its siblings).
    let moved: HashSet<Uuid> = decoded
        .iter()
        .filter(|(_, _, d)| matches!(d, Decoded::Prompt(PromptEvent::PromptMovedToCategory { .. })))
        .map(|(_, id, _)| *id)
        .collect();
    let mut category_ids: HashSet<Uuid> = prompts
        .iter()
        .filter(|p| moved.contains(&p.prompt_id))
        .filter_map(|p| p.category_id)
        .collect();
    for (_, id, payload) in decoded {
        match payload {
            Decoded::Category(_) => {
                category_ids.insert(*id);
            }
            Decoded::Prompt(PromptEvent::PromptCreated {
                category: Some(c), ..
            })
            | Decoded::Prompt(PromptEvent::PromptMovedToCategory { category: Some(c) }) => {
                category_ids.insert(*c);
            }
            Decoded::Prompt(_) => {}
        }
    }
    let category_ids: Vec<Uuid> = category_ids.difference(&created).copied().collect();
    let categories: Vec<CategoryRow> = if category_ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "select c.* from unnest($1::uuid[]) as wanted(id) join prompt_category c on c.category_id = wanted.id
             order by c.category_id for update of c",
        )
            .bind(&category_ids)
            .fetch_all(&mut *tx)
            .await?
    };
    Ok(Batch {
        prompts: prompts.into_iter().map(|p| (p.prompt_id, p)).collect(),
        categories: categories.into_iter().map(|c| (c.category_id, c)).collect(),
        ..Batch::default()
    })
}

fn apply_prompt(batch: &mut Batch, event: &StoredEvent, id: Uuid, payload: PromptEvent) {
    if let PromptEvent::PromptCreated {
        tenant,
        name,
        category,
        description,
        tags,
    } = payload
    {
        batch.category_count(category, 1);
        batch.prompts.insert(
            id,
            PromptRow {
                prompt_id: id,
                tenant_id: tenant,
                name,
                category_id: category,
                description,
                tags,
                archived: false,
                latest_version: 0,
                labels: Value::Object(Default::default()),
                version: event.sequence,
                created_at: event.recorded_at,
                updated_at: event.recorded_at,
            },
        );
        return;
    }
    let Some(row) = batch.prompts.get_mut(&id) else {
        tracing::warn!(prompt_id = %id, cursor = %event.cursor, "event for a prompt never created; skipped");
        return;
    };
    row.version = event.sequence;
    row.updated_at = event.recorded_at;
    match payload {
        PromptEvent::PromptCreated { .. } => {}
        PromptEvent::PromptMetadataUpdated { name, description } => {
            row.name = name;
            row.description = description;
        }
        PromptEvent::PromptTagged { tags } => {
            for tag in tags {
                if !row.tags.contains(&tag) {
                    row.tags.push(tag);
                }
            }
            row.tags.sort();
        }
        PromptEvent::PromptUntagged { tags } => row.tags.retain(|t| !tags.contains(t)),
        PromptEvent::PromptMovedToCategory { category } => {
            let previous = std::mem::replace(&mut row.category_id, category);
            batch.category_count(previous, -1);
            batch.category_count(category, 1);
        }
        PromptEvent::PromptArchived => row.archived = true,
        PromptEvent::PromptRestored => row.archived = false,
        PromptEvent::PromptVersionPublished {
            version,
            template,
            variables,
            model,
            params,
            message,
        } => {
            row.latest_version = version as i32;
            let tenant_id = row.tenant_id.clone();
            batch.versions.push(VersionRow {
                prompt_id: id,
                version: version as i32,
                tenant_id,
                template,
                variables,
                model: model.map(|model| model.reference()),
                params,
                message,
                created_at: event.recorded_at,
                created_by: event.meta("actor_name").unwrap_or_default(),
            });
        }
        PromptEvent::PromptLabelMoved { label, version, .. } => {
            let mut labels = labels_of(row);
            labels.insert(label, version);
            row.labels = serde_json::json!(labels);
        }
        PromptEvent::PromptLabelRemoved { label, .. } => {
            let mut labels = labels_of(row);
            labels.remove(&label);
            row.labels = serde_json::json!(labels);
        }
    }
}

/// Appends `row` as a CSV line for COPY: every present value quoted, absent ones empty
/// (which COPY reads as NULL).
fn csv_row(out: &mut String, row: &VersionRow) {
    use std::fmt::Write as _;
    fn quoted(out: &mut String, value: &str) {
        out.push('"');
        for (index, part) in value.split('"').enumerate() {
            if index > 0 {
                out.push_str("\"\"");
            }
            out.push_str(part);
        }
        out.push('"');
    }
    let _ = write!(out, "{},{},", row.prompt_id, row.version);
    quoted(out, &row.tenant_id);
    out.push(',');
    quoted(out, &row.template);
    // Variable names are identifiers, so an array literal needs no escaping.
    out.push_str(",\"{");
    for (index, variable) in row.variables.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(variable);
    }
    out.push_str("}\",");
    if let Some(model) = &row.model {
        quoted(out, model);
    }
    out.push(',');
    if let Some(params) = &row.params {
        quoted(out, &params.to_string());
    }
    out.push(',');
    quoted(out, &row.message);
    out.push(',');
    quoted(out, &row.created_at.to_rfc3339());
    out.push(',');
    quoted(out, &row.created_by);
    out.push('\n');
}

fn labels_of(row: &PromptRow) -> BTreeMap<String, u32> {
    serde_json::from_value(row.labels.clone()).unwrap_or_default()
}

fn apply_category(batch: &mut Batch, event: &StoredEvent, id: Uuid, payload: CategoryEvent) {
    match payload {
        CategoryEvent::CategoryCreated { tenant, name } => {
            batch.deleted_categories.remove(&id);
            batch.categories.insert(
                id,
                CategoryRow {
                    category_id: id,
                    tenant_id: tenant,
                    name,
                    prompt_count: 0,
                    version: event.sequence,
                    created_at: event.recorded_at,
                    updated_at: event.recorded_at,
                },
            );
        }
        CategoryEvent::CategoryRenamed { name } => {
            if let Some(row) = batch.categories.get_mut(&id) {
                row.name = name;
                row.version = event.sequence;
                row.updated_at = event.recorded_at;
            }
        }
        CategoryEvent::CategoryDeleted => {
            batch.categories.remove(&id);
            batch.deleted_categories.insert(id);
        }
    }
}

// Tags (slugs) and variable names (identifiers) never contain a comma, so arrays of them
// travel as comma-joined text: unnest cannot take an array of arrays, and unpacking JSON per
// row costs more than the rest of the insert.
async fn store(tx: &mut PgConnection, batch: Batch) -> Result<(), sqlx::Error> {
    if !batch.prompts.is_empty() {
        let rows: Vec<PromptRow> = batch.prompts.into_values().collect();
        sqlx::query(
            "insert into prompt (prompt_id, tenant_id, name, category_id, description, tags, archived,
                                 latest_version, labels, version, created_at, updated_at)
             select r.prompt_id, r.tenant_id, r.name, r.category_id, r.description,
                    string_to_array(r.tags, ','), r.archived, r.latest_version,
                    r.labels, r.version, r.created_at, r.updated_at
             from unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::bool[],
                         $8::int[], $9::jsonb[], $10::bigint[], $11::timestamptz[], $12::timestamptz[])
                  as r(prompt_id, tenant_id, name, category_id, description, tags, archived,
                       latest_version, labels, version, created_at, updated_at)
             on conflict (prompt_id) do update set
                name = excluded.name, category_id = excluded.category_id, description = excluded.description,
                tags = excluded.tags, archived = excluded.archived, latest_version = excluded.latest_version,
                labels = excluded.labels, version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(rows.iter().map(|r| r.prompt_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.category_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.description.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tags.join(",")).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.archived).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.latest_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.labels.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !batch.versions.is_empty() && batch.versions.len() < COPY_FROM {
        // A command's few versions: one statement.
        let rows = &batch.versions;
        sqlx::query(
            "insert into prompt_version (prompt_id, version, tenant_id, template, variables, model, params,
                                         message, created_at, created_by)
             select r.prompt_id, r.version, r.tenant_id, r.template, string_to_array(r.variables, ','),
                    r.model, r.params, r.message, r.created_at, r.created_by
             from unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                         $8::text[], $9::timestamptz[], $10::text[])
                  as r(prompt_id, version, tenant_id, template, variables, model, params, message,
                       created_at, created_by)",
        )
        .bind(rows.iter().map(|r| r.prompt_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.template.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.variables.join(",")).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.model.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.params.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.message.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_by.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    } else if !batch.versions.is_empty() {
        // Versions are only ever inserted, each exactly once: COPY is the fastest way in for
        // many (a rebuild), but costs two more round trips than one statement.
        let mut copy = tx
            .copy_in_raw(
                "copy prompt_version (prompt_id, version, tenant_id, template, variables, model, params,
                                      message, created_at, created_by) from stdin (format csv)",
            )
            .await?;
        let mut buffer = String::with_capacity(256 * batch.versions.len());
        for row in &batch.versions {
            csv_row(&mut buffer, row);
        }
        copy.send(buffer.as_bytes()).await?;
        copy.finish().await?;
    }
    if !batch.categories.is_empty() {
        let rows: Vec<CategoryRow> = batch.categories.into_values().collect();
        sqlx::query(
            "insert into prompt_category (category_id, tenant_id, name, prompt_count, version, created_at, updated_at)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                                  $6::timestamptz[], $7::timestamptz[])
             on conflict (category_id) do update set
                name = excluded.name, prompt_count = excluded.prompt_count, version = excluded.version,
                updated_at = excluded.updated_at",
        )
        .bind(rows.iter().map(|r| r.category_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.prompt_count).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !batch.deleted_categories.is_empty() {
        let ids: Vec<Uuid> = batch.deleted_categories.into_iter().collect();
        sqlx::query("delete from prompt_category where category_id = any($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_row_is_one_csv_line_with_quotes_doubled_and_absent_values_empty() {
        let row = VersionRow {
            prompt_id: Uuid::nil(),
            version: 3,
            tenant_id: "acme".into(),
            template: "Say \"hi\" to {{name}},\nthen {{topic}}".into(),
            variables: vec!["name".into(), "topic".into()],
            model: None,
            params: Some(serde_json::json!({ "temperature": 0.2 })),
            message: "".into(),
            created_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            created_by: "ops".into(),
        };
        let mut line = String::new();
        csv_row(&mut line, &row);
        assert_eq!(
            line,
            "00000000-0000-0000-0000-000000000000,3,\"acme\",\"Say \"\"hi\"\" to {{name}},\nthen {{topic}}\",\
             \"{name,topic}\",,\"{\"\"temperature\"\":0.2}\",\"\",\"2026-12-01T12:00:00+00:00\",\"ops\"\n"
        );
    }
}
