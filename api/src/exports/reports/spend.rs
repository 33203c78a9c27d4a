//! `spend`: a month's spending with its budget analysis. Parameter: `month` (`YYYY-MM`; by
//! default the month of the report's point).
//!
//! Every figure is computed from the usage records made in the month and received by the
//! point, priced with the prices known at the point (`super::Prices`), so a report of a
//! past instant shows what the spend was then, at the prices then. Sections: the totals per
//! currency, each day, per model, prompt, feature and key, each budget's standing and
//! forecast, and the usage no price covered.

use std::collections::BTreeMap;

use chrono::{Days, Months, NaiveDate};
use domain::access::ApiKey;
use domain::budget::{Budget, Period};
use domain::prompt::Prompt;
use futures::StreamExt;
use projections::export::sources::{self, fold_all};
use reports::{Cell, Chart, ChartKind, Column, ColumnKind, Section};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{month_of, month_param, start_of, Prices, ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &[
    "summary",
    "daily",
    "by_model",
    "by_prompt",
    "by_feature",
    "by_key",
    "budgets",
    "uncosted",
];

/// The month's first and last day.
pub fn period(input: &ReportInput<'_>) -> (NaiveDate, NaiveDate) {
    let first = input
        .params
        .get("month")
        .and_then(|value| month_param(value).ok())
        .unwrap_or_else(|| month_of(input.point.instant.date_naive()));
    (first, first + Months::new(1) - Days::new(1))
}

/// Usage summed over one combination of what the sections group by.
#[derive(Debug, Clone, Default)]
struct Sums {
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost: Decimal,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.calls += other.calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost += other.cost;
    }
}

/// `(day, model, prompt, feature, key, currency)`; no currency: not costed.
type Key = (
    NaiveDate,
    String,
    Option<Uuid>,
    Option<String>,
    Uuid,
    Option<String>,
);

fn money_columns(first: Vec<Column>, currency_at: usize) -> Vec<Column> {
    let mut columns = first;
    columns.extend([
        Column::new("currency", ColumnKind::Text),
        Column::new("calls", ColumnKind::Integer),
        Column::new("input_tokens", ColumnKind::Integer),
        Column::new("output_tokens", ColumnKind::Integer),
        Column::new(
            "cost",
            ColumnKind::Money {
                currency_column: Some(currency_at),
            },
        ),
        Column::new("share_of_cost", ColumnKind::Percent),
    ]);
    columns
}

