//! Reads of usage records, each scoped to a tenant.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::page::Page;

/// A stored usage record with its cost, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageView {
    #[sqlx(rename = "record_id")]
    pub id: String,
    #[sqlx(rename = "ts")]
    pub timestamp: DateTime<Utc>,
    pub model: String,
    pub prompt_id: Option<Uuid>,
    pub prompt_version: Option<i32>,
    pub prompt_label: Option<String>,
    pub experiment_id: Option<Uuid>,
    pub variant: Option<String>,
    pub feature: Option<String>,
    pub subject: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub latency_ms: Option<i32>,
    pub status: String,
    pub metrics: Option<Value>,
    /// Exact decimal, as a string; `null` when the record is uncosted.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "0.000345"))]
    pub cost: Option<Decimal>,
    pub currency: Option<String>,
    /// The record was priced again after its model's prices changed: `cost` is the
    /// corrected figure, `original_cost` (in `original_currency`) what it first cost.
    pub recosted: bool,
    #[serde(with = "rust_decimal::serde::str_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub original_cost: Option<Decimal>,
    pub original_currency: Option<String>,
    /// For a call made through aipm (`POST /v1/prompts/{id}/run`, conversations): each
    /// attempt, in order: the model tried, its outcome, latency, HTTP status, what
    /// `Retry-After` asked and how long aipm waited.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub attempts: Option<Value>,
    /// No price applied: the model is unknown, or had no price at the record's time.
    #[sqlx(skip)]
    pub uncosted: bool,
    /// The API key that sent the record.
    pub key_id: Uuid,
    pub ingested_at: DateTime<Utc>,
}

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    /// At or after.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
    pub model: Option<String>,
    pub prompt_id: Option<Uuid>,
    pub experiment_id: Option<Uuid>,
    pub feature: Option<String>,
    /// The last record of the previous page.
    pub after: Option<UsageCursor>,
}

/// A place in the newest-first order: a record's timestamp and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCursor {
    pub timestamp: DateTime<Utc>,
    pub id: String,
}

impl UsageCursor {
    /// `<microseconds since the epoch>:<record id>`.
    pub fn text(&self) -> String {
        format!("{}:{}", self.timestamp.timestamp_micros(), self.id)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once(':')?;
        let timestamp = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Self {
            timestamp,
            id: id.to_string(),
        })
    }
}

/// A page of `tenant`'s records matching `filter`, newest first.
pub async fn records(
    pool: &PgPool,
    tenant: &str,
    filter: &UsageFilter,
    limit: i64,
) -> sqlx::Result<Page<UsageView, String>> {
    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new(
        "select record_id, ts, model, prompt_id, prompt_version, prompt_label, experiment_id, variant, feature,
                subject, input_tokens, output_tokens, cached_input_tokens, latency_ms, status, metrics, cost,
                currency, recosted, original_cost, original_currency, attempts, key_id, ingested_at
         from usage_record where tenant_id = ",
    );
    query.push_bind(tenant.to_string());
    if let Some(from) = filter.from {
        query.push(" and ts >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" and ts < ").push_bind(to);
    }
    if let Some(model) = &filter.model {
        query.push(" and model = ").push_bind(model.clone());
    }
    if let Some(prompt) = filter.prompt_id {
        query.push(" and prompt_id = ").push_bind(prompt);
    }
    if let Some(experiment) = filter.experiment_id {
        query.push(" and experiment_id = ").push_bind(experiment);
    }
    if let Some(feature) = &filter.feature {
        query.push(" and feature = ").push_bind(feature.clone());
    }
    if let Some(after) = &filter.after {
        query
            .push(" and (ts, record_id) < (")
            .push_bind(after.timestamp)
            .push(", ")
            .push_bind(after.id.clone())
            .push(")");
    }
    query
        .push(" order by ts desc, record_id desc limit ")
        .push_bind(Page::<UsageView, String>::fetch_size(limit));
    let mut rows: Vec<UsageView> = query.build_query_as().fetch_all(pool).await?;
    for row in &mut rows {
        // Stored with 16 decimals; shown as the exact figure it is.
        row.cost = row.cost.map(|cost| cost.normalize());
        row.original_cost = row.original_cost.map(|cost| cost.normalize());
        row.uncosted = row.cost.is_none();
    }
    Ok(Page::from_rows(rows, limit, |row: &UsageView| {
        UsageCursor {
            timestamp: row.timestamp,
            id: row.id.clone(),
        }
        .text()
    }))
}

/// What spend can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpendDimension {
    Day,
    Model,
    Prompt,
    Feature,
    Key,
}

