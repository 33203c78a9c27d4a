//! The operations a bulk job can apply: each is a [`Change`] with its parameters, names the
//! kind of target it applies to and the permission it needs, and plans one item from the
//! target's current state: the command to run and the change that undoes it, or why there
//! is nothing to do.
//!
//! An undo is itself a `Change`, planned against the state the item left: compensating an
//! item is applying its undo. A new operation is a variant here, an entry in
//! [`catalogue`], and a `plan` arm; its target kind decides which aggregate runs it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::access::{ApiKey, ApiKeyCommand, Permission, RateLimit};
use crate::budget::{parse_thresholds, Budget, BudgetCommand, Enforcement};
use crate::config::{ConfigCommand, ConfigEntry, ConfigKey};
use crate::fields::Invalid;
use crate::model::{Model, ModelCommand, ModelRef, ModelStatus, Price};
use crate::money::{Amount, Currency};
use crate::prompt::{parse_note, Prompt, PromptCommand, MAX_DESCRIPTION_CHARS, MAX_TAGS};
use crate::text::{InvalidText, Slug};

/// What a bulk job's targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A prompt's id.
    Prompt,
    /// A model's id.
    Model,
    /// A configuration key.
    Config,
    /// A budget's id.
    Budget,
    /// An API key's id.
    Key,
}

/// A version a label is moved to: a number, or the prompt's latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelVersion {
    Number(u32),
    Named(String),
}

/// One operation with its parameters; the JSON form is `{"operation": …, "params": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "operation", content = "params", deny_unknown_fields)]
pub enum Change {
    #[serde(rename = "prompt.tag")]
    PromptTag { tags: Vec<String> },
    #[serde(rename = "prompt.untag")]
    PromptUntag { tags: Vec<String> },
    #[serde(rename = "prompt.archive")]
    PromptArchive {},
    #[serde(rename = "prompt.restore")]
    PromptRestore {},
    #[serde(rename = "prompt.move_category")]
    PromptMoveCategory { category: Option<Uuid> },
    #[serde(rename = "prompt.move_label")]
    PromptMoveLabel { label: String, version: LabelVersion },
    #[serde(rename = "prompt.remove_label")]
    PromptRemoveLabel { label: String },
    #[serde(rename = "prompt.set_description")]
    PromptSetDescription { description: String },
    #[serde(rename = "model.activate")]
    ModelActivate {},
    #[serde(rename = "model.deactivate")]
    ModelDeactivate {},
    /// The replacement as the registry names it; the API resolves what the client named.
    #[serde(rename = "model.deprecate")]
    ModelDeprecate {
        #[serde(default)]
        replacement: Option<ModelRef>,
    },
    #[serde(rename = "model.set_price")]
    ModelSetPrice {
        effective_from: String,
        input_per_mtok: String,
        output_per_mtok: String,
        #[serde(default)]
        cached_input_per_mtok: Option<String>,
        currency: String,
    },
    #[serde(rename = "model.withdraw_price")]
    ModelWithdrawPrice { effective_from: String },
    #[serde(rename = "model.set_default_params")]
    ModelSetDefaultParams { default_params: Option<Value> },
    #[serde(rename = "config.set")]
    ConfigSet { value: Value },
    #[serde(rename = "config.clear")]
    ConfigClear {},
    #[serde(rename = "budget.change_amount")]
    BudgetChangeAmount { amount: String },
    #[serde(rename = "budget.change_thresholds")]
    BudgetChangeThresholds { thresholds: Vec<u32> },
    #[serde(rename = "budget.change_enforcement")]
    BudgetChangeEnforcement { enforcement: String },
    #[serde(rename = "key.revoke")]
    KeyRevoke {},
    #[serde(rename = "key.set_rate_limit")]
    KeySetRateLimit { requests_per_second: f64, burst: u32 },
    #[serde(rename = "key.clear_rate_limit")]
    KeyClearRateLimit {},
}

/// An operation as `GET /v1/bulk/operations` describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationSpec {
    pub operation: &'static str,
    pub target: TargetKind,
    pub description: &'static str,
    /// Whether an applied item can be undone; an atomic job may only use reversible ones.
    pub reversible: bool,
    /// The role permission each item needs.
    pub permission: &'static str,
    /// JSON Schema of `params`.
    pub params: Value,
    /// Parameters that pass, for the documentation and the catalogue's own test.
    pub example: Value,
}

