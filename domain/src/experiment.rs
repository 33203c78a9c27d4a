//! The `Experiment` aggregate: variants of a prompt version, a model or a configuration value
//! compared on live traffic, with the metrics that decide between them, and its lifecycle:
//! draft → running ⇄ paused → stopped → concluded.
//!
//! Assignment is a pure function of the experiment's salt and the subject, so every
//! instance answers the same for the same subject, before and after every restart.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::approval::ProposedChange;
use crate::config::ConfigKey;
use crate::fields::Invalid;
use crate::governed::{Claims, Governed};
use crate::text::{DisplayName, InvalidText, Slug};

/// Scope of the per-tenant unique experiment name.
pub const EXPERIMENT_NAME_SCOPE: &str = "experiment_name";
/// Most variants an experiment compares.
const MAX_VARIANTS: usize = 10;
/// Most metrics (primary, secondary and guardrails together).
const MAX_METRICS: usize = 20;
/// Longest hypothesis, in characters.
const MAX_HYPOTHESIS_CHARS: usize = 2_000;
/// The total of the variants' weights.
pub const TOTAL_WEIGHT: u32 = 100;
/// The label promoting a prompt-version winner moves.
pub const PROMOTED_LABEL: &str = "production";

/// What promoting the winner did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// The change: the prompt's label moved, or a configuration value set.
    pub change: ProposedChange,
    /// The version of its target the change produced; `None` while it awaits approval.
    pub applied_version: Option<u64>,
    /// The change request it became, its target being protected.
    pub change_request: Option<Uuid>,
}

/// What a variant changes for the subjects assigned to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Treatment {
    /// A version of the experiment's prompt.
    PromptVersion(u32),
    /// A model, by reference.
    Model(String),
    /// A configuration value.
    Config { key: String, value: Value },
    /// Nothing named: the application decides what the variant means.
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    /// Share of subjects, in percent; the variants' weights sum to 100.
    pub weight: u32,
    pub control: bool,
    pub treatment: Treatment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Per subject 1 when any observation is 1, else 0.
    Binary,
    /// Per subject the sum of its observations.
    Continuous,
    /// Per subject the sums of two metrics; compared as sum(numerator) / sum(denominator).
    Ratio,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Continuous => "continuous",
            Self::Ratio => "ratio",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        [Self::Binary, Self::Continuous, Self::Ratio]
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| InvalidText::new(field, "must be binary, continuous or ratio"))
    }
}

/// What is measured: an observation name (a usage record's `metrics` key, or an
/// observation's `metric`), or for a ratio the two names it divides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub numerator: Option<String>,
    pub denominator: Option<String>,
    pub higher_is_better: bool,
    /// The Bayesian method's normal prior on the absolute lift: `(mean, standard
    /// deviation)`; flat when `None`.
    #[serde(default)]
    pub prior: Option<(f64, f64)>,
}

impl Metric {
    /// The observation names the metric reads.
    pub fn observed_names(&self) -> Vec<&str> {
        match (self.kind, &self.numerator, &self.denominator) {
            (MetricKind::Ratio, Some(numerator), Some(denominator)) => vec![numerator, denominator],
            _ => vec![&self.name],
        }
    }
}

/// Which traffic the experiment applies to; empty lists: all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targeting {
    pub features: Vec<String>,
    pub keys: Vec<Uuid>,
}

/// Everything an experiment is defined with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSpec {
    pub name: String,
    pub hypothesis: String,
    pub prompt_id: Option<Uuid>,
    pub variants: Vec<Variant>,
    pub primary_metric: Metric,
    pub secondary_metrics: Vec<Metric>,
    pub guardrail_metrics: Vec<Metric>,
    /// Units each variant should have before its figures are read as final.
    pub min_units_per_variant: u64,
    pub targeting: Targeting,
    /// The total units at which the sequential method's intervals are tightest.
    pub sequential_tuning_units: u64,
}

impl ExperimentSpec {
    /// Applies new weights (by name) and targeting.
    pub fn reallocate(&mut self, weights: &[(String, u32)], targeting: Targeting) {
        for variant in &mut self.variants {
            if let Some((_, weight)) = weights.iter().find(|(name, _)| *name == variant.name) {
                variant.weight = *weight;
            }
        }
        self.targeting = targeting;
    }

