//! One item of a bulk job: loading its target, planning the change on it, and running the
//! planned command (or its undo) on the target's aggregate at the version it was planned
//! against.

use commands::{AggregateStore, CommandError, CommandMetadata};
use cqrs_es::Aggregate;
use domain::access::ApiKey;
use domain::approval::ProposedChange;
use domain::budget::Budget;
use domain::bulk::operations::{Change, ItemCommand, Plan, Target, TargetKind};
use domain::config::{ConfigEntry, ConfigKey};
use domain::model::{Model, ModelCommand};
use domain::prompt::{Prompt, PromptCommand};
use domain::Governed;
use projections::approval::queries as approvals;
use projections::registry::queries as registry;
use uuid::Uuid;

use crate::state::AppState;

/// A target as loaded for planning: its aggregate id, state and version.
pub struct Loaded {
    pub aggregate_id: String,
    pub version: u64,
    state: State,
}

enum State {
    Prompt(Prompt),
    Model(Model),
    Config { key: ConfigKey, entry: ConfigEntry },
    Budget(Budget),
    Key(ApiKey),
}

/// Why an item could not be carried out.
pub enum ItemFailure {
    /// The item failed: it is reported and (atomic) the job is undone.
    Failed(String),
    /// The database could not be reached: the item is tried again later.
    Unavailable(String),
}

impl<E: std::error::Error> From<CommandError<E>> for ItemFailure {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Unavailable(_) | CommandError::Store(_) | CommandError::Contended => {
                ItemFailure::Unavailable(error.to_string())
            }
            CommandError::NotFound => ItemFailure::Failed("not found".into()),
            other => ItemFailure::Failed(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ItemFailure {
    fn from(error: sqlx::Error) -> Self {
        ItemFailure::Unavailable(error.to_string())
    }
}

/// The aggregate type a kind of target is stored as.
pub fn aggregate_type(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Prompt => Prompt::TYPE,
        TargetKind::Model => Model::TYPE,
        TargetKind::Config => ConfigEntry::TYPE,
        TargetKind::Budget => Budget::TYPE,
        TargetKind::Key => ApiKey::TYPE,
    }
}

/// Loads `target` of `kind` in `tenant`; an id of another tenant is not found.
pub async fn load(
    app: &AppState,
    tenant: &str,
    kind: TargetKind,
    target: &str,
) -> Result<Loaded, ItemFailure> {
    async fn of<A: Governed + 'static>(
        store: &AggregateStore<A>,
        tenant: &str,
        id: &str,
    ) -> Result<(A, u64), ItemFailure>
    where
        A::Command: Clone,
    {
        let (state, version) = store.load(id).await?;
        match state.tenant() {
            Some(owner) if owner == tenant => Ok((state, version)),
            _ => Err(ItemFailure::Failed("not found".into())),
        }
    }
    let uuid = || {
        target
            .parse::<Uuid>()
            .map(|id| id.to_string())
            .map_err(|_| ItemFailure::Failed("not found: not an id".into()))
    };
    let (aggregate_id, version, state) = match kind {
        TargetKind::Prompt => {
            let id = uuid()?;
            let (prompt, version) = of(&app.prompts, tenant, &id).await?;
            (id, version, State::Prompt(prompt))
        }
        TargetKind::Model => {
            let id = uuid()?;
            let (model, version) = of(&app.models, tenant, &id).await?;
            (id, version, State::Model(model))
        }
        TargetKind::Budget => {
            let id = uuid()?;
            let (budget, version) = of(&app.budgets, tenant, &id).await?;
            (id, version, State::Budget(budget))
        }
        TargetKind::Key => {
            let id = uuid()?;
            let (key, version) = of(&app.keys, tenant, &id).await?;
            (id, version, State::Key(key))
        }
        TargetKind::Config => {
            let key = ConfigKey::parse("target", target).map_err(|e| ItemFailure::Failed(e.to_string()))?;
            let id = key.aggregate_id(tenant);
            // A key never written is there to be set: its aggregate id is the tenant's own.
            let (entry, version) = app.config.load(&id).await?;
            (id, version, State::Config { key, entry })
        }
    };
    Ok(Loaded {
        aggregate_id,
        version,
        state,
    })
}