impl SpendDimension {
    pub const ALL: [SpendDimension; 5] = [Self::Day, Self::Model, Self::Prompt, Self::Feature, Self::Key];

    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Model => "model",
            Self::Prompt => "prompt",
            Self::Feature => "feature",
            Self::Key => "key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == text)
    }

    /// The roll-up's column, as text, and the name the answer gives it.
    fn column(self) -> (&'static str, &'static str) {
        match self {
            Self::Day => ("day::text", "day"),
            Self::Model => ("model", "model"),
            Self::Prompt => ("prompt_id::text", "prompt_id"),
            Self::Feature => ("feature", "feature"),
            Self::Key => ("key_id::text", "key_id"),
        }
    }
}

/// Spend over a range of days, in total and by group.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpendReport {
    /// The currency of every cost, when there is one; `null` when the costs are in several
    /// (see `totals`) or there are none.
    pub currency: Option<String>,
    /// Exact decimal, as a string, in `currency`; `null` when `currency` is.
    pub total: Option<String>,
    /// What `total` was before any price correction (equal to it when none applied).
    pub original_total: Option<String>,
    /// The total in each currency.
    pub totals: Vec<CurrencyTotal>,
    pub calls: i64,
    /// Records no price applied to: counted in `calls`, not in any cost.
    pub uncosted_records: i64,
    /// Records priced again after their model's prices changed; each group and total
    /// shows what its records first cost as `original_cost` beside the corrected `cost`.
    pub recosted_records: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub groups: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CurrencyTotal {
    pub currency: String,
    /// Exact decimal, as a string.
    pub cost: String,
    /// What the same records cost before any price correction.
    pub original_cost: String,
}

/// `tenant`'s spend on days `from` (inclusive) to `to` (exclusive), grouped by `group_by`
/// (and currency), from the roll-ups.
pub async fn spend(
    pool: &PgPool,
    tenant: &str,
    from: Option<chrono::NaiveDate>,
    to: Option<chrono::NaiveDate>,
    group_by: &[SpendDimension],
) -> sqlx::Result<SpendReport> {
    use sqlx::Row;
    let filter = |query: &mut QueryBuilder<'_, Postgres>| {
        query
            .push(" from usage_rollup where tenant_id = ")
            .push_bind(tenant.to_string());
        if let Some(from) = from {
            query.push(" and day >= ").push_bind(from);
        }
        if let Some(to) = to {
            query.push(" and day < ").push_bind(to);
        }
    };
    let columns: Vec<(&str, &str)> = group_by.iter().map(|d| d.column()).collect();
    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new("select ");
    for (column, name) in &columns {
        query.push(format!("{column} as {name}, "));
    }
    query.push(
        "currency, sum(cost) as cost, sum(input_tokens)::bigint as input_tokens,
         sum(output_tokens)::bigint as output_tokens, sum(calls)::bigint as calls,
         sum(uncosted)::bigint as uncosted, sum(original_cost) as original_cost, sum(recosted)::bigint as recosted",
    );
    filter(&mut query);
    let keys: Vec<&str> = columns.iter().map(|(_, name)| *name).collect();
    let grouping = keys
        .iter()
        .copied()
        .chain(["currency"])
        .collect::<Vec<_>>()
        .join(", ");
    query.push(format!(" group by {grouping} order by {grouping}"));
    let rows = query.build().fetch_all(pool).await?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in rows {
        let mut group = serde_json::Map::new();
        for name in &keys {
            group.insert(
                name.to_string(),
                Value::from(row.try_get::<Option<String>, _>(*name)?),
            );
        }
        let cost: Decimal = row.try_get("cost")?;
        group.insert(
            "currency".into(),
            Value::from(row.try_get::<Option<String>, _>("currency")?),
        );
        let original_cost: Decimal = row.try_get("original_cost")?;
        group.insert("cost".into(), Value::from(cost.normalize().to_string()));
        group.insert(
            "original_cost".into(),
            Value::from(original_cost.normalize().to_string()),
        );
        for name in ["input_tokens", "output_tokens", "calls", "uncosted", "recosted"] {
            group.insert(name.into(), Value::from(row.try_get::<i64, _>(name)?));
        }
        groups.push(Value::Object(group));
    }
    let mut totals_query: QueryBuilder<'_, Postgres> = QueryBuilder::new(
        "select currency, sum(cost) as cost, sum(original_cost) as original_cost, sum(calls)::bigint as calls,
                sum(uncosted)::bigint as uncosted, sum(recosted)::bigint as recosted",
    );
    filter(&mut totals_query);
    totals_query.push(" group by currency order by currency");
    let mut totals = Vec::new();
    let (mut calls, mut uncosted_records, mut recosted_records) = (0, 0, 0);
    for row in totals_query.build().fetch_all(pool).await? {
        calls += row.try_get::<i64, _>("calls")?;
        uncosted_records += row.try_get::<i64, _>("uncosted")?;
        recosted_records += row.try_get::<i64, _>("recosted")?;
        if let Some(currency) = row.try_get::<Option<String>, _>("currency")? {
            let cost: Decimal = row.try_get("cost")?;
            let original_cost: Decimal = row.try_get("original_cost")?;
            totals.push(CurrencyTotal {
                currency,
                cost: cost.normalize().to_string(),
                original_cost: original_cost.normalize().to_string(),
            });
        }
    }
    let (currency, total, original_total) = match totals.as_slice() {
        [only] => (
            Some(only.currency.clone()),
            Some(only.cost.clone()),
            Some(only.original_cost.clone()),
        ),
        _ => (None, None, None),
    };
    Ok(SpendReport {
        currency,
        total,
        original_total,
        totals,
        calls,
        uncosted_records,
        recosted_records,
        groups,
    })
}