fn spec(
    operation: &'static str,
    target: TargetKind,
    description: &'static str,
    params: Value,
    example: Value,
) -> OperationSpec {
    let change = Change::parse(operation, &example);
    let (reversible, permission) = match &change {
        Ok(change) => (change.reversible(), permission_name(change.permission())),
        Err(_) => (false, "unknown"),
    };
    OperationSpec {
        operation,
        target,
        description,
        reversible,
        permission,
        params,
        example,
    }
}

fn permission_name(permission: Permission) -> &'static str {
    match permission {
        Permission::Write => "write",
        Permission::ManageRegistry => "manage_registry",
        Permission::ManageBudgets => "manage_budgets",
        Permission::ManageKeys => "manage_keys",
        _ => "admin",
    }
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// Every operation, with its parameters' JSON Schema.
pub fn catalogue() -> Vec<OperationSpec> {
    use TargetKind::*;
    let none = || object(json!({}), &[]);
    let tags = || {
        object(
            json!({"tags": {"type": "array", "minItems": 1, "maxItems": MAX_TAGS,
                             "items": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}}}),
            &["tags"],
        )
    };
    let amount = json!({"type": "string", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,10})?$"});
    let currency = json!({"type": "string", "pattern": "^[A-Z]{3}$"});
    vec![
        spec(
            "prompt.tag",
            Prompt,
            "Add tags to each prompt",
            tags(),
            json!({"tags": ["reviewed"]}),
        ),
        spec(
            "prompt.untag",
            Prompt,
            "Remove tags from each prompt",
            tags(),
            json!({"tags": ["draft"]}),
        ),
        spec("prompt.archive", Prompt, "Archive each prompt", none(), json!({})),
        spec(
            "prompt.restore",
            Prompt,
            "Restore each archived prompt",
            none(),
            json!({}),
        ),
        spec(
            "prompt.move_category",
            Prompt,
            "Move each prompt to a category (null: to none)",
            object(
                json!({"category": {"type": ["string", "null"], "format": "uuid"}}),
                &["category"],
            ),
            json!({"category": null}),
        ),
        spec(
            "prompt.move_label",
            Prompt,
            "Point a label of each prompt at a version, or at its latest (\"latest\")",
            object(
                json!({"label": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
                       "version": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "latest"}]}}),
                &["label", "version"],
            ),
            json!({"label": "production", "version": "latest"}),
        ),
        spec(
            "prompt.remove_label",
            Prompt,
            "Remove a label from each prompt",
            object(
                json!({"label": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}}),
                &["label"],
            ),
            json!({"label": "canary"}),
        ),
        spec(
            "prompt.set_description",
            Prompt,
            "Set each prompt's description",
            object(
                json!({"description": {"type": "string", "maxLength": MAX_DESCRIPTION_CHARS}}),
                &["description"],
            ),
            json!({"description": "Owned by the support team"}),
        ),
        spec("model.activate", Model, "Activate each model", none(), json!({})),
        spec(
            "model.deactivate",
            Model,
            "Deactivate each model",
            none(),
            json!({}),
        ),
        spec(
            "model.deprecate",
            Model,
            "Deprecate each model, naming its replacement (a model's id or reference)",
            object(json!({"replacement": {"type": ["string", "null"]}}), &[]),
            json!({}),
        ),
        spec(
            "model.set_price",
            Model,
            "Append a price period to each model (undone by withdrawing it)",
            object(
                json!({"effective_from": {"type": "string", "format": "date-time"},
                       "input_per_mtok": amount, "output_per_mtok": amount,
                       "cached_input_per_mtok": {"type": ["string", "null"], "pattern": r"^[0-9]{1,10}(\.[0-9]{1,10})?$"},
                       "currency": currency}),
                &["effective_from", "input_per_mtok", "output_per_mtok", "currency"],
            ),
            json!({"effective_from": "2030-01-01T00:00:00Z", "input_per_mtok": "0.15",
                   "output_per_mtok": "0.6", "currency": "USD"}),
        ),
        spec(
            "model.withdraw_price",
            Model,
            "Withdraw each model's last price period, the one starting at effective_from",
            object(
                json!({"effective_from": {"type": "string", "format": "date-time"}}),
                &["effective_from"],
            ),
            json!({"effective_from": "2030-01-01T00:00:00Z"}),
        ),
        spec(
            "model.set_default_params",
            Model,
            "Set each model's default parameters (null: none)",
            object(
                json!({"default_params": {"type": ["object", "null"]}}),
                &["default_params"],
            ),
            json!({"default_params": {"temperature": 0.2}}),
        ),
        spec(
            "config.set",
            Config,
            "Set each configuration key to a value (checked against the key's schema)",
            object(json!({"value": {}}), &["value"]),
            json!({"value": 100}),
        ),
        spec(
            "config.clear",
            Config,
            "Clear each configuration key's value",
            none(),
            json!({}),
        ),
        spec(
            "budget.change_amount",
            Budget,
            "Set each budget's amount",
            object(json!({"amount": amount}), &["amount"]),
            json!({"amount": "500"}),
        ),
        spec(
            "budget.change_thresholds",
            Budget,
            "Set each budget's warning thresholds (percent of the amount)",
            object(
                json!({"thresholds": {"type": "array", "maxItems": 10,
                                      "items": {"type": "integer", "minimum": 1, "maximum": 1000}}}),
                &["thresholds"],
            ),
            json!({"thresholds": [50, 80, 100]}),
        ),
        spec(
            "budget.change_enforcement",
            Budget,
            "Make each budget soft (warn) or hard (refuse)",
            object(
                json!({"enforcement": {"enum": ["soft", "hard"]}}),
                &["enforcement"],
            ),
            json!({"enforcement": "hard"}),
        ),
        spec(
            "key.revoke",
            Key,
            "Revoke each API key (not reversible)",
            none(),
            json!({}),
        ),
        spec(
            "key.set_rate_limit",
            Key,
            "Give each API key its own rate limit",
            object(
                json!({"requests_per_second": {"type": "number", "exclusiveMinimum": 0, "maximum": RateLimit::MAX},
                       "burst": {"type": "integer", "minimum": 1, "maximum": RateLimit::MAX}}),
                &["requests_per_second", "burst"],
            ),
            json!({"requests_per_second": 5, "burst": 10}),
        ),
        spec(
            "key.clear_rate_limit",
            Key,
            "Return each API key to the server's default rate limit",
            none(),
            json!({}),
        ),
    ]
}

