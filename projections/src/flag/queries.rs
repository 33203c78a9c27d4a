//! Reads of the feature flags, each scoped to a tenant. The table is
//! [`super::FlagProjection`]'s.

use chrono::{DateTime, Utc};
use domain::flag::{Flag, FlagSettings, Variant};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// A flag as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlagView {
    #[cfg_attr(feature = "openapi", schema(example = "checkout.new_flow"))]
    pub key: String,
    pub enabled: bool,
    /// The share of subjects it is on for, in percent.
    #[cfg_attr(feature = "openapi", schema(example = 25.5))]
    pub rollout_percent: f64,
    pub variants: Vec<VariantView>,
    /// The flag's version, also sent as `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// A variant and its weight among the flag's variants.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariantView {
    pub name: String,
    pub weight: u32,
}

impl FlagView {
    fn new(key: String, settings: &FlagSettings, version: i64, updated_at: DateTime<Utc>) -> Self {
        Self {
            key,
            enabled: settings.enabled,
            rollout_percent: f64::from(settings.rollout) / 100.0,
            variants: settings
                .variants
                .iter()
                .map(|v| VariantView {
                    name: v.name.clone(),
                    weight: v.weight,
                })
                .collect(),
            version,
            updated_at,
        }
    }

    /// The view of a flag's state: a point-in-time read. `None` before it was first set.
    pub fn from_state(flag: &Flag, version: u64, updated_at: DateTime<Utc>) -> Option<Self> {
        let settings = flag.settings.as_ref()?;
        Some(Self::new(flag.key.clone(), settings, version as i64, updated_at))
    }
}

/// A flag as stored, salt included: what evaluation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFlag {
    pub tenant: String,
    pub key: String,
    pub salt: String,
    pub settings: FlagSettings,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl StoredFlag {
    pub fn view(&self) -> FlagView {
        FlagView::new(self.key.clone(), &self.settings, self.version, self.updated_at)
    }
}

type FlagRow = (String, String, String, bool, i32, Value, i64, DateTime<Utc>);

fn stored(row: FlagRow) -> Result<StoredFlag, sqlx::Error> {
    let (tenant, key, salt, enabled, rollout, variants, version, updated_at) = row;
    let variants: Vec<Variant> =
        serde_json::from_value(variants).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(StoredFlag {
        tenant,
        key,
        salt,
        settings: FlagSettings {
            enabled,
            rollout: u32::try_from(rollout).unwrap_or_default(),
            variants,
        },
        version,
        updated_at,
    })
}

const COLUMNS: &str = "tenant_id, key, salt, enabled, rollout, variants, version, updated_at";

/// The flag `key` of `tenant`.
pub async fn flag(pool: &PgPool, tenant: &str, key: &str) -> sqlx::Result<Option<StoredFlag>> {
    let sql = format!("select {COLUMNS} from flag where tenant_id = $1 and key = $2");
    let row: Option<FlagRow> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.map(stored).transpose()
}

/// Every flag of `tenant`, by key.
pub async fn flags(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<StoredFlag>> {
    let sql = format!("select {COLUMNS} from flag where tenant_id = $1 order by key");
    let rows: Vec<FlagRow> = sqlx::query_as(&sql).bind(tenant).fetch_all(pool).await?;
    rows.into_iter().map(stored).collect()
}

/// Every flag of every tenant: what [`super::live`] starts from.
pub(crate) async fn all_flags(conn: &mut sqlx::PgConnection) -> sqlx::Result<Vec<StoredFlag>> {
    let sql = format!("select {COLUMNS} from flag");
    let rows: Vec<FlagRow> = sqlx::query_as(&sql).fetch_all(conn).await?;
    rows.into_iter().map(stored).collect()
}
