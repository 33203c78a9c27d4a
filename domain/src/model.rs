//! The `Model` aggregate: a model a provider serves, named by its reference
//! `<provider name>/<model id>` (what prompt versions and usage records name), its status,
//! and its prices, which are effective-dated: each period holds from its start until the
//! next one's, and a past period is corrected by its own command, the original kept.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::governed::{Claims, Governed};
use crate::money::{Amount, Currency};
use crate::provider::Provider;
use crate::text::{parse_line, DisplayName, InvalidText, Slug};

/// Scope of the per-tenant unique model reference.
pub const MODEL_REFERENCE_SCOPE: &str = "model_reference";

/// A provider's own identifier of a model (`gpt-4o-mini`, `claude-3-5-sonnet-20241022`).
pub fn parse_model_id(field: &'static str, text: &str) -> Result<String, InvalidText> {
    let id = parse_line(field, text, 200)?;
    if id.chars().any(char::is_whitespace) {
        return Err(InvalidText::new(field, "must not contain white space"));
    }
    Ok(id)
}

/// A model named by its id and its reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub id: Uuid,
    pub reference: String,
}

/// What still refers to a model when it is deprecated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referrer {
    /// `prompt_version` (a version behind a label) or `budget` (a budget over the model).
    pub kind: String,
    pub id: String,
    /// For a prompt version: its number, and the labels pointing at it.
    pub version: Option<u32>,
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    #[default]
    Active,
    Inactive,
    Deprecated,
}

impl ModelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Active => "active",
            ModelStatus::Inactive => "inactive",
            ModelStatus::Deprecated => "deprecated",
        }
    }
}

/// A price per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_mtok: Amount,
    pub output_per_mtok: Amount,
    pub cached_input_per_mtok: Option<Amount>,
    pub currency: Currency,
}

/// A price from `effective_from` until the next period's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePeriod {
    pub effective_from: DateTime<Utc>,
    pub price: Price,
    /// The figures first recorded, when the period has been corrected since.
    pub original: Option<Price>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelCommand {
    RegisterModel {
        tenant: String,
        provider: ModelProvider,
        model_id: String,
        name: DisplayName,
        context_window: Option<u32>,
        capabilities: BTreeSet<Slug>,
        default_params: Option<Value>,
        fallback: Option<ModelRef>,
    },
    ActivateModel,
    DeactivateModel,
    /// `still_referenced` is looked up by the caller, and recorded for subscribers to act on.
    DeprecateModel {
        replacement: Option<ModelRef>,
        still_referenced: Vec<Referrer>,
    },
    /// A new period; it must start after every existing one.
    SetPrice {
        effective_from: DateTime<Utc>,
        price: Price,
    },
    /// New figures for the period starting at `effective_from`, the original kept.
    CorrectPrice {
        effective_from: DateTime<Utc>,
        price: Price,
    },
    /// Withdraws the last period (it was set by mistake, or a bulk job is undone): the
    /// price in force is the previous period's again. Its record stays in the log.
    WithdrawPrice {
        effective_from: DateTime<Utc>,
    },
    /// The parameters used when a prompt version names none; `None` clears them.
    SetDefaultParams {
        default_params: Option<Value>,
    },
}

/// The provider a model is registered under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelProvider {
    pub id: Uuid,
    pub name: String,
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelEvent {
    ModelRegistered {
        tenant: String,
        provider_id: Uuid,
        provider_name: String,
        model_id: String,
        reference: String,
        name: String,
        context_window: Option<u32>,
        capabilities: Vec<String>,
        default_params: Option<Value>,
        fallback: Option<ModelRef>,
    },
    ModelActivated,
    ModelDeactivated,
    ModelDeprecated {
        replacement: Option<ModelRef>,
        still_referenced: Vec<Referrer>,
    },
    ModelPriceSet {
        effective_from: DateTime<Utc>,
        price: Price,
    },
    ModelPriceCorrected {
        effective_from: DateTime<Utc>,
        price: Price,
        /// The figures the period held before this correction.
        previous: Price,
    },
    /// The last period, withdrawn with the figures it had.
    ModelPriceWithdrawn {
        effective_from: DateTime<Utc>,
        price: Price,
    },
    ModelDefaultParamsSet {
        default_params: Option<Value>,
        previous: Option<Value>,
    },
}