/// What a budget counts: the spend of `tenant` in `currency` on days `days.0` (inclusive)
/// to `days.1` (exclusive) on what `scope` names.
pub struct BudgetSpend<'a> {
    pub id: Uuid,
    pub tenant: &'a str,
    pub scope: &'a domain::budget::BudgetScope,
    pub currency: &'a str,
    pub days: (chrono::NaiveDate, chrono::NaiveDate),
}

/// What each of `budgets` counts, by its id, from the roll-ups, in one statement.
pub async fn spent_on(
    pool: &PgPool,
    budgets: &[BudgetSpend<'_>],
) -> sqlx::Result<std::collections::HashMap<Uuid, Decimal>> {
    let mut ids = Vec::with_capacity(budgets.len());
    let (mut tenants, mut kinds, mut scope_ids, mut currencies, mut starts, mut ends) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for budget in budgets {
        ids.push(budget.id);
        tenants.push(budget.tenant);
        kinds.push(budget.scope.kind.as_str());
        scope_ids.push(budget.scope.id.as_deref());
        currencies.push(budget.currency);
        starts.push(budget.days.0);
        ends.push(budget.days.1);
    }
    let rows: Vec<(Uuid, Decimal)> = sqlx::query_as(
        "select b.id, coalesce(sum(r.cost), 0)
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::date[])
              as b(id, tenant_id, kind, scope_id, currency, first_day, end_day)
         left join usage_rollup r
           on r.tenant_id = b.tenant_id and r.currency = b.currency
          and r.day >= b.first_day and r.day < b.end_day
          and case b.kind when 'model' then r.model = b.scope_id
                          when 'prompt' then r.prompt_id::text = b.scope_id
                          when 'feature' then r.feature = b.scope_id
                          when 'key' then r.key_id::text = b.scope_id
                          else true end
         group by b.id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&kinds)
    .bind(&scope_ids)
    .bind(&currencies)
    .bind(&starts)
    .bind(&ends)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, spent)| (id, spent.normalize()))
        .collect())
}

/// Spend of one tenant on one model in one currency.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelSpend {
    pub tenant: String,
    pub model: String,
    pub currency: String,
    pub cost: Decimal,
}

/// Every tenant's spend by model and currency from `first_day` on, from the roll-ups (for
/// operators' metrics; not scoped to a tenant).
pub async fn spend_since(pool: &PgPool, first_day: chrono::NaiveDate) -> sqlx::Result<Vec<ModelSpend>> {
    sqlx::query_as(
        "select tenant_id as tenant, model, currency, sum(cost) as cost from usage_rollup
         where day >= $1 and currency is not null
         group by tenant_id, model, currency order by tenant_id, model, currency",
    )
    .bind(first_day)
    .fetch_all(pool)
    .await
}
