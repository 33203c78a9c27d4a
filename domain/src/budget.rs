//! The `Budget` aggregate: how much a tenant means to spend on a scope (the whole tenant, a
//! model, a prompt, a feature, an API key) per period, the thresholds to warn at, and whether
//! going over only warns (`soft`) or refuses (`hard`). Spend arrives with usage.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::governed::{Claims, Governed};
use crate::money::{Amount, Currency};
use crate::text::{DisplayName, InvalidText, Slug};

/// Scope of the per-tenant unique budget name.
pub const BUDGET_NAME_SCOPE: &str = "budget_name";
/// Most thresholds a budget has.
const MAX_THRESHOLDS: usize = 10;
/// Highest threshold, in percent of the amount.
const MAX_THRESHOLD: u32 = 1_000;

/// What a budget's spend is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    Tenant,
    Model,
    Prompt,
    Feature,
    Key,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 5] = [Self::Tenant, Self::Model, Self::Prompt, Self::Feature, Self::Key];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Model => "model",
            Self::Prompt => "prompt",
            Self::Feature => "feature",
            Self::Key => "key",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| InvalidText::new(field, "must be one of tenant, model, prompt, feature, key"))
    }
}

/// The scope's kind and, except for the tenant, what it names: a model's reference, a
/// prompt's or key's id, a feature's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetScope {
    pub kind: ScopeKind,
    pub id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        [Self::Daily, Self::Weekly, Self::Monthly]
            .into_iter()
            .find(|period| period.as_str() == text)
            .ok_or_else(|| InvalidText::new(field, "must be one of daily, weekly, monthly"))
    }

    /// The period holding `at`: its first day and the first day after it, in UTC (a week
    /// starts on Monday, a month on its first).
    pub fn bounds(self, at: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
        let day = at.date_naive();
        match self {
            Self::Daily => (day, day + Days::new(1)),
            Self::Weekly => {
                let start = day - Days::new(u64::from(day.weekday().num_days_from_monday()));
                (start, start + Days::new(7))
            }
            Self::Monthly => {
                let start = day.with_day(1).unwrap_or(day);
                (start, start + Months::new(1))
            }
        }
    }
}

/// Where a budget stands in its current period.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStanding {
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub spent: Decimal,
    /// The amount less what was spent: negative once over.
    pub remaining: Decimal,
    /// Spent in percent of the amount, to two decimals.
    pub percent_used: Decimal,
    /// What will have been spent at the period's end if spending goes on at its pace so far.
    pub forecast_end_of_period: Decimal,
    /// Days of the period after today's.
    pub days_left: u32,
    /// The thresholds (percent) reached.
    pub thresholds_crossed: Vec<u32>,
    /// A hard budget whose amount is spent: further spend is to be refused.
    pub exhausted: bool,
}

/// Where a budget with `terms` over `period` stands at `now`, having spent `spent` in it.
pub fn standing(terms: &BudgetTerms, period: Period, spent: Decimal, now: DateTime<Utc>) -> BudgetStanding {
    let (start, end) = period.bounds(now);
    let amount = terms.amount.value();
    let percent_used = if amount.is_zero() {
        if spent.is_zero() {
            Decimal::ZERO
        } else {
            Decimal::ONE_HUNDRED
        }
    } else {
        (spent * Decimal::ONE_HUNDRED / amount).round_dp(2)
    };
    let start_at = start.and_time(NaiveTime::MIN).and_utc();
    let length = (end - start).num_seconds();
    let elapsed = (now - start_at).num_seconds().clamp(1, length.max(1));
    let forecast = (spent * Decimal::from(length) / Decimal::from(elapsed)).round_dp(10);
    let today = now.date_naive();
    BudgetStanding {
        period_start: start,
        period_end: end,
        spent: spent.normalize(),
        remaining: (amount - spent).normalize(),
        percent_used: percent_used.normalize(),
        forecast_end_of_period: forecast.normalize(),
        days_left: u32::try_from((end - today).num_days() - 1).unwrap_or(0),
        thresholds_crossed: terms
            .thresholds
            .iter()
            .copied()
            .filter(|t| percent_used >= Decimal::from(*t))
            .collect(),
        exhausted: terms.enforcement == Enforcement::Hard && spent >= amount,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Going over warns.
    Soft,
    /// Going over refuses further spend in the period.
    Hard,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Soft => "soft",
            Self::Hard => "hard",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        [Self::Soft, Self::Hard]
            .into_iter()
            .find(|e| e.as_str() == text)
            .ok_or_else(|| InvalidText::new(field, "must be soft or hard"))
    }
}