impl DomainEvent for ModelEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ModelRegistered { .. } => "ModelRegistered",
            Self::ModelActivated => "ModelActivated",
            Self::ModelDeactivated => "ModelDeactivated",
            Self::ModelDeprecated { .. } => "ModelDeprecated",
            Self::ModelPriceSet { .. } => "ModelPriceSet",
            Self::ModelPriceCorrected { .. } => "ModelPriceCorrected",
            Self::ModelPriceWithdrawn { .. } => "ModelPriceWithdrawn",
            Self::ModelDefaultParamsSet { .. } => "ModelDefaultParamsSet",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("no such model")]
    NotFound,
    #[error("a model with this id already exists")]
    AlreadyExists,
    #[error("a model cannot be its own fallback or replacement")]
    RefersToItself,
    #[error(
        "a new price period must start after the last one ({last}); to change a past period, \
         correct it"
    )]
    PeriodNotAfterLast { last: DateTime<Utc> },
    #[error("no price period starts at {0}")]
    NoSuchPeriod(DateTime<Utc>),
    #[error("only the last price period can be withdrawn; it starts at {last}")]
    NotLastPeriod { last: DateTime<Utc> },
}

/// The decision state of a model; also what a point-in-time read renders.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub tenant: Option<String>,
    pub reference: String,
    pub provider_id: Option<Uuid>,
    pub provider_name: String,
    pub model_id: String,
    pub name: String,
    pub context_window: Option<u32>,
    pub capabilities: Vec<String>,
    pub default_params: Option<Value>,
    pub fallback: Option<ModelRef>,
    pub status: ModelStatus,
    pub replacement: Option<ModelRef>,
    /// What still referred to the model when it was last deprecated.
    pub still_referenced: Vec<Referrer>,
    /// Price periods in order of their start.
    pub prices: Vec<PricePeriod>,
}

impl Model {
    /// The period in force at `at`: the last to start at or before it.
    pub fn price_at(&self, at: DateTime<Utc>) -> Option<&PricePeriod> {
        self.prices
            .iter()
            .rev()
            .find(|period| period.effective_from <= at)
    }
}

