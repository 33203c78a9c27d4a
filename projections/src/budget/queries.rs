//! Reads of budgets, each scoped to a tenant. The table is [`super::BudgetProjection`]'s.

use chrono::{DateTime, Utc};
use domain::budget::Budget;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A budget's scope as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScopeView {
    /// `tenant`, `model`, `prompt`, `feature` or `key`.
    #[cfg_attr(feature = "openapi", schema(example = "model"))]
    pub kind: String,
    /// The model's reference, the prompt's or key's id, or the feature; `null` for the tenant.
    pub id: Option<String>,
}

/// A budget as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetView {
    pub id: Uuid,
    pub name: String,
    pub scope: ScopeView,
    /// `daily`, `weekly` or `monthly`.
    pub period: String,
    /// Exact decimal, as a string.
    #[cfg_attr(feature = "openapi", schema(example = "500"))]
    pub amount: String,
    #[cfg_attr(feature = "openapi", schema(example = "USD"))]
    pub currency: String,
    /// Percentages of the amount to warn at, ascending.
    pub thresholds: Vec<i32>,
    /// `soft` (warn) or `hard` (refuse spend over the amount).
    pub enforcement: String,
    /// The budget's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl BudgetView {
    /// The view of a budget's state: a point-in-time read. `None` once deleted.
    pub fn from_state(
        id: Uuid,
        budget: Budget,
        version: u64,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Option<Self> {
        let (Some(scope), Some(period), Some(terms)) = (budget.scope, budget.period, budget.terms) else {
            return None;
        };
        if budget.deleted {
            return None;
        }
        Some(Self {
            id,
            name: budget.name,
            scope: ScopeView {
                kind: scope.kind.as_str().to_string(),
                id: scope.id,
            },
            period: period.as_str().to_string(),
            amount: terms.amount.to_string(),
            currency: terms.currency.as_ref().to_string(),
            thresholds: terms.thresholds.iter().map(|t| *t as i32).collect(),
            enforcement: terms.enforcement.as_str().to_string(),
            version: version as i64,
            created_at,
            updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct BudgetRow {
    id: Uuid,
    name: String,
    scope_kind: String,
    scope_id: Option<String>,
    period: String,
    amount: Decimal,
    currency: String,
    thresholds: Vec<i32>,
    enforcement: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<BudgetRow> for BudgetView {
    fn from(row: BudgetRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            scope: ScopeView {
                kind: row.scope_kind,
                id: row.scope_id,
            },
            period: row.period,
            amount: row.amount.normalize().to_string(),
            currency: row.currency,
            thresholds: row.thresholds,
            enforcement: row.enforcement,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str = "budget_id as id, name, scope_kind, scope_id, period, amount, currency, thresholds, \
     enforcement, version, created_at, updated_at";

/// A budget of `tenant`.
pub async fn budget(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<BudgetView>> {
    let sql = format!("select {COLUMNS} from budget where budget_id = $1 and tenant_id = $2");
    let row: Option<BudgetRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(BudgetView::from))
}

/// The budgets of `tenant`, by name; only those over scopes of `kind` when given.
pub async fn budgets(pool: &PgPool, tenant: &str, kind: Option<&str>) -> sqlx::Result<Vec<BudgetView>> {
    let sql = format!(
        "select {COLUMNS} from budget where tenant_id = $1 and ($2::text is null or scope_kind = $2) order by name"
    );
    let rows: Vec<BudgetRow> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(kind)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(BudgetView::from).collect())
}

/// The budgets of `tenant` over the model `reference`.
pub async fn budgets_over_model(
    pool: &PgPool,
    tenant: &str,
    reference: &str,
) -> sqlx::Result<Vec<BudgetView>> {
    let sql = format!(
        "select {COLUMNS} from budget where tenant_id = $1 and scope_kind = 'model' and scope_id = $2 order by name"
    );
    let rows: Vec<BudgetRow> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(reference)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(BudgetView::from).collect())
}

/// A budget as the budget watcher works with it: its definition in domain terms, and the
/// thresholds already recorded as crossed in the period starting `crossed_period`.
#[derive(Debug, Clone)]
pub struct WatchedBudget {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub scope: domain::budget::BudgetScope,
    pub period: domain::budget::Period,
    pub terms: domain::budget::BudgetTerms,
    pub crossed_period: Option<chrono::NaiveDate>,
    pub crossed: Vec<u32>,
    /// The start of the latest period recorded as started.
    pub current_period: Option<chrono::NaiveDate>,
    pub created_at: DateTime<Utc>,
}

/// Every tenant's budgets. A row the domain cannot read (which the projection never writes)
/// is left out and logged.
pub async fn every_budget(pool: &PgPool) -> sqlx::Result<Vec<WatchedBudget>> {
    use domain::budget::{BudgetScope, BudgetTerms, Enforcement, Period, ScopeKind};
    use domain::money::{Amount, Currency};
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        tenant_id: String,
        name: String,
        scope_kind: String,
        scope_id: Option<String>,
        period: String,
        amount: Decimal,
        currency: String,
        thresholds: Vec<i32>,
        enforcement: String,
        crossed_period: Option<chrono::NaiveDate>,
        crossed: Vec<i32>,
        current_period: Option<chrono::NaiveDate>,
        created_at: DateTime<Utc>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select budget_id as id, tenant_id, name, scope_kind, scope_id, period, amount, currency, thresholds,
                enforcement, crossed_period, crossed, current_period, created_at
         from budget order by tenant_id, name",
    )
    .fetch_all(pool)
    .await?;
    let percentages = |values: Vec<i32>| values.into_iter().filter_map(|t| u32::try_from(t).ok()).collect();
    let mut budgets = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.id;
        let read = (|| {
            Some(WatchedBudget {
                id: row.id,
                scope: BudgetScope {
                    kind: ScopeKind::parse("scope_kind", &row.scope_kind).ok()?,
                    id: row.scope_id,
                },
                period: Period::parse("period", &row.period).ok()?,
                terms: BudgetTerms {
                    amount: Amount::parse("amount", &row.amount.normalize().to_string()).ok()?,
                    currency: Currency::parse("currency", &row.currency).ok()?,
                    thresholds: percentages(row.thresholds),
                    enforcement: Enforcement::parse("enforcement", &row.enforcement).ok()?,
                },
                tenant: row.tenant_id,
                name: row.name,
                crossed_period: row.crossed_period,
                crossed: percentages(row.crossed),
                current_period: row.current_period,
                created_at: row.created_at,
            })
        })();
        match read {
            Some(budget) => budgets.push(budget),
            None => tracing::error!(budget = %id, "a budget row does not read as a budget"),
        }
    }
    Ok(budgets)
}
