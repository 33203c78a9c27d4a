//! Every prompt's labels and the versions they point at, in this process's memory and kept
//! current from the event log ([`crate::live`]): what `resolve` answers from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::prompt::Prompt;
use eventlog::StoredEvent;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::queries::Resolved;
use crate::live::{self, LiveView};

/// One prompt's labels, at its `version`.
struct Labels {
    tenant: String,
    version: i64,
    resolved: HashMap<String, Arc<Resolved>>,
}

/// The process's prompt labels. Cloning shares them.
#[derive(Clone, Default)]
pub struct LiveLabels {
    prompts: Arc<RwLock<HashMap<Uuid, Labels>>>,
    followed: live::Followed,
}

/// A prompt with one of its labels (or none) and the version it points at.
#[derive(sqlx::FromRow)]
struct LabelRow {
    prompt_id: Uuid,
    tenant_id: String,
    prompt_version: i64,
    label: Option<String>,
    version: Option<i32>,
    template: Option<String>,
    variables: Option<Vec<String>>,
    model: Option<String>,
    params: Option<Value>,
}

/// Every prompt (or one) with each of its labels; a prompt without labels comes once with
/// none, so that its version is known.
const LABELS: &str =
    "select p.prompt_id, p.tenant_id, p.version as prompt_version, l.label, v.version, v.template,
        v.variables, v.model, v.params
     from prompt p
     left join lateral jsonb_each_text(p.labels) as l(label, version) on true
     left join prompt_version v on v.prompt_id = p.prompt_id and v.version = l.version::int
     where $1::uuid is null or p.prompt_id = $1";

impl LiveLabels {
    /// Loads every prompt's labels and follows the log from there, woken by `appended`.
    pub async fn start(pool: PgPool, appended: watch::Receiver<u64>) -> Result<Self, sqlx::Error> {
        let live = Self::default();
        let cursor = live::start_cursor(&pool).await?;
        live.load(&pool, None).await?;
        live::follow(
            Arc::new(live.clone()),
            pool,
            cursor,
            appended,
            live.followed.clone(),
        );
        Ok(live)
    }

    /// How far this view has read the log.
    pub fn followed(&self) -> &live::Followed {
        &self.followed
    }

    /// What `label` of `tenant`'s prompt points at, as far as this process knows.
    pub fn resolve(&self, tenant: &str, prompt: Uuid, label: &str) -> Option<Arc<Resolved>> {
        let prompts = self
            .prompts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        prompts
            .get(&prompt)
            .filter(|labels| labels.tenant == tenant)
            .and_then(|labels| labels.resolved.get(label).cloned())
    }

    /// Reads `prompt`'s labels from the read model again: after a change this process made,
    /// or an event of it in the log.
    pub async fn refresh(&self, pool: &PgPool, prompt: Uuid) -> Result<(), sqlx::Error> {
        self.load(pool, Some(prompt)).await
    }

    async fn load(&self, pool: &PgPool, prompt: Option<Uuid>) -> Result<(), sqlx::Error> {
        let rows: Vec<LabelRow> = sqlx::query_as(LABELS).bind(prompt).fetch_all(pool).await?;
        let mut read: HashMap<Uuid, Labels> = HashMap::new();
        for row in rows {
            let labels = read.entry(row.prompt_id).or_insert_with(|| Labels {
                tenant: row.tenant_id.clone(),
                version: row.prompt_version,
                resolved: HashMap::new(),
            });
            let (Some(label), Some(version), Some(template)) = (row.label, row.version, row.template) else {
                continue;
            };
            let resolved = Resolved {
                prompt_id: row.prompt_id,
                label: label.clone(),
                version,
                template,
                variables: row.variables.unwrap_or_default(),
                model: row.model,
                params: row.params,
            };
            labels.resolved.insert(label, Arc::new(resolved));
        }
        let mut prompts = self
            .prompts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, labels) in read {
            // A read older than what is held (a refresh racing another) changes nothing.
            if prompts.get(&id).is_none_or(|held| held.version <= labels.version) {
                prompts.insert(id, labels);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LiveView for LiveLabels {
    fn name(&self) -> &'static str {
        "prompt labels"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Prompt::TYPE]
    }

    async fn apply(&self, pool: &PgPool, event: &StoredEvent) -> Result<(), sqlx::Error> {
        if !matches!(
            event.event_type.as_str(),
            "PromptLabelMoved" | "PromptLabelRemoved"
        ) {
            return Ok(());
        }
        let held = {
            let prompts = self
                .prompts
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            event
                .aggregate_id
                .parse::<Uuid>()
                .ok()
                .map(|id| (id, prompts.get(&id).map_or(0, |labels| labels.version)))
        };
        match held {
            Some((id, version)) if version < event.sequence => self.refresh(pool, id).await,
            _ => Ok(()),
        }
    }
}