    pub fn control(&self) -> Option<&Variant> {
        self.variants.iter().find(|variant| variant.control)
    }

    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|variant| variant.name == name)
    }

    /// Every metric: the primary first, then the secondary ones, then the guardrails.
    pub fn metrics(&self) -> impl Iterator<Item = (&Metric, MetricRole)> {
        std::iter::once((&self.primary_metric, MetricRole::Primary))
            .chain(self.secondary_metrics.iter().map(|m| (m, MetricRole::Secondary)))
            .chain(self.guardrail_metrics.iter().map(|m| (m, MetricRole::Guardrail)))
    }

    /// The change that promotes `winner`: the prompt's `production` label moved to its
    /// version, or its configuration value set. A model, or a variant naming nothing, is not
    /// something aipm can switch for the application.
    pub fn promotion_of(&self, winner: &str) -> Result<ProposedChange, InvalidText> {
        let variant = self
            .variant(winner)
            .ok_or_else(|| InvalidText::new("winner", "must name one of the experiment's variants"))?;
        match (&variant.treatment, self.prompt_id) {
            (Treatment::PromptVersion(version), Some(prompt)) => Ok(ProposedChange::MovePromptLabel {
                prompt,
                label: PROMOTED_LABEL.to_string(),
                version: *version,
            }),
            (Treatment::Config { key, value }, _) => Ok(ProposedChange::SetConfig {
                key: key.clone(),
                value: value.clone(),
            }),
            (Treatment::Model(_), _) => Err(InvalidText::new(
                "promote",
                "a model variant is promoted where the model is chosen (a prompt version or a configuration value); conclude without promote",
            )),
            _ => Err(InvalidText::new("promote", "the winner names nothing to promote")),
        }
    }

    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics()
            .map(|(metric, _)| metric)
            .find(|metric| metric.name == name)
    }

    /// Whether an observation called `name` feeds one of the metrics.
    pub fn observes(&self, name: &str) -> bool {
        self.metrics()
            .any(|(metric, _)| metric.observed_names().contains(&name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricRole {
    Primary,
    Secondary,
    Guardrail,
}

/// A variant as a client describes it, before it is checked.
#[derive(Debug, Clone)]
pub struct RawVariant {
    pub name: String,
    pub weight: u32,
    pub control: bool,
    pub prompt_version: Option<u32>,
    pub model: Option<String>,
    pub config: Option<(String, Value)>,
}

/// A metric as a client describes it, before it is checked.
#[derive(Debug, Clone)]
pub struct RawMetric {
    pub name: String,
    pub kind: String,
    pub numerator: Option<String>,
    pub denominator: Option<String>,
    pub higher_is_better: bool,
    pub prior_mean: Option<f64>,
    pub prior_sd: Option<f64>,
}

/// An experiment as a client describes it, before it is checked.
#[derive(Debug, Clone)]
pub struct RawSpec {
    pub name: String,
    pub hypothesis: String,
    pub prompt_id: Option<Uuid>,
    pub variants: Vec<RawVariant>,
    pub primary_metric: RawMetric,
    pub secondary_metrics: Vec<RawMetric>,
    pub guardrail_metrics: Vec<RawMetric>,
    pub min_units_per_variant: Option<u64>,
    pub targeting: Targeting,
    pub sequential_tuning_units: Option<u64>,
}

fn parse_metric(field: &'static str, raw: &RawMetric, errors: &mut Invalid) -> Option<Metric> {
    let name = Slug::parse(field, &raw.name).map_err(|e| errors.push(e)).ok();
    let kind = MetricKind::parse(field, &raw.kind)
        .map_err(|e| errors.push(e))
        .ok()?;
    let mut observed = |part: &Option<String>| -> Option<String> {
        part.as_deref()
            .map(|text| Slug::parse(field, text).map(|slug| slug.to_string()))
            .transpose()
            .map_err(|e| errors.push(e))
            .ok()
            .flatten()
    };
    let (numerator, denominator) = (observed(&raw.numerator), observed(&raw.denominator));
    let prior = match (raw.prior_mean, raw.prior_sd) {
        (None, None) => None,
        (Some(mean), Some(sd)) if mean.is_finite() && sd.is_finite() && sd > 0.0 => Some((mean, sd)),
        _ => {
            errors.push(InvalidText::new(
                field,
                "a prior gives both prior_mean and a positive prior_sd",
            ));
            return None;
        }
    };
    match kind {
        MetricKind::Ratio if numerator.is_none() || denominator.is_none() => {
            errors.push(InvalidText::new(
                field,
                "a ratio metric names its numerator and denominator",
            ));
            None
        }
        MetricKind::Binary | MetricKind::Continuous
            if raw.numerator.is_some() || raw.denominator.is_some() =>
        {
            errors.push(InvalidText::new(
                field,
                "only a ratio metric has a numerator and denominator",
            ));
            None
        }
        _ => Some(Metric {
            name: name?.to_string(),
            kind,
            numerator,
            denominator,
            higher_is_better: raw.higher_is_better,
            prior,
        }),
    }
}

/// Checks an experiment's definition: every rule, every field error at once.
pub fn parse_spec(raw: RawSpec) -> Result<ExperimentSpec, Invalid> {
    let mut errors = Invalid::default();
    let name = DisplayName::parse("name", &raw.name)
        .map_err(|e| errors.push(e))
        .ok();
    if raw.hypothesis.trim().is_empty()
        || raw.hypothesis.chars().count() > MAX_HYPOTHESIS_CHARS
        || raw.hypothesis.contains('\0')
    {
        errors.push(InvalidText::new("hypothesis", "must be 1 to 2000 characters"));
    }
    if raw.variants.len() < 2 || raw.variants.len() > MAX_VARIANTS {
        errors.push(InvalidText::new("variants", "must list 2 to 10 variants"));
    }
    let mut names = BTreeSet::new();
    let mut variants = Vec::new();
    for raw_variant in &raw.variants {
        let name = match Slug::parse("variants.name", &raw_variant.name) {
            Ok(name) => name.to_string(),
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if !names.insert(name.clone()) {
            errors.push(InvalidText::new(
                "variants.name",
                format!("{name} is named twice"),
            ));
        }
        if raw_variant.weight == 0 {
            errors.push(InvalidText::new("variants.weight", "must be at least 1"));
        }
        let given = [
            raw_variant.prompt_version.is_some(),
            raw_variant.model.is_some(),
            raw_variant.config.is_some(),
        ];
        let treatment = match (given.iter().filter(|g| **g).count(), raw_variant) {
            (0, _) => Treatment::Unspecified,
            (
                1,
                RawVariant {
                    prompt_version: Some(version),
                    ..
                },
            ) => {
                if raw.prompt_id.is_none() {
                    errors.push(InvalidText::new(
                        "variants.prompt_version",
                        "needs the experiment's prompt_id",
                    ));
                }
                Treatment::PromptVersion(*version)
            }
            (
                1,
                RawVariant {
                    model: Some(model), ..
                },
            ) => Treatment::Model(model.clone()),
            (
                1,
                RawVariant {
                    config: Some((key, value)),
                    ..
                },
            ) => match ConfigKey::parse("variants.config.key", key) {
                Ok(key) => Treatment::Config {
                    key: key.as_ref().to_string(),
                    value: value.clone(),
                },
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
            _ => {
                errors.push(InvalidText::new(
                    "variants",
                    "a variant names at most one of prompt_version, model and config",
                ));
                continue;
            }
        };
        variants.push(Variant {
            name,
            weight: raw_variant.weight,
            control: raw_variant.control,
            treatment,
        });
    }
    if raw.variants.iter().map(|v| u64::from(v.weight)).sum::<u64>() != u64::from(TOTAL_WEIGHT) {
        errors.push(InvalidText::new("variants.weight", "the weights must sum to 100"));
    }
    if raw.variants.iter().filter(|v| v.control).count() != 1 {
        errors.push(InvalidText::new(
            "variants.control",
            "exactly one variant must be the control",
        ));
    }
    let primary = parse_metric("primary_metric", &raw.primary_metric, &mut errors);
    let mut metric_list = |field: &'static str, list: &[RawMetric]| -> Vec<Metric> {
        list.iter()
            .filter_map(|metric| parse_metric(field, metric, &mut errors))
            .collect()
    };
    let secondary = metric_list("secondary_metrics", &raw.secondary_metrics);
    let guardrails = metric_list("guardrail_metrics", &raw.guardrail_metrics);
    let count = 1 + raw.secondary_metrics.len() + raw.guardrail_metrics.len();
    if count > MAX_METRICS {
        errors.push(InvalidText::new("secondary_metrics", "at most 20 metrics in all"));
    }
    let mut metric_names = BTreeSet::new();
    for metric in primary.iter().chain(&secondary).chain(&guardrails) {
        if !metric_names.insert(metric.name.clone()) {
            errors.push(InvalidText::new(
                "secondary_metrics",
                format!("the metric {} is named twice", metric.name),
            ));
        }
    }
    let mut features = Vec::new();
    for feature in &raw.targeting.features {
        match Slug::parse("targeting.features", feature) {
            Ok(slug) => features.push(slug.to_string()),
            Err(e) => errors.push(e),
        }
    }
    errors.into_result()?;
    let (Some(name), Some(primary_metric)) = (name, primary) else {
        return Err(Invalid::field("name", "is invalid"));
    };
    Ok(ExperimentSpec {
        name: name.as_ref().to_string(),
        hypothesis: raw.hypothesis.trim().to_string(),
        prompt_id: raw.prompt_id,
        variants,
        primary_metric,
        secondary_metrics: secondary,
        guardrail_metrics: guardrails,
        min_units_per_variant: raw.min_units_per_variant.unwrap_or(0),
        targeting: Targeting {
            features,
            keys: raw.targeting.keys.clone(),
        },
        sequential_tuning_units: raw.sequential_tuning_units.unwrap_or(10_000).max(1),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentStatus {
    #[default]
    Draft,
    Running,
    Paused,
    Stopped,
    Concluded,
}

impl ExperimentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Concluded => "concluded",
        }
    }
}

/// Which variant a subject gets, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub variant: String,
    /// `assigned` while running; otherwise the control: `not_running`, or `not_targeted`
    /// for a call outside the experiment's targeting.
    pub reason: &'static str,
}

/// The variant `subject` belongs to: SHA-256 of the salt and the subject, length-prefixed,
/// taken modulo 100 and laid over the variants' weights in their order.
pub fn bucket_of(salt: &str, subject: &str) -> u32 {
    let mut hasher = Sha256::new();
    for part in [salt, subject] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let number = digest[0..8]
        .iter()
        .fold(0u64, |n, byte| (n << 8) | u64::from(*byte));
    (number % u64::from(TOTAL_WEIGHT)) as u32
}

/// Whether a call for `feature` made with the key `key` is one the targeting covers.
pub fn targets(targeting: &Targeting, feature: Option<&str>, key: Uuid) -> bool {
    let feature_ok = targeting.features.is_empty()
        || feature.is_some_and(|feature| targeting.features.iter().any(|f| f == feature));
    let key_ok = targeting.keys.is_empty() || targeting.keys.contains(&key);
    feature_ok && key_ok
}

/// The variant `subject` is assigned to in an experiment with these variants and status:
/// the control while it does not run, or when the call is outside its targeting.
pub fn assign(
    salt: &str,
    variants: &[Variant],
    status: ExperimentStatus,
    targeted: bool,
    subject: &str,
) -> Option<Assignment> {
    let control = variants.iter().find(|variant| variant.control)?;
    if status != ExperimentStatus::Running || !targeted {
        return Some(Assignment {
            variant: control.name.clone(),
            reason: if targeted { "not_running" } else { "not_targeted" },
        });
    }
    let mut point = bucket_of(salt, subject);
    let variant = variants.iter().find(|variant| {
        let inside = point < variant.weight;
        point = point.saturating_sub(variant.weight);
        inside
    })?;
    Some(Assignment {
        variant: variant.name.clone(),
        reason: "assigned",
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub subject: String,
    pub variant: String,
    pub metric: String,
    pub value: f64,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExperimentCommand {
    Create {
        tenant: String,
        spec: Box<ExperimentSpec>,
        salt: String,
    },
    Start,
    /// Paused by a person, or by a guardrail with its evidence.
    Pause {
        evidence: Option<Value>,
    },
    Resume,
    Stop,
    Conclude {
        winner: String,
        promotion: Option<Promotion>,
    },
    /// New weights (by variant name, summing to 100) and targeting, before it concludes.
    ChangeAllocation {
        weights: Vec<(String, u32)>,
        targeting: Targeting,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExperimentEvent {
    ExperimentCreated {
        tenant: String,
        spec: Box<ExperimentSpec>,
        salt: String,
    },
    ExperimentStarted,
    ExperimentPaused {
        /// What a guardrail found, when it paused the experiment; `None` for a person.
        evidence: Option<Value>,
    },
    ExperimentResumed,
    ExperimentStopped,
    ExperimentConcluded {
        winner: String,
        /// What promoting the winner did, when asked to.
        promotion: Option<Promotion>,
    },
    /// The weights or targeting changed; `while_running` when units were already being
    /// assigned, which results flag (units before and after were split differently).
    ExperimentAllocationChanged {
        weights: Vec<(String, u32)>,
        targeting: Targeting,
        previous_weights: Vec<(String, u32)>,
        previous_targeting: Targeting,
        while_running: bool,
    },
}

impl DomainEvent for ExperimentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ExperimentCreated { .. } => "ExperimentCreated",
            Self::ExperimentStarted => "ExperimentStarted",
            Self::ExperimentPaused { .. } => "ExperimentPaused",
            Self::ExperimentResumed => "ExperimentResumed",
            Self::ExperimentStopped => "ExperimentStopped",
            Self::ExperimentConcluded { .. } => "ExperimentConcluded",
            Self::ExperimentAllocationChanged { .. } => "ExperimentAllocationChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExperimentError {
    #[error("no such experiment")]
    NotFound,
    #[error("an experiment with this id already exists")]
    AlreadyExists,
    #[error("the experiment is {current}, so it cannot be {action}")]
    WrongStatus {
        current: &'static str,
        action: &'static str,
    },
    #[error("the experiment has no variant {0}")]
    NoSuchVariant(String),
    #[error("the weights must name each variant once and sum to 100")]
    InvalidWeights,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub tenant: Option<String>,
    pub spec: Option<ExperimentSpec>,
    pub salt: String,
    pub status: ExperimentStatus,
    pub winner: Option<String>,
    #[serde(default)]
    pub promotion: Option<Promotion>,
    /// Weights or targeting changed after it started: results flag it.
    #[serde(default)]
    pub reallocated_while_running: bool,
}

impl Aggregate for Experiment {
    /// Keys every stored experiment event: changing it orphans the history.
    const TYPE: &'static str = "experiment";
    type Command = ExperimentCommand;
    type Event = ExperimentEvent;
    type Error = ExperimentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ExperimentCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ExperimentError> {
        use ExperimentStatus::*;
        let wrong = |current: ExperimentStatus, action| ExperimentError::WrongStatus {
            current: current.as_str(),
            action,
        };
        let event = match command {
            ExperimentCommand::Create { .. } if self.tenant.is_some() => {
                return Err(ExperimentError::AlreadyExists)
            }
            ExperimentCommand::Create { tenant, spec, salt } => {
                ExperimentEvent::ExperimentCreated { tenant, spec, salt }
            }
            _ if self.tenant.is_none() => return Err(ExperimentError::NotFound),
            ExperimentCommand::Start => match self.status {
                Draft => ExperimentEvent::ExperimentStarted,
                Running => return Ok(()),
                other => return Err(wrong(other, "started")),
            },
            ExperimentCommand::Pause { evidence } => match self.status {
                Running => ExperimentEvent::ExperimentPaused { evidence },
                Paused => return Ok(()),
                other => return Err(wrong(other, "paused")),
            },
            ExperimentCommand::Resume => match self.status {
                Paused => ExperimentEvent::ExperimentResumed,
                Running => return Ok(()),
                other => return Err(wrong(other, "resumed")),
            },
            ExperimentCommand::Stop => match self.status {
                Running | Paused => ExperimentEvent::ExperimentStopped,
                Stopped => return Ok(()),
                other => return Err(wrong(other, "stopped")),
            },
            ExperimentCommand::Conclude { winner, promotion } => {
                if self.status != Stopped {
                    return Err(wrong(self.status, "concluded before it is stopped"));
                }
                if self
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.variant(&winner))
                    .is_none()
                {
                    return Err(ExperimentError::NoSuchVariant(winner));
                }
                ExperimentEvent::ExperimentConcluded { winner, promotion }
            }
            ExperimentCommand::ChangeAllocation { weights, targeting } => {
                if matches!(self.status, Stopped | Concluded) {
                    return Err(wrong(self.status, "reallocated"));
                }
                let Some(spec) = &self.spec else {
                    return Err(ExperimentError::NotFound);
                };
                let names: BTreeSet<&str> = weights.iter().map(|(name, _)| name.as_str()).collect();
                let valid = weights.len() == spec.variants.len()
                    && names.len() == weights.len()
                    && spec.variants.iter().all(|v| names.contains(v.name.as_str()))
                    && weights.iter().all(|(_, weight)| *weight >= 1)
                    && weights.iter().map(|(_, weight)| u64::from(*weight)).sum::<u64>()
                        == u64::from(TOTAL_WEIGHT);
                if !valid {
                    return Err(ExperimentError::InvalidWeights);
                }
                // In the variants' own order, as assignment lays them out.
                let weights: Vec<(String, u32)> = spec
                    .variants
                    .iter()
                    .filter_map(|v| weights.iter().find(|(name, _)| *name == v.name).cloned())
                    .collect();
                let previous_weights: Vec<(String, u32)> =
                    spec.variants.iter().map(|v| (v.name.clone(), v.weight)).collect();
                if weights == previous_weights && targeting == spec.targeting {
                    return Ok(());
                }
                ExperimentEvent::ExperimentAllocationChanged {
                    weights,
                    targeting,
                    previous_weights,
                    previous_targeting: spec.targeting.clone(),
                    while_running: matches!(self.status, Running | Paused),
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ExperimentEvent) {
        match event {
            ExperimentEvent::ExperimentCreated { tenant, spec, salt } => {
                self.tenant = Some(tenant);
                self.spec = Some(*spec);
                self.salt = salt;
                self.status = ExperimentStatus::Draft;
            }
            ExperimentEvent::ExperimentStarted | ExperimentEvent::ExperimentResumed => {
                self.status = ExperimentStatus::Running
            }
            ExperimentEvent::ExperimentPaused { .. } => self.status = ExperimentStatus::Paused,
            ExperimentEvent::ExperimentStopped => self.status = ExperimentStatus::Stopped,
            ExperimentEvent::ExperimentConcluded { winner, promotion } => {
                self.status = ExperimentStatus::Concluded;
                self.winner = Some(winner);
                self.promotion = promotion;
            }
            ExperimentEvent::ExperimentAllocationChanged {
                weights,
                targeting,
                while_running,
                ..
            } => {
                if let Some(spec) = &mut self.spec {
                    spec.reallocate(&weights, targeting);
                }
                self.reallocated_while_running |= while_running;
            }
        }
    }
}

impl Governed for Experiment {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Its name, unique per tenant.
    fn claims(&self, events: &[ExperimentEvent]) -> Claims {
        let mut claims = Claims::default();
        for event in events {
            if let ExperimentEvent::ExperimentCreated { spec, .. } = event {
                claims = claims.claim(EXPERIMENT_NAME_SCOPE, &spec.name);
            }
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants(weights: &[u32]) -> Vec<Variant> {
        weights
            .iter()
            .enumerate()
            .map(|(i, weight)| Variant {
                name: format!("v{i}"),
                weight: *weight,
                control: i == 0,
                treatment: Treatment::Unspecified,
            })
            .collect()
    }

    #[test]
    fn assignment_follows_the_weights_within_one_percent_over_100_000_subjects() {
        let variants = variants(&[50, 30, 20]);
        let mut counts = [0u32; 3];
        for n in 0..100_000 {
            let assigned = assign(
                "salt-1",
                &variants,
                ExperimentStatus::Running,
                true,
                &format!("user-{n}"),
            )
            .unwrap();
            counts[assigned.variant[1..].parse::<usize>().unwrap()] += 1;
        }
        for (count, weight) in counts.iter().zip([50.0, 30.0, 20.0]) {
            let share = f64::from(*count) / 1_000.0;
            assert!((share - weight).abs() < 1.0, "{counts:?}");
        }
        // The same subject, the same answer; another salt, another split.
        let once = assign("salt-1", &variants, ExperimentStatus::Running, true, "user-7").unwrap();
        assert_eq!(
            once,
            assign("salt-1", &variants, ExperimentStatus::Running, true, "user-7").unwrap()
        );
        let moved = (0..1000)
            .filter(|n| {
                let subject = format!("user-{n}");
                assign("salt-1", &variants, ExperimentStatus::Running, true, &subject)
                    != assign("salt-2", &variants, ExperimentStatus::Running, true, &subject)
            })
            .count();
        assert!(moved > 300, "{moved}");
        let paused = assign("salt-1", &variants, ExperimentStatus::Paused, true, "user-7").unwrap();
        assert_eq!((paused.variant.as_str(), paused.reason), ("v0", "not_running"));
        let outside = assign("salt-1", &variants, ExperimentStatus::Running, false, "user-7").unwrap();
        assert_eq!((outside.variant.as_str(), outside.reason), ("v0", "not_targeted"));
        let targeting = Targeting {
            features: vec!["checkout".into()],
            keys: vec![],
        };
        assert!(targets(&targeting, Some("checkout"), Uuid::nil()));
        assert!(!targets(&targeting, Some("search"), Uuid::nil()));
        assert!(!targets(&targeting, None, Uuid::nil()));
        assert!(targets(&Targeting::default(), None, Uuid::nil()));
    }

    fn raw() -> RawSpec {
        let metric = |name: &str, kind: &str| RawMetric {
            name: name.into(),
            kind: kind.into(),
            numerator: None,
            denominator: None,
            higher_is_better: true,
            prior_mean: None,
            prior_sd: None,
        };
        RawSpec {
            name: "Shorter answers".into(),
            hypothesis: "Shorter answers convert better".into(),
            prompt_id: Some(Uuid::nil()),
            variants: vec![
                RawVariant {
                    name: "control".into(),
                    weight: 50,
                    control: true,
                    prompt_version: Some(1),
                    model: None,
                    config: None,
                },
                RawVariant {
                    name: "short".into(),
                    weight: 50,
                    control: false,
                    prompt_version: Some(2),
                    model: None,
                    config: None,
                },
            ],
            primary_metric: metric("converted", "binary"),
            secondary_metrics: vec![metric("rating", "continuous")],
            guardrail_metrics: vec![],
            min_units_per_variant: None,
            targeting: Targeting::default(),
            sequential_tuning_units: None,
        }
    }

    #[test]
    fn a_spec_needs_weights_summing_to_100_one_control_and_well_formed_metrics() {
        assert!(parse_spec(raw()).is_ok());
        let mut bad = raw();
        bad.variants[0].weight = 60;
        bad.variants[1].control = true;
        bad.primary_metric.kind = "ratio".into();
        let errors: Vec<&str> = parse_spec(bad)
            .unwrap_err()
            .errors()
            .iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(errors, ["variants.weight", "variants.control", "primary_metric"]);
    }

    #[test]
    fn the_lifecycle_moves_one_way_and_concludes_only_when_stopped() {
        use cqrs_es::test::TestFramework;
        let created = ExperimentEvent::ExperimentCreated {
            tenant: "acme".into(),
            spec: Box::new(parse_spec(raw()).unwrap()),
            salt: "s".into(),
        };
        TestFramework::<Experiment>::with(())
            .given(vec![created.clone(), ExperimentEvent::ExperimentStarted])
            .when(ExperimentCommand::Conclude {
                winner: "short".into(),
                promotion: None,
            })
            .then_expect_error(ExperimentError::WrongStatus {
                current: "running",
                action: "concluded before it is stopped",
            });
        TestFramework::<Experiment>::with(())
            .given(vec![
                created.clone(),
                ExperimentEvent::ExperimentStarted,
                ExperimentEvent::ExperimentStopped,
            ])
            .when(ExperimentCommand::Resume)
            .then_expect_error(ExperimentError::WrongStatus {
                current: "stopped",
                action: "resumed",
            });
        TestFramework::<Experiment>::with(())
            .given(vec![
                created,
                ExperimentEvent::ExperimentStarted,
                ExperimentEvent::ExperimentStopped,
            ])
            .when(ExperimentCommand::Conclude {
                winner: "short".into(),
                promotion: None,
            })
            .then_expect_events(vec![ExperimentEvent::ExperimentConcluded {
                winner: "short".into(),
                promotion: None,
            }]);
    }
}
