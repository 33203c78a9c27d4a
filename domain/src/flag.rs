//! The `Flag` aggregate: a feature flag of a tenant, on or off, rolled out to a share of
//! subjects, optionally splitting them among weighted variants. Evaluation is a pure
//! function of the flag's key, its salt and the subject, so every instance answers the same
//! for the same subject, before and after every restart.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ConfigKey;
use crate::fields::{self, Invalid};
use crate::governed::{Claims, Governed};
use crate::text::{InvalidText, Slug};

/// A rollout is given in percent with at most two decimals: 10,000 basis points are 100 %.
pub const FULL_ROLLOUT: u32 = 10_000;
/// Most variants a flag splits its subjects among.
const MAX_VARIANTS: usize = 20;
/// Largest weight of one variant.
const MAX_WEIGHT: u32 = 1_000_000;

/// The share of subjects a flag is on for, in basis points (0..=10,000).
pub fn parse_rollout(field: &'static str, percent: f64) -> Result<u32, InvalidText> {
    let basis_points = percent * 100.0;
    if !(0.0..=100.0).contains(&percent) || (basis_points - basis_points.round()).abs() > 1e-6 {
        return Err(InvalidText::new(
            field,
            "must be a percentage from 0 to 100 with at most two decimals",
        ));
    }
    Ok(basis_points.round() as u32)
}

/// A share of a flag's subjects: `weight` out of the sum of every variant's weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub weight: u32,
}

/// Variants (`field`): distinct slugs with weights from 1 to 1,000,000, at most 20.
pub fn parse_variants(field: &'static str, variants: &[(String, u32)]) -> Result<Vec<Variant>, Invalid> {
    if variants.len() > MAX_VARIANTS {
        return Err(Invalid::field(
            field,
            format!("must list at most {MAX_VARIANTS} variants"),
        ));
    }
    let names = fields::each(variants.iter().map(|(name, _)| name), |name| {
        Slug::parse(field, name)
    })?;
    let mut seen = std::collections::BTreeSet::new();
    if !names.iter().all(|name| seen.insert(name.to_string())) {
        return Err(Invalid::field(field, "must have distinct names"));
    }
    if variants
        .iter()
        .any(|(_, weight)| !(1..=MAX_WEIGHT).contains(weight))
    {
        return Err(Invalid::field(
            field,
            format!("weights must be from 1 to {MAX_WEIGHT}"),
        ));
    }
    Ok(names
        .into_iter()
        .zip(variants)
        .map(|(name, (_, weight))| Variant {
            name: name.to_string(),
            weight: *weight,
        })
        .collect())
}

/// What a flag is set to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagSettings {
    pub enabled: bool,
    /// Basis points of subjects the flag is on for.
    pub rollout: u32,
    pub variants: Vec<Variant>,
}

/// Why an evaluation came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaluationReason {
    /// The flag is switched off for everyone.
    Disabled,
    /// The subject falls inside the rollout.
    InRollout,
    /// The subject falls outside the rollout.
    OutsideRollout,
}

/// A flag's answer for one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    pub enabled: bool,
    pub variant: Option<String>,
    pub reason: EvaluationReason,
}