/// The target an item's change is planned against, in its current state.
pub enum Target<'a> {
    Prompt(&'a Prompt),
    Model(&'a Model),
    Config {
        tenant: &'a str,
        key: &'a ConfigKey,
        entry: &'a ConfigEntry,
    },
    Budget(&'a Budget),
    Key(&'a ApiKey),
}

/// The command an item runs, on the aggregate its target kind names.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemCommand {
    Prompt(PromptCommand),
    Model(ModelCommand),
    Config(ConfigCommand),
    Budget(BudgetCommand),
    Key(ApiKeyCommand),
}

/// What an item does to its target.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per item in flight: never stored in bulk
pub enum Plan {
    /// Nothing to change: the target is already so.
    Skip(String),
    /// Run `command`; `undo` (if the operation can be undone) puts the target back.
    Apply {
        command: ItemCommand,
        undo: Option<Change>,
    },
}

/// Why an item cannot be applied to its target.
pub type ItemError = String;

impl Change {
    /// `operation` with `params`, every invalid parameter reported at once (as
    /// `params.<name>`).
    pub fn parse(operation: &str, params: &Value) -> Result<Self, Invalid> {
        if !catalogue_names().contains(&operation) {
            return Err(Invalid::field(
                "operation",
                "must be one of the operations GET /v1/bulk/operations lists",
            ));
        }
        let change: Change = serde_json::from_value(json!({"operation": operation, "params": params}))
            .map_err(|error| Invalid::field("params", format!("do not fit the operation: {error}")))?;
        change.validate()?;
        Ok(change)
    }

    pub fn operation(&self) -> &'static str {
        match self {
            Self::PromptTag { .. } => "prompt.tag",
            Self::PromptUntag { .. } => "prompt.untag",
            Self::PromptArchive {} => "prompt.archive",
            Self::PromptRestore {} => "prompt.restore",
            Self::PromptMoveCategory { .. } => "prompt.move_category",
            Self::PromptMoveLabel { .. } => "prompt.move_label",
            Self::PromptRemoveLabel { .. } => "prompt.remove_label",
            Self::PromptSetDescription { .. } => "prompt.set_description",
            Self::ModelActivate {} => "model.activate",
            Self::ModelDeactivate {} => "model.deactivate",
            Self::ModelDeprecate { .. } => "model.deprecate",
            Self::ModelSetPrice { .. } => "model.set_price",
            Self::ModelWithdrawPrice { .. } => "model.withdraw_price",
            Self::ModelSetDefaultParams { .. } => "model.set_default_params",
            Self::ConfigSet { .. } => "config.set",
            Self::ConfigClear {} => "config.clear",
            Self::BudgetChangeAmount { .. } => "budget.change_amount",
            Self::BudgetChangeThresholds { .. } => "budget.change_thresholds",
            Self::BudgetChangeEnforcement { .. } => "budget.change_enforcement",
            Self::KeyRevoke {} => "key.revoke",
            Self::KeySetRateLimit { .. } => "key.set_rate_limit",
            Self::KeyClearRateLimit {} => "key.clear_rate_limit",
        }
    }

    /// The parameters as stored with the job.
    pub fn params(&self) -> Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value.get("params").cloned())
            .unwrap_or_else(|| json!({}))
    }

    pub fn target_kind(&self) -> TargetKind {
        match self {
            Self::PromptTag { .. }
            | Self::PromptUntag { .. }
            | Self::PromptArchive {}
            | Self::PromptRestore {}
            | Self::PromptMoveCategory { .. }
            | Self::PromptMoveLabel { .. }
            | Self::PromptRemoveLabel { .. }
            | Self::PromptSetDescription { .. } => TargetKind::Prompt,
            Self::ModelActivate {}
            | Self::ModelDeactivate {}
            | Self::ModelDeprecate { .. }
            | Self::ModelSetPrice { .. }
            | Self::ModelWithdrawPrice { .. }
            | Self::ModelSetDefaultParams { .. } => TargetKind::Model,
            Self::ConfigSet { .. } | Self::ConfigClear {} => TargetKind::Config,
            Self::BudgetChangeAmount { .. }
            | Self::BudgetChangeThresholds { .. }
            | Self::BudgetChangeEnforcement { .. } => TargetKind::Budget,
            Self::KeyRevoke {} | Self::KeySetRateLimit { .. } | Self::KeyClearRateLimit {} => TargetKind::Key,
        }
    }

    pub fn permission(&self) -> Permission {
        match self.target_kind() {
            TargetKind::Prompt | TargetKind::Config => Permission::Write,
            TargetKind::Model => Permission::ManageRegistry,
            TargetKind::Budget => Permission::ManageBudgets,
            TargetKind::Key => Permission::ManageKeys,
        }
    }

    /// Whether an applied item can be undone: a revoked key stays revoked.
    pub fn reversible(&self) -> bool {
        !matches!(self, Self::KeyRevoke {})
    }

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        let mut check = |result: Result<(), InvalidText>| {
            if let Err(error) = result {
                invalid.push(error);
            }
        };
        match self {
            Self::PromptTag { tags } | Self::PromptUntag { tags } => check(parse_tags(tags).map(drop)),
            Self::PromptMoveLabel { label, version } => {
                check(Slug::parse("params.label", label).map(drop));
                check(match version {
                    LabelVersion::Number(0) => Err(InvalidText::new("params.version", "must be at least 1")),
                    LabelVersion::Named(name) if name != "latest" => Err(InvalidText::new(
                        "params.version",
                        "must be a version number or \"latest\"",
                    )),
                    _ => Ok(()),
                });
            }
            Self::PromptRemoveLabel { label } => check(Slug::parse("params.label", label).map(drop)),
            Self::PromptSetDescription { description } => {
                check(parse_note("params.description", description, MAX_DESCRIPTION_CHARS).map(drop));
            }
            Self::ModelSetPrice { .. } => {
                if let Err(errors) = self.price() {
                    invalid.extend(errors);
                }
            }
            Self::ModelWithdrawPrice { effective_from } => {
                check(parse_effective_from(effective_from).map(drop))
            }
            Self::ModelSetDefaultParams { default_params } => {
                check(crate::prompt::parse_params("params.default_params", default_params.clone()).map(drop))
            }
            Self::BudgetChangeAmount { amount } => check(Amount::parse("params.amount", amount).map(drop)),
            Self::BudgetChangeThresholds { thresholds } => {
                check(parse_thresholds("params.thresholds", thresholds).map(drop));
            }
            Self::BudgetChangeEnforcement { enforcement } => {
                check(Enforcement::parse("params.enforcement", enforcement).map(drop));
            }
            Self::KeySetRateLimit {
                requests_per_second,
                burst,
            } => check(RateLimit::new(*requests_per_second, *burst).map(drop)),
            Self::PromptArchive {}
            | Self::PromptRestore {}
            | Self::PromptMoveCategory { .. }
            | Self::ModelActivate {}
            | Self::ModelDeactivate {}
            | Self::ModelDeprecate { .. }
            | Self::ConfigSet { .. }
            | Self::ConfigClear {}
            | Self::KeyRevoke {}
            | Self::KeyClearRateLimit {} => {}
        }
        invalid.into_result()
    }

    fn price(&self) -> Result<(DateTime<Utc>, Price), Invalid> {
        let Self::ModelSetPrice {
            effective_from,
            input_per_mtok,
            output_per_mtok,
            cached_input_per_mtok,
            currency,
        } = self
        else {
            return Err(Invalid::field("operation", "is not model.set_price"));
        };
        let effective_from = parse_effective_from(effective_from);
        let cached = cached_input_per_mtok
            .as_deref()
            .map(|text| Amount::parse("params.cached_input_per_mtok", text))
            .transpose();
        let (effective_from, input_per_mtok, output_per_mtok, cached_input_per_mtok, currency) =
            crate::fields::AllValid::all_valid((
                effective_from,
                Amount::parse("params.input_per_mtok", input_per_mtok),
                Amount::parse("params.output_per_mtok", output_per_mtok),
                cached,
                Currency::parse("params.currency", currency),
            ))?;
        Ok((
            effective_from,
            Price {
                input_per_mtok,
                output_per_mtok,
                cached_input_per_mtok,
                currency,
            },
        ))
    }

    /// Plans this change on `target` in its current state. An error is the item's failure.
    pub fn plan(&self, target: Target<'_>) -> Result<Plan, ItemError> {
        match target {
            Target::Prompt(prompt) => self.plan_prompt(prompt),
            Target::Model(model) => self.plan_model(model),
            Target::Config { tenant, key, entry } => self.plan_config(tenant, key, entry),
            Target::Budget(budget) => self.plan_budget(budget),
            Target::Key(key) => self.plan_key(key),
        }
    }

    fn plan_prompt(&self, prompt: &Prompt) -> Result<Plan, ItemError> {
        let apply = |command, undo| {
            Ok(Plan::Apply {
                command: ItemCommand::Prompt(command),
                undo: Some(undo),
            })
        };
        match self {
            Self::PromptTag { tags } => {
                let added: Vec<String> = tags
                    .iter()
                    .filter(|t| !prompt.tags.contains(*t))
                    .cloned()
                    .collect();
                if added.is_empty() {
                    return Ok(Plan::Skip("already has every tag".into()));
                }
                apply(
                    PromptCommand::TagPrompt {
                        tags: parse_tags(&added).map_err(|e| e.to_string())?,
                    },
                    Self::PromptUntag { tags: added },
                )
            }
            Self::PromptUntag { tags } => {
                let removed: Vec<String> = tags
                    .iter()
                    .filter(|t| prompt.tags.contains(*t))
                    .cloned()
                    .collect();
                if removed.is_empty() {
                    return Ok(Plan::Skip("has none of the tags".into()));
                }
                apply(
                    PromptCommand::UntagPrompt {
                        tags: parse_tags(&removed).map_err(|e| e.to_string())?,
                    },
                    Self::PromptTag { tags: removed },
                )
            }
            Self::PromptArchive {} if prompt.archived => Ok(Plan::Skip("already archived".into())),
            Self::PromptArchive {} => apply(PromptCommand::ArchivePrompt, Self::PromptRestore {}),
            Self::PromptRestore {} if !prompt.archived => Ok(Plan::Skip("not archived".into())),
            Self::PromptRestore {} => apply(PromptCommand::RestorePrompt, Self::PromptArchive {}),
            Self::PromptMoveCategory { category } if prompt.category == *category => {
                Ok(Plan::Skip("already in the category".into()))
            }
            Self::PromptMoveCategory { category } => apply(
                PromptCommand::MovePromptToCategory { category: *category },
                Self::PromptMoveCategory {
                    category: prompt.category,
                },
            ),
            Self::PromptMoveLabel { label, version } => {
                let version = match version {
                    LabelVersion::Number(number) => *number,
                    LabelVersion::Named(_) => prompt.latest_version,
                };
                if version == 0 || version > prompt.latest_version {
                    return Err(format!("the prompt has no version {version}"));
                }
                let previous = prompt.labels.get(label).copied();
                if previous == Some(version) {
                    return Ok(Plan::Skip(format!("{label} already points at version {version}")));
                }
                let undo = match previous {
                    Some(previous) => Self::PromptMoveLabel {
                        label: label.clone(),
                        version: LabelVersion::Number(previous),
                    },
                    None => Self::PromptRemoveLabel { label: label.clone() },
                };
                let label = Slug::parse("params.label", label).map_err(|e| e.to_string())?;
                apply(PromptCommand::MovePromptLabel { label, version }, undo)
            }
            Self::PromptRemoveLabel { label } => {
                let Some(previous) = prompt.labels.get(label).copied() else {
                    return Ok(Plan::Skip(format!("has no label {label}")));
                };
                let undo = Self::PromptMoveLabel {
                    label: label.clone(),
                    version: LabelVersion::Number(previous),
                };
                let label = Slug::parse("params.label", label).map_err(|e| e.to_string())?;
                apply(PromptCommand::RemovePromptLabel { label }, undo)
            }
            Self::PromptSetDescription { description } if prompt.description == *description => {
                Ok(Plan::Skip("already has this description".into()))
            }
            Self::PromptSetDescription { description } => apply(
                PromptCommand::UpdatePromptMetadata {
                    name: None,
                    description: Some(description.clone()),
                },
                Self::PromptSetDescription {
                    description: prompt.description.clone(),
                },
            ),
            _ => Err(self.wrong_target()),
        }
    }

    fn plan_model(&self, model: &Model) -> Result<Plan, ItemError> {
        let back = match model.status {
            ModelStatus::Active => Self::ModelActivate {},
            ModelStatus::Inactive => Self::ModelDeactivate {},
            ModelStatus::Deprecated => Self::ModelDeprecate {
                replacement: model.replacement.clone(),
            },
        };
        let apply = |command| {
            Ok(Plan::Apply {
                command: ItemCommand::Model(command),
                undo: Some(back.clone()),
            })
        };
        match self {
            Self::ModelActivate {} if model.status == ModelStatus::Active => {
                Ok(Plan::Skip("already active".into()))
            }
            Self::ModelActivate {} => apply(ModelCommand::ActivateModel),
            Self::ModelDeactivate {} if model.status == ModelStatus::Inactive => {
                Ok(Plan::Skip("already inactive".into()))
            }
            Self::ModelDeactivate {} => apply(ModelCommand::DeactivateModel),
            Self::ModelDeprecate { replacement }
                if model.status == ModelStatus::Deprecated && model.replacement == *replacement =>
            {
                Ok(Plan::Skip("already deprecated".into()))
            }
            Self::ModelDeprecate { replacement } => apply(ModelCommand::DeprecateModel {
                replacement: replacement.clone(),
                still_referenced: Vec::new(),
            }),
            Self::ModelSetPrice {
                effective_from: start,
                ..
            } => {
                let (effective_from, price) = self.price().map_err(|e| e.to_string())?;
                Ok(Plan::Apply {
                    command: ItemCommand::Model(ModelCommand::SetPrice {
                        effective_from,
                        price,
                    }),
                    undo: Some(Self::ModelWithdrawPrice {
                        effective_from: start.clone(),
                    }),
                })
            }
            Self::ModelWithdrawPrice { effective_from } => {
                let effective_from = parse_effective_from(effective_from).map_err(|e| e.to_string())?;
                let Some(last) = model.prices.last() else {
                    return Ok(Plan::Skip("has no price period".into()));
                };
                if last.effective_from != effective_from {
                    if model.prices.iter().any(|p| p.effective_from == effective_from) {
                        return Err("only the last price period can be withdrawn".into());
                    }
                    return Ok(Plan::Skip("no price period starts then".into()));
                }
                let price = &last.price;
                Ok(Plan::Apply {
                    command: ItemCommand::Model(ModelCommand::WithdrawPrice { effective_from }),
                    undo: Some(Self::ModelSetPrice {
                        effective_from: effective_from.to_rfc3339(),
                        input_per_mtok: price.input_per_mtok.to_string(),
                        output_per_mtok: price.output_per_mtok.to_string(),
                        cached_input_per_mtok: price.cached_input_per_mtok.as_ref().map(ToString::to_string),
                        currency: price.currency.as_ref().to_string(),
                    }),
                })
            }
            Self::ModelSetDefaultParams { default_params } => {
                let default_params =
                    crate::prompt::parse_params("params.default_params", default_params.clone())
                        .map_err(|e| e.to_string())?;
                if default_params == model.default_params {
                    return Ok(Plan::Skip("already has these default parameters".into()));
                }
                Ok(Plan::Apply {
                    command: ItemCommand::Model(ModelCommand::SetDefaultParams { default_params }),
                    undo: Some(Self::ModelSetDefaultParams {
                        default_params: model.default_params.clone(),
                    }),
                })
            }
            _ => Err(self.wrong_target()),
        }
    }

    fn plan_config(&self, tenant: &str, key: &ConfigKey, entry: &ConfigEntry) -> Result<Plan, ItemError> {
        let back = match &entry.value {
            Some(value) => Self::ConfigSet { value: value.clone() },
            None => Self::ConfigClear {},
        };
        let apply = |command| {
            Ok(Plan::Apply {
                command: ItemCommand::Config(command),
                undo: Some(back.clone()),
            })
        };
        match self {
            Self::ConfigSet { value } if entry.value.as_ref() == Some(value) => {
                Ok(Plan::Skip("already has this value".into()))
            }
            Self::ConfigSet { value } => apply(ConfigCommand::SetValue {
                tenant: tenant.to_string(),
                key: key.clone(),
                value: value.clone(),
            }),
            Self::ConfigClear {} if entry.value.is_none() => Ok(Plan::Skip("has no value".into())),
            Self::ConfigClear {} => apply(ConfigCommand::ClearValue),
            _ => Err(self.wrong_target()),
        }
    }

    fn plan_budget(&self, budget: &Budget) -> Result<Plan, ItemError> {
        let Some(terms) = &budget.terms else {
            return Err("no such budget".into());
        };
        let change = |amount, thresholds, enforcement| BudgetCommand::ChangeBudget {
            name: None,
            amount,
            currency: None,
            thresholds,
            enforcement,
        };
        let (command, undo, unchanged) = match self {
            Self::BudgetChangeAmount { amount } => {
                let amount = Amount::parse("params.amount", amount).map_err(|e| e.to_string())?;
                (
                    change(Some(amount), None, None),
                    Self::BudgetChangeAmount {
                        amount: terms.amount.to_string(),
                    },
                    amount == terms.amount,
                )
            }
            Self::BudgetChangeThresholds { thresholds } => {
                let thresholds =
                    parse_thresholds("params.thresholds", thresholds).map_err(|e| e.to_string())?;
                let unchanged = thresholds == terms.thresholds;
                (
                    change(None, Some(thresholds), None),
                    Self::BudgetChangeThresholds {
                        thresholds: terms.thresholds.clone(),
                    },
                    unchanged,
                )
            }
            Self::BudgetChangeEnforcement { enforcement } => {
                let enforcement =
                    Enforcement::parse("params.enforcement", enforcement).map_err(|e| e.to_string())?;
                (
                    change(None, None, Some(enforcement)),
                    Self::BudgetChangeEnforcement {
                        enforcement: terms.enforcement.as_str().to_string(),
                    },
                    enforcement == terms.enforcement,
                )
            }
            _ => return Err(self.wrong_target()),
        };
        if unchanged {
            return Ok(Plan::Skip("already so".into()));
        }
        Ok(Plan::Apply {
            command: ItemCommand::Budget(command),
            undo: Some(undo),
        })
    }

    fn plan_key(&self, key: &ApiKey) -> Result<Plan, ItemError> {
        if key.revoked {
            return Ok(Plan::Skip("revoked".into()));
        }
        let back = match key.rate_limit {
            Some(limit) => Self::KeySetRateLimit {
                requests_per_second: limit.requests_per_second,
                burst: limit.burst,
            },
            None => Self::KeyClearRateLimit {},
        };
        let (command, undo) = match self {
            Self::KeyRevoke {} => (ApiKeyCommand::RevokeApiKey, None),
            Self::KeySetRateLimit {
                requests_per_second,
                burst,
            } => {
                let limit = RateLimit::new(*requests_per_second, *burst).map_err(|e| e.to_string())?;
                if key.rate_limit == Some(limit) {
                    return Ok(Plan::Skip("already has this rate limit".into()));
                }
                (ApiKeyCommand::SetRateLimit { limit }, Some(back))
            }
            Self::KeyClearRateLimit {} if key.rate_limit.is_none() => {
                return Ok(Plan::Skip("has the default rate limit".into()))
            }
            Self::KeyClearRateLimit {} => (ApiKeyCommand::ClearRateLimit, Some(back)),
            _ => return Err(self.wrong_target()),
        };
        Ok(Plan::Apply {
            command: ItemCommand::Key(command),
            undo,
        })
    }

    fn wrong_target(&self) -> ItemError {
        format!("{} does not apply to this target", self.operation())
    }
}

