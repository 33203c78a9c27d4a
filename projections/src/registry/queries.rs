//! Reads of the model registry, each scoped to a tenant. The tables are
//! [`super::RegistryProjection`]'s.

use chrono::{DateTime, Utc};
use domain::health::HealthCheck;
use domain::model::{Model, Price, PricePeriod, Referrer};
use domain::money::{Amount, Currency};
use domain::provider::Provider;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// A provider as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderView {
    pub id: Uuid,
    /// The first part of its models' references (`openai` in `openai/gpt-4o-mini`).
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(example = "openai"))]
    pub kind: String,
    pub base_url: String,
    /// Where the secret lives (`env:…` or `file:…`); never the secret.
    pub credential_ref: String,
    pub enabled: bool,
    /// How the provider is probed (`PUT /v1/providers/{id}/health-check`).
    #[sqlx(json)]
    #[cfg_attr(feature = "openapi", schema(value_type = HealthCheckView))]
    pub health_check: HealthCheck,
    /// The provider's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How a provider is probed (`domain::health::HealthCheck`).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes `HealthCheck`'s JSON
pub struct HealthCheckView {
    /// Seconds between two probes.
    #[schema(minimum = 10, maximum = 86400, example = 60)]
    interval_seconds: u32,
    /// A probe not answered within this many milliseconds failed.
    #[schema(minimum = 100, maximum = 60000, example = 5000)]
    timeout_ms: u32,
    /// A successful probe slower than this makes the provider `degraded`.
    #[schema(minimum = 1, maximum = 60000, example = 2000)]
    degraded_latency_ms: u32,
    /// Open an incident when the provider goes `down`.
    open_incident_on_down: bool,
}

impl ProviderView {
    /// The view of a provider's state: a point-in-time read, or what a command committed.
    pub fn from_state(
        id: Uuid,
        provider: Provider,
        version: u64,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            name: provider.name,
            kind: provider.kind.map_or("", |k| k.as_str()).to_string(),
            base_url: provider.base_url,
            credential_ref: provider.credential_ref,
            enabled: provider.enabled,
            health_check: provider.health_check,
            version: version as i64,
            created_at,
            updated_at,
        }
    }
}

const PROVIDER_COLUMNS: &str =
    "provider_id as id, name, kind, base_url, credential_ref, enabled, health_check, \
     version, created_at, updated_at";