/// Two independent numbers from SHA-256 of key, salt and subject: the rollout bucket
/// (0..10,000) and the variant draw.
fn draws(key: &str, salt: &str, subject: &str) -> (u32, u64) {
    let mut hasher = Sha256::new();
    for part in [key, salt, subject] {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") hash apart.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let number = |bytes: &[u8]| bytes.iter().fold(0u64, |n, byte| (n << 8) | u64::from(*byte));
    let bucket = (number(&digest[0..8]) % u64::from(FULL_ROLLOUT)) as u32;
    (bucket, number(&digest[8..16]))
}

/// The flag `key` with `salt` and `settings`, evaluated for `subject`.
pub fn evaluate(key: &str, salt: &str, settings: &FlagSettings, subject: &str) -> Evaluation {
    if !settings.enabled {
        return Evaluation {
            enabled: false,
            variant: None,
            reason: EvaluationReason::Disabled,
        };
    }
    let (bucket, draw) = draws(key, salt, subject);
    if bucket >= settings.rollout {
        return Evaluation {
            enabled: false,
            variant: None,
            reason: EvaluationReason::OutsideRollout,
        };
    }
    let total: u64 = settings.variants.iter().map(|v| u64::from(v.weight)).sum();
    let variant = (total > 0).then(|| {
        let mut point = draw % total;
        settings
            .variants
            .iter()
            .find(|variant| {
                let inside = point < u64::from(variant.weight);
                point = point.saturating_sub(u64::from(variant.weight));
                inside
            })
            .map(|variant| variant.name.clone())
    });
    Evaluation {
        enabled: true,
        variant: variant.flatten(),
        reason: EvaluationReason::InRollout,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FlagCommand {
    /// Creates the flag or changes it; `salt` is used only when the flag is new.
    SetFlag {
        tenant: String,
        key: ConfigKey,
        salt: String,
        settings: FlagSettings,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FlagEvent {
    FlagSet {
        tenant: String,
        key: String,
        /// Fixed when the flag is created: it keeps evaluations stable across changes.
        salt: String,
        settings: FlagSettings,
        previous: Option<FlagSettings>,
    },
}

impl DomainEvent for FlagEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FlagSet { .. } => "FlagSet".to_string(),
        }
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {}

/// The decision state of a flag; also what a point-in-time read renders.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub tenant: Option<String>,
    pub key: String,
    pub salt: String,
    pub settings: Option<FlagSettings>,
}

impl Aggregate for Flag {
    /// Keys every stored flag event: changing it orphans the history.
    const TYPE: &'static str = "flag";
    type Command = FlagCommand;
    type Event = FlagEvent;
    type Error = FlagError;
    type Services = ();

    async fn handle(
        &mut self,
        command: FlagCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), FlagError> {
        let FlagCommand::SetFlag {
            tenant,
            key,
            salt,
            settings,
        } = command;
        if self.settings.as_ref() != Some(&settings) {
            let salt = if self.salt.is_empty() {
                salt
            } else {
                self.salt.clone()
            };
            let event = FlagEvent::FlagSet {
                tenant,
                key: key.as_ref().to_string(),
                salt,
                previous: self.settings.clone(),
                settings,
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: FlagEvent) {
        let FlagEvent::FlagSet {
            tenant,
            key,
            salt,
            settings,
            ..
        } = event;
        self.tenant = Some(tenant);
        self.key = key;
        self.salt = salt;
        self.settings = Some(settings);
    }
}

impl Governed for Flag {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Flags are named by their aggregate id, which holds the tenant: nothing to claim.
    fn claims(&self, _: &[FlagEvent]) -> Claims {
        Claims::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rollout: u32, variants: &[(&str, u32)]) -> FlagSettings {
        FlagSettings {
            enabled: true,
            rollout,
            variants: variants
                .iter()
                .map(|(name, weight)| Variant {
                    name: name.to_string(),
                    weight: *weight,
                })
                .collect(),
        }
    }

    #[test]
    fn the_share_of_subjects_in_the_rollout_is_within_one_percent_of_it() {
        for percent in [1.0, 10.0, 33.33, 50.0, 90.0] {
            let flag = settings(parse_rollout("r", percent).unwrap(), &[]);
            let on = (0..100_000)
                .filter(|n| evaluate("checkout.new", "salt", &flag, &format!("user-{n}")).enabled)
                .count();
            let share = on as f64 / 1_000.0;
            assert!((share - percent).abs() <= 1.0, "{percent} %: {share} %");
        }
    }

    #[test]
    fn variants_split_the_subjects_in_the_rollout_by_weight() {
        let flag = settings(FULL_ROLLOUT, &[("control", 1), ("treatment", 3)]);
        let treatment = (0..100_000)
            .filter(|n| evaluate("k", "s", &flag, &n.to_string()).variant.as_deref() == Some("treatment"))
            .count();
        assert!((treatment as f64 / 1_000.0 - 75.0).abs() <= 1.0, "{treatment}");
    }

    #[test]
    fn a_subject_keeps_its_answer_as_the_rollout_grows_and_flags_differ_by_salt() {
        let subjects: Vec<String> = (0..10_000).map(|n| format!("s{n}")).collect();
        let on_at = |percent: f64, salt: &str| -> Vec<bool> {
            let flag = settings(parse_rollout("r", percent).unwrap(), &[]);
            subjects
                .iter()
                .map(|s| evaluate("k", salt, &flag, s).enabled)
                .collect()
        };
        let (twenty, fifty) = (on_at(20.0, "a"), on_at(50.0, "a"));
        assert!(
            twenty.iter().zip(&fifty).all(|(small, large)| !small || *large),
            "growing only adds subjects"
        );
        assert_ne!(on_at(50.0, "a"), on_at(50.0, "b"), "another salt draws anew");
        assert_eq!(on_at(50.0, "a"), fifty, "the same inputs give the same answers");
        let off = FlagSettings {
            enabled: false,
            ..settings(FULL_ROLLOUT, &[])
        };
        assert_eq!(evaluate("k", "a", &off, "s1").reason, EvaluationReason::Disabled);
    }

    #[test]
    fn rollouts_and_variants_are_checked() {
        assert_eq!(parse_rollout("r", 12.5).unwrap(), 1250);
        assert_eq!(parse_rollout("r", 100.0).unwrap(), FULL_ROLLOUT);
        for bad in [-1.0, 100.01, 12.345, f64::NAN] {
            assert!(parse_rollout("r", bad).is_err(), "{bad}");
        }
        assert!(parse_variants("v", &[("a".into(), 1), ("a".into(), 2)]).is_err());
        assert!(parse_variants("v", &[("a".into(), 0)]).is_err());
        assert!(parse_variants("v", &[("A B".into(), 1)]).is_err());
        assert_eq!(parse_variants("v", &[("on".into(), 2)]).unwrap()[0].weight, 2);
    }
}