impl Aggregate for Model {
    /// Keys every stored model event: changing it orphans the history.
    const TYPE: &'static str = "model";
    type Command = ModelCommand;
    type Event = ModelEvent;
    type Error = ModelError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ModelCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ModelError> {
        use ModelCommand::*;
        match command {
            RegisterModel { .. } if self.tenant.is_some() => return Err(ModelError::AlreadyExists),
            RegisterModel {
                tenant,
                provider,
                model_id,
                name,
                context_window,
                capabilities,
                default_params,
                fallback,
            } => {
                let reference = format!("{}/{model_id}", provider.name);
                if fallback.as_ref().is_some_and(|f| f.reference == reference) {
                    return Err(ModelError::RefersToItself);
                }
                let event = ModelEvent::ModelRegistered {
                    tenant,
                    provider_id: provider.id,
                    provider_name: provider.name,
                    model_id,
                    reference,
                    name: name.as_ref().to_string(),
                    context_window,
                    capabilities: capabilities.iter().map(ToString::to_string).collect(),
                    default_params,
                    fallback,
                };
                sink.write(event, self).await;
            }
            _ if self.tenant.is_none() => return Err(ModelError::NotFound),
            ActivateModel if self.status != ModelStatus::Active => {
                sink.write(ModelEvent::ModelActivated, self).await
            }
            DeactivateModel if self.status != ModelStatus::Inactive => {
                sink.write(ModelEvent::ModelDeactivated, self).await
            }
            ActivateModel | DeactivateModel => {}
            DeprecateModel {
                replacement,
                still_referenced,
            } => {
                if replacement
                    .as_ref()
                    .is_some_and(|r| r.reference == self.reference)
                {
                    return Err(ModelError::RefersToItself);
                }
                let event = ModelEvent::ModelDeprecated {
                    replacement,
                    still_referenced,
                };
                sink.write(event, self).await;
            }
            SetPrice {
                effective_from,
                price,
            } => {
                if let Some(last) = self
                    .prices
                    .last()
                    .filter(|last| last.effective_from >= effective_from)
                {
                    return Err(ModelError::PeriodNotAfterLast {
                        last: last.effective_from,
                    });
                }
                sink.write(
                    ModelEvent::ModelPriceSet {
                        effective_from,
                        price,
                    },
                    self,
                )
                .await;
            }
            CorrectPrice {
                effective_from,
                price,
            } => {
                let Some(period) = self.prices.iter().find(|p| p.effective_from == effective_from) else {
                    return Err(ModelError::NoSuchPeriod(effective_from));
                };
                if period.price != price {
                    let event = ModelEvent::ModelPriceCorrected {
                        effective_from,
                        previous: period.price.clone(),
                        price,
                    };
                    sink.write(event, self).await;
                }
            }
            WithdrawPrice { effective_from } => {
                let Some(last) = self.prices.last() else {
                    return Err(ModelError::NoSuchPeriod(effective_from));
                };
                if last.effective_from != effective_from {
                    if self.prices.iter().any(|p| p.effective_from == effective_from) {
                        return Err(ModelError::NotLastPeriod {
                            last: last.effective_from,
                        });
                    }
                    return Err(ModelError::NoSuchPeriod(effective_from));
                }
                let event = ModelEvent::ModelPriceWithdrawn {
                    effective_from,
                    price: last.price.clone(),
                };
                sink.write(event, self).await;
            }
            SetDefaultParams { default_params } => {
                if default_params != self.default_params {
                    let event = ModelEvent::ModelDefaultParamsSet {
                        default_params,
                        previous: self.default_params.clone(),
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ModelEvent) {
        match event {
            ModelEvent::ModelRegistered {
                tenant,
                provider_id,
                provider_name,
                model_id,
                reference,
                name,
                context_window,
                capabilities,
                default_params,
                fallback,
            } => {
                self.tenant = Some(tenant);
                self.provider_id = Some(provider_id);
                self.provider_name = provider_name;
                self.model_id = model_id;
                self.reference = reference;
                self.name = name;
                self.context_window = context_window;
                self.capabilities = capabilities;
                self.default_params = default_params;
                self.fallback = fallback;
                self.status = ModelStatus::Active;
            }
            ModelEvent::ModelActivated => {
                self.status = ModelStatus::Active;
                self.replacement = None;
            }
            ModelEvent::ModelDeactivated => {
                self.status = ModelStatus::Inactive;
                self.replacement = None;
            }
            ModelEvent::ModelDeprecated {
                replacement,
                still_referenced,
            } => {
                self.status = ModelStatus::Deprecated;
                self.replacement = replacement;
                self.still_referenced = still_referenced;
            }
            ModelEvent::ModelPriceSet {
                effective_from,
                price,
            } => self.prices.push(PricePeriod {
                effective_from,
                price,
                original: None,
            }),
            ModelEvent::ModelPriceCorrected {
                effective_from,
                price,
                previous,
            } => {
                if let Some(period) = self
                    .prices
                    .iter_mut()
                    .find(|p| p.effective_from == effective_from)
                {
                    period.original.get_or_insert(previous);
                    period.price = price;
                }
            }
            ModelEvent::ModelPriceWithdrawn { effective_from, .. } => {
                self.prices.retain(|p| p.effective_from != effective_from);
            }
            ModelEvent::ModelDefaultParamsSet { default_params, .. } => self.default_params = default_params,
        }
    }
}

impl Governed for Model {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Its reference, unique per tenant; its provider, which must exist; its fallback and
    /// replacement, which must be models of the tenant (one reference per model referred to,
    /// however many roles it has). Other models may refer to it.
    fn claims(&self, events: &[ModelEvent]) -> Claims {
        let mut claims = Claims::default();
        let referred = |fallback: Option<&ModelRef>, replacement: Option<&ModelRef>| -> BTreeSet<String> {
            fallback
                .into_iter()
                .chain(replacement)
                .map(|m| m.id.to_string())
                .collect()
        };
        let mut fallback = self.fallback.clone();
        let mut replacement = self.replacement.clone();
        for event in events {
            let before = referred(fallback.as_ref(), replacement.as_ref());
            match event {
                ModelEvent::ModelRegistered {
                    reference,
                    provider_id,
                    fallback: new,
                    ..
                } => {
                    claims = claims
                        .claim(MODEL_REFERENCE_SCOPE, reference)
                        .register(Self::TYPE)
                        .refer(Provider::TYPE, &provider_id.to_string());
                    fallback = new.clone();
                }
                ModelEvent::ModelDeprecated { replacement: new, .. } => replacement = new.clone(),
                ModelEvent::ModelActivated | ModelEvent::ModelDeactivated => replacement = None,
                ModelEvent::ModelPriceSet { .. }
                | ModelEvent::ModelPriceCorrected { .. }
                | ModelEvent::ModelPriceWithdrawn { .. }
                | ModelEvent::ModelDefaultParamsSet { .. } => {}
            }
            let after = referred(fallback.as_ref(), replacement.as_ref());
            for gone in before.difference(&after) {
                claims = claims.unrefer(Self::TYPE, gone);
            }
            for new in after.difference(&before) {
                claims = claims.refer(Self::TYPE, new);
            }
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn price(input: &str, output: &str) -> Price {
        Price {
            input_per_mtok: Amount::parse("input", input).unwrap(),
            output_per_mtok: Amount::parse("output", output).unwrap(),
            cached_input_per_mtok: None,
            currency: Currency::parse("currency", "USD").unwrap(),
        }
    }

    fn registered() -> ModelEvent {
        ModelEvent::ModelRegistered {
            tenant: "acme".into(),
            provider_id: Uuid::nil(),
            provider_name: "openai".into(),
            model_id: "gpt-4o-mini".into(),
            reference: "openai/gpt-4o-mini".into(),
            name: "GPT-4o mini".into(),
            context_window: Some(128_000),
            capabilities: vec![],
            default_params: None,
            fallback: None,
        }
    }

    fn set(from: &str, input: &str) -> ModelEvent {
        ModelEvent::ModelPriceSet {
            effective_from: at(from),
            price: price(input, "0.60"),
        }
    }

    #[test]
    fn a_new_period_must_start_after_the_last_one() {
        TestFramework::<Model>::with(())
            .given(vec![registered(), set("2026-01-01T00:00:00Z", "0.15")])
            .when(ModelCommand::SetPrice {
                effective_from: at("2025-12-01T00:00:00Z"),
                price: price("0.10", "0.60"),
            })
            .then_expect_error(ModelError::PeriodNotAfterLast {
                last: at("2026-01-01T00:00:00Z"),
            });
    }

    #[test]
    fn a_correction_names_its_period_and_keeps_what_it_replaces() {
        TestFramework::<Model>::with(())
            .given(vec![registered(), set("2026-01-01T00:00:00Z", "0.15")])
            .when(ModelCommand::CorrectPrice {
                effective_from: at("2026-01-01T00:00:00Z"),
                price: price("0.12", "0.60"),
            })
            .then_expect_events(vec![ModelEvent::ModelPriceCorrected {
                effective_from: at("2026-01-01T00:00:00Z"),
                price: price("0.12", "0.60"),
                previous: price("0.15", "0.60"),
            }]);
        TestFramework::<Model>::with(())
            .given(vec![registered(), set("2026-01-01T00:00:00Z", "0.15")])
            .when(ModelCommand::CorrectPrice {
                effective_from: at("2026-02-01T00:00:00Z"),
                price: price("0.12", "0.60"),
            })
            .then_expect_error(ModelError::NoSuchPeriod(at("2026-02-01T00:00:00Z")));
    }

    #[test]
    fn the_price_in_force_is_the_last_period_started_and_a_corrected_one_shows_its_original() {
        let mut model = Model::default();
        for event in [
            registered(),
            set("2026-01-01T00:00:00Z", "0.15"),
            set("2026-03-01T00:00:00Z", "0.20"),
            ModelEvent::ModelPriceCorrected {
                effective_from: at("2026-01-01T00:00:00Z"),
                price: price("0.12", "0.60"),
                previous: price("0.15", "0.60"),
            },
        ] {
            model.apply(event);
        }
        assert!(model.price_at(at("2025-12-31T23:59:59Z")).is_none());
        let january = model.price_at(at("2026-02-28T23:59:59Z")).unwrap();
        assert_eq!(january.price, price("0.12", "0.60"));
        assert_eq!(january.original, Some(price("0.15", "0.60")));
        assert_eq!(
            model.price_at(at("2026-03-01T00:00:00Z")).unwrap().price,
            price("0.20", "0.60")
        );
    }

    #[test]
    fn a_model_refers_to_its_provider_and_its_replacement_and_holds_its_reference() {
        let claims = Model::default().claims(&[registered()]);
        assert_eq!(
            claims.claimed,
            vec![(MODEL_REFERENCE_SCOPE, "openai/gpt-4o-mini".to_string())]
        );
        assert_eq!(claims.referenced, vec![(Provider::TYPE, Uuid::nil().to_string())]);
        let mut model = Model::default();
        model.apply(registered());
        let next = ModelRef {
            id: Uuid::from_u128(7),
            reference: "openai/gpt-5-mini".into(),
        };
        let deprecated = ModelEvent::ModelDeprecated {
            replacement: Some(next.clone()),
            still_referenced: vec![],
        };
        let claims = model.claims(std::slice::from_ref(&deprecated));
        assert_eq!(claims.referenced, vec![(Model::TYPE, next.id.to_string())]);
        model.apply(deprecated);
        assert_eq!(
            model.claims(&[ModelEvent::ModelActivated]).unreferenced,
            vec![(Model::TYPE, next.id.to_string())]
        );
        // A replacement that is also the fallback is one reference, kept while either holds.
        model.fallback = Some(next.clone());
        let again = ModelEvent::ModelDeprecated {
            replacement: Some(next.clone()),
            still_referenced: vec![],
        };
        let claims = model.claims(&[ModelEvent::ModelActivated, again]);
        assert!(
            claims.referenced.is_empty() && claims.unreferenced.is_empty(),
            "{claims:?}"
        );
    }
}