/// Thresholds in percent of the amount (`[50, 80, 100]`): 1 to 1000, at most 10; a set,
/// kept in ascending order.
pub fn parse_thresholds(field: &'static str, thresholds: &[u32]) -> Result<Vec<u32>, InvalidText> {
    if thresholds.len() > MAX_THRESHOLDS {
        return Err(InvalidText::new(field, "must list at most 10 percentages"));
    }
    let mut sorted = thresholds.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.iter().any(|t| !(1..=MAX_THRESHOLD).contains(t)) {
        return Err(InvalidText::new(
            field,
            "each must be a percentage from 1 to 1000",
        ));
    }
    Ok(sorted)
}

/// A feature scope's id: a slug.
pub fn parse_feature(field: &'static str, text: &str) -> Result<String, InvalidText> {
    Ok(Slug::parse(field, text)?.to_string())
}

/// What a budget is set to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetTerms {
    pub amount: Amount,
    pub currency: Currency,
    pub thresholds: Vec<u32>,
    pub enforcement: Enforcement,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BudgetCommand {
    DefineBudget {
        tenant: String,
        name: DisplayName,
        scope: BudgetScope,
        period: Period,
        terms: BudgetTerms,
    },
    /// Changes what is given; the scope and period stay (a budget over something else is
    /// another budget).
    ChangeBudget {
        name: Option<DisplayName>,
        amount: Option<Amount>,
        currency: Option<Currency>,
        thresholds: Option<Vec<u32>>,
        enforcement: Option<Enforcement>,
    },
    DeleteBudget,
    /// Records the thresholds the spend has reached in the period starting `period_start`
    /// (`percent_used` of the amount): each one not yet recorded in that period is crossed
    /// now, once.
    RecordSpend {
        period_start: NaiveDate,
        period_end: NaiveDate,
        spent: Decimal,
        percent_used: Decimal,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BudgetEvent {
    BudgetDefined {
        tenant: String,
        name: String,
        scope: BudgetScope,
        period: Period,
        terms: BudgetTerms,
    },
    /// The name and terms after the change, and the terms before it.
    BudgetChanged {
        name: String,
        terms: BudgetTerms,
        previous: BudgetTerms,
    },
    BudgetDeleted,
    /// A period of the budget began, as the budget watcher saw it (a budget's first period
    /// is recorded with its first threshold crossed): recorded once per period.
    BudgetPeriodStarted {
        period_start: NaiveDate,
        period_end: NaiveDate,
    },
    /// The spend in the period reached `threshold` percent of the amount: recorded once per
    /// threshold per period.
    BudgetThresholdCrossed {
        period_start: NaiveDate,
        period_end: NaiveDate,
        threshold: u32,
        spent: Decimal,
        amount: Decimal,
        currency: String,
        percent_used: Decimal,
    },
}

impl DomainEvent for BudgetEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BudgetDefined { .. } => "BudgetDefined",
            Self::BudgetChanged { .. } => "BudgetChanged",
            Self::BudgetDeleted => "BudgetDeleted",
            Self::BudgetPeriodStarted { .. } => "BudgetPeriodStarted",
            Self::BudgetThresholdCrossed { .. } => "BudgetThresholdCrossed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("no such budget")]
    NotFound,
    #[error("a budget with this id already exists")]
    AlreadyExists,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub tenant: Option<String>,
    pub name: String,
    pub scope: Option<BudgetScope>,
    pub period: Option<Period>,
    pub terms: Option<BudgetTerms>,
    pub deleted: bool,
    /// The latest period a threshold was crossed in, and the thresholds crossed in it.
    #[serde(default)]
    pub crossed: Option<(NaiveDate, Vec<u32>)>,
    /// The start of the latest period recorded as started.
    #[serde(default)]
    pub period_started: Option<NaiveDate>,
}

impl Aggregate for Budget {
    /// Keys every stored budget event: changing it orphans the history.
    const TYPE: &'static str = "budget";
    type Command = BudgetCommand;
    type Event = BudgetEvent;
    type Error = BudgetError;
    type Services = ();

    async fn handle(
        &mut self,
        command: BudgetCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), BudgetError> {
        match command {
            BudgetCommand::DefineBudget { .. } if self.tenant.is_some() => {
                return Err(BudgetError::AlreadyExists)
            }
            BudgetCommand::DefineBudget {
                tenant,
                name,
                scope,
                period,
                terms,
            } => {
                let event = BudgetEvent::BudgetDefined {
                    tenant,
                    name: name.as_ref().to_string(),
                    scope,
                    period,
                    terms,
                };
                sink.write(event, self).await;
            }
            _ if self.tenant.is_none() || self.deleted => return Err(BudgetError::NotFound),
            BudgetCommand::ChangeBudget {
                name,
                amount,
                currency,
                thresholds,
                enforcement,
            } => {
                let Some(previous) = self.terms.clone() else {
                    return Err(BudgetError::NotFound);
                };
                let terms = BudgetTerms {
                    amount: amount.unwrap_or(previous.amount),
                    currency: currency.unwrap_or_else(|| previous.currency.clone()),
                    thresholds: thresholds.unwrap_or_else(|| previous.thresholds.clone()),
                    enforcement: enforcement.unwrap_or(previous.enforcement),
                };
                let name = name.map_or_else(|| self.name.clone(), |n| n.as_ref().to_string());
                if terms != previous || name != self.name {
                    sink.write(
                        BudgetEvent::BudgetChanged {
                            name,
                            terms,
                            previous,
                        },
                        self,
                    )
                    .await;
                }
            }
            BudgetCommand::DeleteBudget => sink.write(BudgetEvent::BudgetDeleted, self).await,
            BudgetCommand::RecordSpend {
                period_start,
                period_end,
                spent,
                percent_used,
            } => {
                let Some(terms) = self.terms.clone() else {
                    return Err(BudgetError::NotFound);
                };
                if self.period_started.is_none_or(|started| started < period_start) {
                    let event = BudgetEvent::BudgetPeriodStarted {
                        period_start,
                        period_end,
                    };
                    sink.write(event, self).await;
                }
                let already: Vec<u32> = match &self.crossed {
                    Some((start, thresholds)) if *start == period_start => thresholds.clone(),
                    _ => Vec::new(),
                };
                for threshold in terms.thresholds.iter().copied() {
                    if percent_used >= Decimal::from(threshold) && !already.contains(&threshold) {
                        let event = BudgetEvent::BudgetThresholdCrossed {
                            period_start,
                            period_end,
                            threshold,
                            spent,
                            amount: terms.amount.value(),
                            currency: terms.currency.as_ref().to_string(),
                            percent_used,
                        };
                        sink.write(event, self).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: BudgetEvent) {
        match event {
            BudgetEvent::BudgetDefined {
                tenant,
                name,
                scope,
                period,
                terms,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.scope = Some(scope);
                self.period = Some(period);
                self.terms = Some(terms);
            }
            BudgetEvent::BudgetChanged { name, terms, .. } => {
                self.name = name;
                self.terms = Some(terms);
            }
            BudgetEvent::BudgetDeleted => self.deleted = true,
            BudgetEvent::BudgetPeriodStarted { period_start, .. } => self.period_started = Some(period_start),
            BudgetEvent::BudgetThresholdCrossed {
                period_start,
                threshold,
                ..
            } => match &mut self.crossed {
                Some((start, thresholds)) if *start == period_start => thresholds.push(threshold),
                _ => self.crossed = Some((period_start, vec![threshold])),
            },
        }
    }
}

impl Governed for Budget {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Its name, unique per tenant while it exists.
    fn claims(&self, events: &[BudgetEvent]) -> Claims {
        let mut claims = Claims::default();
        let mut name = self.name.clone();
        for event in events {
            match event {
                BudgetEvent::BudgetDefined { name: new, .. } => {
                    claims = claims.claim(BUDGET_NAME_SCOPE, new);
                    name = new.clone();
                }
                BudgetEvent::BudgetChanged { name: new, .. } if *new != name => {
                    claims = claims
                        .release(BUDGET_NAME_SCOPE, &name)
                        .claim(BUDGET_NAME_SCOPE, new);
                    name = new.clone();
                }
                BudgetEvent::BudgetChanged { .. }
                | BudgetEvent::BudgetPeriodStarted { .. }
                | BudgetEvent::BudgetThresholdCrossed { .. } => {}
                BudgetEvent::BudgetDeleted => claims = claims.release(BUDGET_NAME_SCOPE, &name),
            }
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_a_set_of_percentages_kept_in_order() {
        assert_eq!(
            parse_thresholds("t", &[100, 50, 80, 50]).unwrap(),
            vec![50, 80, 100]
        );
        for bad in [vec![0], vec![1001], (1..=11).collect()] {
            assert!(parse_thresholds("t", &bad).is_err(), "{bad:?}");
        }
        assert!(ScopeKind::parse("k", "team").is_err());
        assert!(Period::parse("p", "yearly").is_err());
    }

    #[test]
    fn a_period_is_the_utc_day_week_or_month_holding_the_instant() {
        let at: DateTime<Utc> = "2026-12-02T23:30:00Z".parse().unwrap();
        let day = |text: &str| text.parse::<NaiveDate>().unwrap();
        assert_eq!(Period::Daily.bounds(at), (day("2026-12-02"), day("2026-12-03")));
        assert_eq!(Period::Weekly.bounds(at), (day("2026-11-30"), day("2026-12-07")));
        assert_eq!(Period::Monthly.bounds(at), (day("2026-12-01"), day("2027-01-01")));
    }

    #[test]
    fn standing_forecasts_at_the_pace_so_far_and_names_the_thresholds_reached() {
        let terms = BudgetTerms {
            amount: Amount::parse("a", "100").unwrap(),
            currency: Currency::parse("c", "USD").unwrap(),
            thresholds: vec![50, 80, 100],
            enforcement: Enforcement::Hard,
        };
        // The 2nd of December at noon is 1.5 days into a 31-day month.
        let now: DateTime<Utc> = "2026-12-02T12:00:00Z".parse().unwrap();
        let standing = standing(&terms, Period::Monthly, Decimal::new(85, 0), now);
        assert_eq!(standing.percent_used, Decimal::new(85, 0));
        assert_eq!(standing.thresholds_crossed, vec![50, 80]);
        assert_eq!(standing.remaining, Decimal::new(15, 0));
        assert_eq!(standing.days_left, 29);
        // 85 spent in 1.5 of 31 days: 85 × 31 / 1.5.
        assert_eq!(
            standing.forecast_end_of_period.round_dp(2),
            Decimal::new(175667, 2)
        );
        assert!(!standing.exhausted);
        let over = super::standing(&terms, Period::Monthly, Decimal::new(100, 0), now);
        assert!(over.exhausted);
        assert_eq!(over.thresholds_crossed, vec![50, 80, 100]);
    }

    #[test]
    fn a_threshold_is_crossed_once_per_period() {
        use cqrs_es::test::TestFramework;
        let day = |text: &str| text.parse::<NaiveDate>().unwrap();
        let defined = BudgetEvent::BudgetDefined {
            tenant: "acme".into(),
            name: "LLM spend".into(),
            scope: BudgetScope {
                kind: ScopeKind::Tenant,
                id: None,
            },
            period: Period::Monthly,
            terms: BudgetTerms {
                amount: Amount::parse("a", "100").unwrap(),
                currency: Currency::parse("c", "USD").unwrap(),
                thresholds: vec![50, 80, 100],
                enforcement: Enforcement::Hard,
            },
        };
        let record = |start: &str, end: &str, spent: i64| BudgetCommand::RecordSpend {
            period_start: day(start),
            period_end: day(end),
            spent: Decimal::from(spent),
            percent_used: Decimal::from(spent),
        };
        let crossed =
            |start: &str, end: &str, threshold: u32, spent: i64| BudgetEvent::BudgetThresholdCrossed {
                period_start: day(start),
                period_end: day(end),
                threshold,
                spent: Decimal::from(spent),
                amount: Decimal::from(100),
                currency: "USD".into(),
                percent_used: Decimal::from(spent),
            };
        let started = |start: &str, end: &str| BudgetEvent::BudgetPeriodStarted {
            period_start: day(start),
            period_end: day(end),
        };
        // The period's first record starts it; 85 % crosses 50 and 80 at once.
        TestFramework::<Budget>::with(())
            .given(vec![defined.clone()])
            .when(record("2026-12-01", "2027-01-01", 85))
            .then_expect_events(vec![
                started("2026-12-01", "2027-01-01"),
                crossed("2026-12-01", "2027-01-01", 50, 85),
                crossed("2026-12-01", "2027-01-01", 80, 85),
            ]);
        // Recorded already in this period: nothing again, only what is new.
        TestFramework::<Budget>::with(())
            .given(vec![
                defined.clone(),
                started("2026-12-01", "2027-01-01"),
                crossed("2026-12-01", "2027-01-01", 50, 60),
            ])
            .when(record("2026-12-01", "2027-01-01", 85))
            .then_expect_events(vec![crossed("2026-12-01", "2027-01-01", 80, 85)]);
        // A new period starts afresh.
        TestFramework::<Budget>::with(())
            .given(vec![
                defined,
                started("2026-11-01", "2026-12-01"),
                crossed("2026-11-01", "2026-12-01", 50, 60),
            ])
            .when(record("2026-12-01", "2027-01-01", 55))
            .then_expect_events(vec![
                started("2026-12-01", "2027-01-01"),
                crossed("2026-12-01", "2027-01-01", 50, 55),
            ]);
    }

    #[test]
    fn a_deleted_budget_releases_its_name_which_is_unique_whatever_its_case() {
        let mut budget = Budget::default();
        budget.apply(BudgetEvent::BudgetDefined {
            tenant: "acme".into(),
            name: "LLM spend".into(),
            scope: BudgetScope {
                kind: ScopeKind::Tenant,
                id: None,
            },
            period: Period::Monthly,
            terms: BudgetTerms {
                amount: Amount::parse("a", "100").unwrap(),
                currency: Currency::parse("c", "USD").unwrap(),
                thresholds: vec![50, 100],
                enforcement: Enforcement::Soft,
            },
        });
        let claims = budget.claims(&[BudgetEvent::BudgetDeleted]);
        assert_eq!(
            claims.released,
            vec![(BUDGET_NAME_SCOPE, "llm spend".to_string())]
        );
    }
}