fn money_cells(mut first: Vec<Cell>, currency: &str, sums: &Sums, total: Decimal) -> Vec<Cell> {
    let share = if total.is_zero() {
        Cell::Empty
    } else {
        (sums.cost / total).to_f64().map_or(Cell::Empty, Cell::Percent)
    };
    first.extend([
        Cell::text(currency),
        Cell::Integer(sums.calls),
        Cell::Integer(sums.input_tokens),
        Cell::Integer(sums.output_tokens),
        Cell::Money(sums.cost.normalize()),
        share,
    ]);
    first
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    let (first_day, last_day) = period(input);
    let month_end = last_day + Days::new(1);
    let prices = Prices::at(input).await?;
    let budgets: Vec<(String, Budget)> = fold_all::<Budget>(input.pool, input.tenant, input.point)
        .await?
        .into_iter()
        .filter(|(_, budget)| !budget.deleted)
        .collect();
    // Budgets stand where they stood at the point, or at the month's last moment for a
    // month already over.
    let reference = input
        .point
        .instant
        .min(start_of(month_end) - chrono::Duration::milliseconds(1));
    let budget_periods: Vec<(NaiveDate, NaiveDate)> = budgets
        .iter()
        .filter_map(|(_, budget)| budget.period.map(|period| period.bounds(reference)))
        .collect();
    let scan_from = budget_periods
        .iter()
        .map(|p| p.0)
        .chain([first_day])
        .min()
        .unwrap_or(first_day);
    let scan_to = budget_periods
        .iter()
        .map(|p| p.1)
        .chain([month_end])
        .max()
        .unwrap_or(month_end);

    let mut sums: BTreeMap<Key, Sums> = BTreeMap::new();
    let range = (start_of(scan_from), start_of(scan_to));
    let mut records = std::pin::pin!(sources::usage(
        input.pool,
        input.tenant,
        range,
        input.point.instant
    ));
    while let Some(record) = records.next().await {
        let record = record?;
        let cost = prices.cost(&record);
        let key: Key = (
            record.ts.date_naive(),
            record.model.clone(),
            record.prompt_id,
            record.feature.clone(),
            record.key_id,
            cost.as_ref().map(|cost| cost.currency.clone()),
        );
        let entry = sums.entry(key).or_default();
        entry.calls += 1;
        entry.input_tokens += record.input_tokens;
        entry.output_tokens += record.output_tokens;
        entry.cost += cost.map_or(Decimal::ZERO, |cost| cost.amount);
    }
    let in_month = |day: &NaiveDate| *day >= first_day && *day < month_end;

    // Totals per currency, from which shares are taken.
    let mut totals: BTreeMap<String, Sums> = BTreeMap::new();
    let mut uncosted: BTreeMap<String, Sums> = BTreeMap::new();
    for (key, value) in sums.iter().filter(|(key, _)| in_month(&key.0)) {
        match &key.5 {
            Some(currency) => totals.entry(currency.clone()).or_default().add(value),
            None => uncosted.entry(key.1.clone()).or_default().add(value),
        }
    }
    let total_of = |currency: &str| totals.get(currency).map_or(Decimal::ZERO, |sums| sums.cost);

    sink.section(Section {
        name: "summary".into(),
        title: "Spend by currency".into(),
        columns: vec![
            Column::new("currency", ColumnKind::Text),
            Column::new("calls", ColumnKind::Integer),
            Column::new("input_tokens", ColumnKind::Integer),
            Column::new("output_tokens", ColumnKind::Integer),
            Column::new(
                "cost",
                ColumnKind::Money {
                    currency_column: Some(0),
                },
            ),
            Column::new("uncosted_calls", ColumnKind::Integer),
        ],
        charts: Vec::new(),
    })
    .await?;
    let uncosted_calls: i64 = uncosted.values().map(|sums| sums.calls).sum();
    for (currency, value) in &totals {
        sink.row(vec![
            Cell::text(currency),
            Cell::Integer(value.calls),
            Cell::Integer(value.input_tokens),
            Cell::Integer(value.output_tokens),
            Cell::Money(value.cost.normalize()),
            Cell::Integer(uncosted_calls),
        ])
        .await?;
    }
    if totals.is_empty() && uncosted_calls > 0 {
        sink.row(vec![
            Cell::Empty,
            Cell::Integer(0),
            Cell::Integer(0),
            Cell::Integer(0),
            Cell::Empty,
            Cell::Integer(uncosted_calls),
        ])
        .await?;
    }

    // Daily spend, against the daily pace of the tenant's monthly budget when it has one in
    // the month's main currency.
    let main_currency = totals
        .iter()
        .max_by(|a, b| a.1.cost.cmp(&b.1.cost))
        .map(|(currency, _)| currency.clone());
    let days_in_month = (month_end - first_day).num_days().max(1);
    let budget_line = budgets.iter().find_map(|(_, budget)| {
        let terms = budget.terms.as_ref()?;
        let tenant_wide = budget
            .scope
            .as_ref()
            .is_some_and(|scope| scope.kind == domain::budget::ScopeKind::Tenant);
        (tenant_wide
            && budget.period == Some(Period::Monthly)
            && Some(terms.currency.as_ref()) == main_currency.as_deref())
        .then(|| {
            let per_day = terms.amount.value() / Decimal::from(days_in_month);
            (
                format!(
                    "budget per day ({} {}/month)",
                    terms.amount.value().normalize(),
                    terms.currency.as_ref()
                ),
                per_day.to_f64().unwrap_or(0.0),
            )
        })
    });
    sink.section(Section {
        name: "daily".into(),
        title: "Spend per day".into(),
        columns: vec![
            Column::new("day", ColumnKind::Date),
            Column::new("currency", ColumnKind::Text),
            Column::new("calls", ColumnKind::Integer),
            Column::new(
                "cost",
                ColumnKind::Money {
                    currency_column: Some(1),
                },
            ),
        ],
        charts: vec![Chart {
            title: "Daily spend".into(),
            kind: ChartKind::Bars {
                category: 0,
                value: 3,
                line: budget_line,
            },
        }],
    })
    .await?;
    let mut daily: BTreeMap<(NaiveDate, String), Sums> = BTreeMap::new();
    for (key, value) in sums.iter().filter(|(key, _)| in_month(&key.0)) {
        if let Some(currency) = &key.5 {
            daily.entry((key.0, currency.clone())).or_default().add(value);
        }
    }
    for ((day, currency), value) in &daily {
        sink.row(vec![
            Cell::Date(*day),
            Cell::text(currency),
            Cell::Integer(value.calls),
            Cell::Money(value.cost.normalize()),
        ])
        .await?;
    }

    // Breakdowns: by what a record names, with the names known at the point.
    let prompt_names: BTreeMap<String, String> = fold_all::<Prompt>(input.pool, input.tenant, input.point)
        .await?
        .into_iter()
        .map(|(id, prompt)| (id, prompt.name))
        .collect();
    let key_names: BTreeMap<String, String> = fold_all::<ApiKey>(input.pool, input.tenant, input.point)
        .await?
        .into_iter()
        .map(|(id, key)| (id, key.name))
        .collect();
    let breakdowns: [(&str, &str, Vec<&str>); 4] = [
        ("by_model", "Spend per model", vec!["model"]),
        ("by_prompt", "Spend per prompt", vec!["prompt_id", "prompt_name"]),
        ("by_feature", "Spend per feature", vec!["feature"]),
        ("by_key", "Spend per API key", vec!["key_id", "key_name"]),
    ];
    for (name, title, first) in breakdowns {
        let first_columns: Vec<Column> = first
            .iter()
            .map(|column| Column::new(column, ColumnKind::Text))
            .collect();
        let currency_at = first_columns.len();
        sink.section(Section {
            name: name.into(),
            title: title.into(),
            columns: money_columns(first_columns, currency_at),
            charts: Vec::new(),
        })
        .await?;
        let mut grouped: BTreeMap<(Vec<Option<String>>, String), Sums> = BTreeMap::new();
        for (key, value) in sums.iter().filter(|(key, _)| in_month(&key.0)) {
            let Some(currency) = &key.5 else { continue };
            let id: Vec<Option<String>> = match name {
                "by_model" => vec![Some(key.1.clone())],
                "by_prompt" => {
                    let id = key.2.map(|id| id.to_string());
                    let label = id.as_ref().and_then(|id| prompt_names.get(id).cloned());
                    vec![id, label]
                }
                "by_feature" => vec![key.3.clone()],
                _ => {
                    let id = key.4.to_string();
                    let label = key_names.get(&id).cloned();
                    vec![Some(id), label]
                }
            };
            grouped.entry((id, currency.clone())).or_default().add(value);
        }
        // Largest cost first, as a reader looks for it; ties in key order, so the same
        // data always gives the same rows.
        let mut rows: Vec<_> = grouped.into_iter().collect();
        rows.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(&b.0)));
        for ((id, currency), value) in rows {
            let first: Vec<Cell> = id.into_iter().map(Cell::optional_text).collect();
            sink.row(money_cells(first, &currency, &value, total_of(&currency)))
                .await?;
        }
    }

    sink.section(Section {
        name: "budgets".into(),
        title: "Budgets: standing and forecast".into(),
        columns: vec![
            Column::new("name", ColumnKind::Text),
            Column::new("scope", ColumnKind::Text),
            Column::new("period_start", ColumnKind::Date),
            Column::new("currency", ColumnKind::Text),
            Column::new(
                "amount",
                ColumnKind::Money {
                    currency_column: Some(3),
                },
            ),
            Column::new(
                "spent",
                ColumnKind::Money {
                    currency_column: Some(3),
                },
            ),
            Column::new("used", ColumnKind::Percent),
            Column::new(
                "forecast",
                ColumnKind::Money {
                    currency_column: Some(3),
                },
            ),
            Column::new("status", ColumnKind::Text),
            Column::new("budget_id", ColumnKind::Text),
        ],
        charts: Vec::new(),
    })
    .await?;
    for (id, budget) in &budgets {
        let (Some(scope), Some(period), Some(terms)) = (&budget.scope, budget.period, &budget.terms) else {
            continue;
        };
        let (start, end) = period.bounds(reference);
        let spent: Decimal = sums
            .iter()
            .filter(|(key, _)| {
                key.0 >= start && key.0 < end && key.5.as_deref() == Some(terms.currency.as_ref())
            })
            .filter(|(key, _)| match scope.kind {
                domain::budget::ScopeKind::Tenant => true,
                domain::budget::ScopeKind::Model => Some(&key.1) == scope.id.as_ref(),
                domain::budget::ScopeKind::Prompt => key.2.map(|id| id.to_string()) == scope.id,
                domain::budget::ScopeKind::Feature => key.3 == scope.id,
                domain::budget::ScopeKind::Key => Some(key.4.to_string()) == scope.id,
            })
            .map(|(_, value)| value.cost)
            .sum();
        let standing = domain::budget::standing(terms, period, spent, reference);
        // A period over by the report's point is forecast at what it spent.
        let forecast = if input.point.instant >= start_of(end) {
            standing.spent
        } else {
            standing.forecast_end_of_period
        };
        let amount = terms.amount.value();
        let fraction = |value: Decimal| {
            if amount.is_zero() {
                Cell::Empty
            } else {
                (value / amount).to_f64().map_or(Cell::Empty, Cell::Percent)
            }
        };
        let status = if standing.exhausted {
            "exhausted"
        } else if standing.spent >= amount {
            "over"
        } else if forecast > amount {
            "forecast_over"
        } else {
            "within"
        };
        // The scope, period and enforcement in one column, so that the table fits a page.
        let scope_text = match &scope.id {
            Some(named) => format!("{} {named}", scope.kind.as_str()),
            None => scope.kind.as_str().to_owned(),
        };
        sink.row(vec![
            Cell::text(&budget.name),
            Cell::Text(format!(
                "{scope_text} / {} / {}",
                period.as_str(),
                terms.enforcement.as_str()
            )),
            Cell::Date(start),
            Cell::text(terms.currency.as_ref()),
            Cell::Money(amount.normalize()),
            Cell::Money(standing.spent),
            fraction(standing.spent),
            Cell::Money(forecast),
            Cell::text(status),
            Cell::text(id),
        ])
        .await?;
    }

    sink.section(Section {
        name: "uncosted".into(),
        title: "Usage without a price".into(),
        columns: vec![
            Column::new("model", ColumnKind::Text),
            Column::new("calls", ColumnKind::Integer),
            Column::new("input_tokens", ColumnKind::Integer),
            Column::new("output_tokens", ColumnKind::Integer),
        ],
        charts: Vec::new(),
    })
    .await?;
    for (model, value) in &uncosted {
        sink.row(vec![
            Cell::text(model),
            Cell::Integer(value.calls),
            Cell::Integer(value.input_tokens),
            Cell::Integer(value.output_tokens),
        ])
        .await?;
    }
    sink.flush().await
}