/// Plans `change` on a loaded target: what to run and how to undo it, or why not.
pub async fn plan(
    app: &AppState,
    tenant: &str,
    change: &Change,
    loaded: &Loaded,
) -> Result<Plan, ItemFailure> {
    let target = match &loaded.state {
        State::Prompt(prompt) => Target::Prompt(prompt),
        State::Model(model) => Target::Model(model),
        State::Config { key, entry } => Target::Config { tenant, key, entry },
        State::Budget(budget) => Target::Budget(budget),
        State::Key(key) => Target::Key(key),
    };
    let mut plan = change.plan(target).map_err(ItemFailure::Failed)?;
    if let Plan::Apply { command, .. } = &mut plan {
        if let Some(scope) = protected(app, tenant, loaded, command).await? {
            return Err(ItemFailure::Failed(format!(
                "{scope} is protected: a change to it needs a change request and another key's approval"
            )));
        }
        if let (
            ItemCommand::Model(ModelCommand::DeprecateModel { still_referenced, .. }),
            State::Model(model),
        ) = (command, &loaded.state)
        {
            *still_referenced = registry::still_referencing(&app.pool, tenant, &model.reference).await?;
        }
    }
    Ok(plan)
}

/// The protected scope an item's command would change, if any: a bulk job never bypasses
/// four-eyes approval.
async fn protected(
    app: &AppState,
    tenant: &str,
    loaded: &Loaded,
    command: &ItemCommand,
) -> Result<Option<String>, sqlx::Error> {
    let prompt = || loaded.aggregate_id.parse::<Uuid>().ok();
    let change = match (command, &loaded.state) {
        (ItemCommand::Config(domain::config::ConfigCommand::SetValue { key, value, .. }), _) => {
            Some(ProposedChange::SetConfig {
                key: key.as_ref().to_string(),
                value: value.clone(),
            })
        }
        (ItemCommand::Config(domain::config::ConfigCommand::ClearValue), State::Config { key, .. }) => {
            Some(ProposedChange::ClearConfig {
                key: key.as_ref().to_string(),
            })
        }
        (ItemCommand::Prompt(PromptCommand::MovePromptLabel { label, version }), _) => {
            prompt().map(|prompt| ProposedChange::MovePromptLabel {
                prompt,
                label: label.to_string(),
                version: *version,
            })
        }
        (ItemCommand::Prompt(PromptCommand::RemovePromptLabel { label }), _) => {
            prompt().map(|prompt| ProposedChange::RemovePromptLabel {
                prompt,
                label: label.to_string(),
            })
        }
        _ => None,
    };
    let Some(change) = change else {
        return Ok(None);
    };
    Ok(approvals::protecting(&app.pool, tenant, &change)
        .await?
        .map(|scope| scope.text()))
}

/// Runs `command` on the aggregate `aggregate_id`, which must still be at `expected`;
/// returns the version after it.
pub async fn run(
    app: &AppState,
    aggregate_id: &str,
    command: ItemCommand,
    expected: u64,
    metadata: &CommandMetadata,
) -> Result<u64, ItemFailure> {
    let expected = Some(expected);
    let version = match command {
        ItemCommand::Prompt(command) => {
            app.prompts
                .execute(aggregate_id, command, expected, metadata)
                .await?
                .version
        }
        ItemCommand::Model(command) => {
            app.models
                .execute(aggregate_id, command, expected, metadata)
                .await?
                .version
        }
        ItemCommand::Config(command) => {
            app.config
                .execute(aggregate_id, command, expected, metadata)
                .await?
                .version
        }
        ItemCommand::Budget(command) => {
            app.budgets
                .execute(aggregate_id, command, expected, metadata)
                .await?
                .version
        }
        ItemCommand::Key(command) => {
            app.keys
                .execute(aggregate_id, command, expected, metadata)
                .await?
                .version
        }
    };
    Ok(version)
}