/// A provider of `tenant`.
pub async fn provider(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<ProviderView>> {
    let sql = format!("select {PROVIDER_COLUMNS} from provider where provider_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The provider of `tenant` called `name`.
pub async fn provider_named(pool: &PgPool, tenant: &str, name: &str) -> sqlx::Result<Option<ProviderView>> {
    let sql = format!("select {PROVIDER_COLUMNS} from provider where tenant_id = $1 and name = $2");
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Every provider of `tenant`, by name.
pub async fn providers(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<ProviderView>> {
    let sql = format!("select {PROVIDER_COLUMNS} from provider where tenant_id = $1 order by name");
    sqlx::query_as(&sql).bind(tenant).fetch_all(pool).await
}

/// A model as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelView {
    pub id: Uuid,
    /// `<provider name>/<model_id>`: how prompt versions and usage records name it.
    #[cfg_attr(feature = "openapi", schema(example = "openai/gpt-4o-mini"))]
    pub reference: String,
    /// The provider's name.
    pub provider: String,
    pub provider_id: Uuid,
    /// The provider's own identifier of the model.
    #[cfg_attr(feature = "openapi", schema(example = "gpt-4o-mini"))]
    pub model_id: String,
    pub name: String,
    pub context_window: Option<i32>,
    pub capabilities: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub default_params: Option<Value>,
    /// The reference of the model tried when this one fails.
    pub fallback: Option<String>,
    /// `active`, `inactive` or `deprecated`.
    #[cfg_attr(feature = "openapi", schema(example = "active"))]
    pub status: String,
    /// For a deprecated model, the reference of the one to use instead.
    pub replacement: Option<String>,
    /// For a deprecated model, what still referred to it when it was deprecated.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub still_referenced: Option<Value>,
    /// The model's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ModelView {
    /// The view of a model's state: a point-in-time read, or what a command committed.
    pub fn from_state(
        id: Uuid,
        model: Model,
        version: u64,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Self {
        let deprecated = model.status == domain::model::ModelStatus::Deprecated;
        Self {
            id,
            reference: model.reference,
            provider: model.provider_name,
            provider_id: model.provider_id.unwrap_or_default(),
            model_id: model.model_id,
            name: model.name,
            context_window: model.context_window.map(|w| i32::try_from(w).unwrap_or(i32::MAX)),
            capabilities: model.capabilities,
            default_params: model.default_params,
            fallback: model.fallback.map(|f| f.reference),
            status: model.status.as_str().to_string(),
            replacement: model.replacement.map(|r| r.reference),
            still_referenced: deprecated.then(|| json!(model.still_referenced)),
            version: version as i64,
            created_at,
            updated_at,
        }
    }
}

const MODEL_COLUMNS: &str = "model_id as id, reference, provider_name as provider, provider_id, \
     provider_model_id as model_id, name, context_window, capabilities, default_params, fallback, status, \
     replacement, still_referenced, version, created_at, updated_at";

/// Which models a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ModelFilter {
    /// A provider's name.
    pub provider: Option<String>,
    pub status: Option<String>,
    pub capability: Option<String>,
}

/// A model of `tenant`.
pub async fn model(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<ModelView>> {
    let sql = format!("select {MODEL_COLUMNS} from model where model_id = $1 and tenant_id = $2");
    sqlx::query_as(&sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The model of `tenant` with `reference`.
pub async fn model_with_reference(
    pool: &PgPool,
    tenant: &str,
    reference: &str,
) -> sqlx::Result<Option<ModelView>> {
    let sql = format!("select {MODEL_COLUMNS} from model where tenant_id = $1 and reference = $2");
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(reference)
        .fetch_optional(pool)
        .await
}

/// A model the gateway may call, with what it needs of the model and its provider.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallableModel {
    pub reference: String,
    /// The provider's own id of the model.
    pub model_id: String,
    /// `active`, `inactive` or `deprecated`.
    pub status: String,
    pub capabilities: Vec<String>,
    pub context_window: Option<i32>,
    pub default_params: Option<Value>,
    pub provider_name: String,
    pub kind: String,
    pub base_url: String,
    pub credential_ref: String,
    pub enabled: bool,
}

/// The model of `tenant` with `reference`, then its fallback, the fallback's fallback and so
/// on: at most `longest` models, each once, in that order. Empty when there is no such model.
pub async fn fallback_chain(
    pool: &PgPool,
    tenant: &str,
    reference: &str,
    longest: i32,
) -> sqlx::Result<Vec<CallableModel>> {
    let models: Vec<CallableModel> = sqlx::query_as(
        "with recursive chain(reference, depth) as (
             select $2::text, 0
             union all
             select m.fallback, c.depth + 1
             from chain c join model m on m.tenant_id = $1 and m.reference = c.reference
             where m.fallback is not null and c.depth + 1 < $3
         )
         select m.reference, m.provider_model_id as model_id, m.status, m.capabilities, m.context_window,
                m.default_params, p.name as provider_name, p.kind, p.base_url, p.credential_ref, p.enabled
         from chain c
         join model m on m.tenant_id = $1 and m.reference = c.reference
         join provider p on p.provider_id = m.provider_id and p.tenant_id = $1
         order by c.depth",
    )
    .bind(tenant)
    .bind(reference)
    .bind(longest)
    .fetch_all(pool)
    .await?;
    // A chain that comes back to a model (A → B → A) stops there.
    let mut seen = std::collections::HashSet::new();
    Ok(models
        .into_iter()
        .take_while(|model| seen.insert(model.reference.clone()))
        .collect())
}

/// The models of `tenant` matching `filter`, by reference.
pub async fn models(pool: &PgPool, tenant: &str, filter: &ModelFilter) -> sqlx::Result<Vec<ModelView>> {
    let sql = format!(
        "select {MODEL_COLUMNS} from model
         where tenant_id = $1
           and ($2::text is null or provider_name = $2)
           and ($3::text is null or status = $3)
           and ($4::text is null or $4 = any(capabilities))
         order by reference"
    );
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(&filter.provider)
        .bind(&filter.status)
        .bind(&filter.capability)
        .fetch_all(pool)
        .await
}

/// A price's figures, amounts as exact decimal strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceFigures {
    /// Per million input tokens.
    #[cfg_attr(feature = "openapi", schema(example = "0.15"))]
    pub input_per_mtok: String,
    /// Per million output tokens.
    #[cfg_attr(feature = "openapi", schema(example = "0.6"))]
    pub output_per_mtok: String,
    /// Per million cached input tokens, when the provider prices them apart.
    pub cached_input_per_mtok: Option<String>,
    #[cfg_attr(feature = "openapi", schema(example = "USD"))]
    pub currency: String,
}

impl From<&Price> for PriceFigures {
    fn from(price: &Price) -> Self {
        Self {
            input_per_mtok: price.input_per_mtok.to_string(),
            output_per_mtok: price.output_per_mtok.to_string(),
            cached_input_per_mtok: price.cached_input_per_mtok.map(|a| a.to_string()),
            currency: price.currency.as_ref().to_string(),
        }
    }
}

/// A price period: the figures in force from `effective_from` until `until`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceView {
    pub effective_from: DateTime<Utc>,
    /// The next period's start; `null` for the last period.
    pub until: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub figures: PriceFigures,
    /// The figures first recorded for this period, when it has been corrected since.
    pub original: Option<PriceFigures>,
    pub corrected_at: Option<DateTime<Utc>>,
}

impl PriceView {
    /// The period `period` of a model, until `until`, as a command committed it.
    pub fn from_period(
        period: &PricePeriod,
        until: Option<DateTime<Utc>>,
        corrected_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            effective_from: period.effective_from,
            until,
            figures: PriceFigures::from(&period.price),
            original: period.original.as_ref().map(PriceFigures::from),
            corrected_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct PriceRow {
    effective_from: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cached_input_per_mtok: Option<Decimal>,
    currency: String,
    original: Option<Value>,
    corrected_at: Option<DateTime<Utc>>,
}

impl PriceRow {
    fn view(self) -> PriceView {
        let text = |amount: Decimal| amount.normalize().to_string();
        let original = self.original.map(|o| {
            let field = |name: &str| {
                o.get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            PriceFigures {
                input_per_mtok: field("input_per_mtok"),
                output_per_mtok: field("output_per_mtok"),
                cached_input_per_mtok: o
                    .get("cached_input_per_mtok")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                currency: field("currency"),
            }
        });
        PriceView {
            effective_from: self.effective_from,
            until: self.until,
            figures: PriceFigures {
                input_per_mtok: text(self.input_per_mtok),
                output_per_mtok: text(self.output_per_mtok),
                cached_input_per_mtok: self.cached_input_per_mtok.map(text),
                currency: self.currency,
            },
            original,
            corrected_at: self.corrected_at,
        }
    }
}

const PRICE_PERIODS: &str = "select effective_from,
        lead(effective_from) over (order by effective_from) as until,
        input_per_mtok, output_per_mtok, cached_input_per_mtok, currency, original, corrected_at
     from model_price where model_id = $1 and tenant_id = $2";

/// Every price period of a model of `tenant`, oldest first.
pub async fn prices(pool: &PgPool, tenant: &str, model: Uuid) -> sqlx::Result<Vec<PriceView>> {
    let sql = format!("{PRICE_PERIODS} order by effective_from");
    let rows: Vec<PriceRow> = sqlx::query_as(&sql)
        .bind(model)
        .bind(tenant)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(PriceRow::view).collect())
}

/// The price period of a model of `tenant` in force at `at`: the last to start at or
/// before it; `None` before the first.
pub async fn price_at(
    pool: &PgPool,
    tenant: &str,
    model: Uuid,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<PriceView>> {
    let sql = format!("select * from ({PRICE_PERIODS}) periods where effective_from <= $3 order by effective_from desc limit 1");
    let row: Option<PriceRow> = sqlx::query_as(&sql)
        .bind(model)
        .bind(tenant)
        .bind(at)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(PriceRow::view))
}

/// What still refers to the model `reference` of `tenant`: prompt versions behind a label,
/// and budgets over it. A deprecation records it for subscribers to act on.
pub async fn still_referencing(pool: &PgPool, tenant: &str, reference: &str) -> sqlx::Result<Vec<Referrer>> {
    let versions = crate::catalog::queries::labelled_versions_naming(pool, tenant, reference).await?;
    let budgets = crate::budget::queries::budgets_over_model(pool, tenant, reference).await?;
    Ok(versions
        .into_iter()
        .map(|version| Referrer {
            kind: "prompt_version".into(),
            id: version.prompt_id.to_string(),
            version: u32::try_from(version.version).ok(),
            labels: version.labels,
        })
        .chain(budgets.into_iter().map(|budget| Referrer {
            kind: "budget".into(),
            id: budget.id.to_string(),
            version: None,
            labels: Vec::new(),
        }))
        .collect())
}

/// The price periods of `tenant`'s models named by `references`, each model's in order of
/// their start: what ingestion prices usage records with. Unknown references are absent.
pub async fn price_periods(
    executor: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    references: &[String],
) -> sqlx::Result<std::collections::HashMap<String, Vec<PricePeriod>>> {
    type Row = (String, DateTime<Utc>, Decimal, Decimal, Option<Decimal>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "select m.reference, p.effective_from, p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok,
                p.currency
         from model m join model_price p on p.model_id = m.model_id
         where m.tenant_id = $1 and m.reference = any($2)
         order by m.reference, p.effective_from",
    )
    .bind(tenant)
    .bind(references)
    .fetch_all(executor)
    .await?;
    let mut periods: std::collections::HashMap<String, Vec<PricePeriod>> = std::collections::HashMap::new();
    for (reference, effective_from, input, output, cached, currency) in rows {
        // Stored figures passed these checks when they were set.
        let amount = |value: Decimal| Amount::parse("price", &value.to_string());
        let (Ok(input_per_mtok), Ok(output_per_mtok), Ok(currency)) = (
            amount(input),
            amount(output),
            Currency::parse("currency", &currency),
        ) else {
            continue;
        };
        let cached_input_per_mtok = cached.and_then(|value| amount(value).ok());
        periods.entry(reference).or_default().push(PricePeriod {
            effective_from,
            price: Price {
                input_per_mtok,
                output_per_mtok,
                cached_input_per_mtok,
                currency,
            },
            original: None,
        });
    }
    Ok(periods)
}