fn catalogue_names() -> Vec<&'static str> {
    vec![
        "prompt.tag",
        "prompt.untag",
        "prompt.archive",
        "prompt.restore",
        "prompt.move_category",
        "prompt.move_label",
        "prompt.remove_label",
        "prompt.set_description",
        "model.activate",
        "model.deactivate",
        "model.deprecate",
        "model.set_price",
        "model.withdraw_price",
        "model.set_default_params",
        "config.set",
        "config.clear",
        "budget.change_amount",
        "budget.change_thresholds",
        "budget.change_enforcement",
        "key.revoke",
        "key.set_rate_limit",
        "key.clear_rate_limit",
    ]
}

fn parse_effective_from(text: &str) -> Result<DateTime<Utc>, InvalidText> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| InvalidText::new("params.effective_from", "must be an RFC 3339 date-time"))
}

fn parse_tags(tags: &[String]) -> Result<BTreeSet<Slug>, InvalidText> {
    if tags.is_empty() || tags.len() > MAX_TAGS {
        return Err(InvalidText::new(
            "params.tags",
            format!("must list 1 to {MAX_TAGS} tags"),
        ));
    }
    tags.iter().map(|tag| Slug::parse("params.tags", tag)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::PromptEvent;
    use cqrs_es::Aggregate;

    #[test]
    fn every_operation_in_the_catalogue_parses_its_example_and_names_itself() {
        let catalogue = catalogue();
        assert!(catalogue.len() >= 20);
        assert_eq!(
            catalogue.iter().map(|spec| spec.operation).collect::<Vec<_>>(),
            catalogue_names()
        );
        for spec in &catalogue {
            let change = Change::parse(spec.operation, &spec.example)
                .unwrap_or_else(|e| panic!("{}: {e}", spec.operation));
            assert_eq!(change.operation(), spec.operation);
            assert_eq!(change.target_kind(), spec.target);
            assert_eq!(
                Change::parse(spec.operation, &change.params()).as_ref(),
                Ok(&change)
            );
        }
        assert!(
            !catalogue
                .iter()
                .find(|s| s.operation == "key.revoke")
                .unwrap()
                .reversible
        );
    }

    #[test]
    fn bad_parameters_are_reported_by_field() {
        let invalid = Change::parse("prompt.tag", &json!({"tags": ["Not A Slug"]})).unwrap_err();
        assert!(invalid.to_string().contains("params.tags"), "{invalid}");
        let invalid = Change::parse("prompt.tag", &json!({"tags": ["x"], "extra": 1})).unwrap_err();
        assert!(invalid.to_string().contains("params"), "{invalid}");
        assert!(Change::parse("prompt.explode", &json!({})).is_err());
        let invalid = Change::parse(
            "prompt.move_label",
            &json!({"label": "prod", "version": "newest"}),
        )
        .unwrap_err();
        assert!(invalid.to_string().contains("params.version"), "{invalid}");
    }

    fn prompt(tags: &[&str]) -> Prompt {
        let mut prompt = Prompt::default();
        prompt.apply(PromptEvent::PromptCreated {
            tenant: "acme".into(),
            name: "Greeting".into(),
            category: None,
            description: String::new(),
            tags: tags.iter().map(ToString::to_string).collect(),
        });
        prompt
    }

    #[test]
    fn tagging_undoes_only_the_tags_it_added_and_skips_a_prompt_that_has_them_all() {
        let change = Change::PromptTag {
            tags: vec!["a".into(), "b".into()],
        };
        let Ok(Plan::Apply { undo, .. }) = change.plan(Target::Prompt(&prompt(&["a"]))) else {
            panic!("expected a change");
        };
        assert_eq!(
            undo,
            Some(Change::PromptUntag {
                tags: vec!["b".into()]
            })
        );
        assert!(matches!(
            change.plan(Target::Prompt(&prompt(&["a", "b"]))),
            Ok(Plan::Skip(_))
        ));
    }

    #[test]
    fn moving_a_label_undoes_to_where_it_pointed_or_removes_it() {
        let mut greeting = prompt(&[]);
        greeting.latest_version = 3;
        let change = Change::PromptMoveLabel {
            label: "production".into(),
            version: LabelVersion::Named("latest".into()),
        };
        let Ok(Plan::Apply { undo, .. }) = change.plan(Target::Prompt(&greeting)) else {
            panic!("expected a change");
        };
        assert_eq!(
            undo,
            Some(Change::PromptRemoveLabel {
                label: "production".into()
            })
        );
        greeting.labels.insert("production".into(), 2);
        let Ok(Plan::Apply { undo, .. }) = change.plan(Target::Prompt(&greeting)) else {
            panic!("expected a change");
        };
        assert_eq!(
            undo,
            Some(Change::PromptMoveLabel {
                label: "production".into(),
                version: LabelVersion::Number(2)
            })
        );
        let missing = Change::PromptMoveLabel {
            label: "production".into(),
            version: LabelVersion::Number(9),
        };
        assert!(missing.plan(Target::Prompt(&greeting)).is_err());
    }

    #[test]
    fn a_change_on_the_wrong_kind_of_target_fails_the_item() {
        let change = Change::ModelActivate {};
        assert!(change.plan(Target::Prompt(&prompt(&[]))).is_err());
    }
}
