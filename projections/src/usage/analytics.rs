//! Analytics of prompts and features: sums from the spend roll-ups, latency percentiles and
//! metric means from the merged summaries of `usage_analytics` — never a read of the raw
//! records. Each scoped to a tenant.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use chrono::{DateTime, NaiveDate, Utc};
use domain::call_summary::{CallSummary, LatencyPercentiles};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::queries::CurrencyTotal;

/// What a set of calls came to.
#[derive(Default)]
struct Totals {
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    errors: i64,
    /// By currency: the cost, and what it was before any price correction.
    costs: BTreeMap<String, (Decimal, Decimal)>,
    uncosted: i64,
    last_used: Option<DateTime<Utc>>,
    summary: CallSummary,
}

/// Calls, tokens, cost, errors and latency of a set of calls, as the API shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallFigures {
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The cost in each currency (exact decimals as strings), with what it was before any
    /// price correction.
    pub cost: Vec<CurrencyTotal>,
    /// Calls no price applied to.
    pub uncosted_calls: i64,
    /// Share of calls whose status was not `ok`, 0 to 1.
    pub error_rate: f64,
    /// Percentiles of the calls that reported a latency, in milliseconds, within 1 % of the
    /// exact figure (a DDSketch); `null` when none did.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub latency_ms: Option<LatencyPercentiles>,
    /// Each metric's mean over the calls that reported it.
    pub metrics: BTreeMap<String, f64>,
    pub last_used: Option<DateTime<Utc>>,
}

impl Totals {
    fn figures(&self) -> CallFigures {
        CallFigures {
            calls: self.calls,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost: self
                .costs
                .iter()
                .map(|(currency, (cost, original))| CurrencyTotal {
                    currency: currency.clone(),
                    cost: cost.normalize().to_string(),
                    original_cost: original.normalize().to_string(),
                })
                .collect(),
            uncosted_calls: self.uncosted,
            error_rate: if self.calls == 0 {
                0.0
            } else {
                self.errors as f64 / self.calls as f64
            },
            latency_ms: self.summary.latency_percentiles(),
            metrics: self.summary.metric_means(),
            last_used: self.last_used,
        }
    }
}

/// One grouped row of the roll-ups.
#[derive(sqlx::FromRow)]
struct SumRow {
    prompt_version: Option<i32>,
    prompt_label: Option<String>,
    feature: Option<String>,
    day: NaiveDate,
    currency: Option<String>,
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    errors: i64,
    uncosted: i64,
    cost: Decimal,
    original_cost: Decimal,
    last_used: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    prompt_version: Option<i32>,
    prompt_label: Option<String>,
    feature: Option<String>,
    day: NaiveDate,
    summary: serde_json::Value,
}

/// Which calls to read: a tenant's, on days `from` to `to` (exclusive), of one prompt when
/// given.
struct Scope<'a> {
    tenant: &'a str,
    prompt: Option<Uuid>,
    from: NaiveDate,
    to: NaiveDate,
}

impl Scope<'_> {
    fn filter(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query
            .push(" where tenant_id = ")
            .push_bind(self.tenant.to_string())
            .push(" and day >= ")
            .push_bind(self.from)
            .push(" and day < ")
            .push_bind(self.to);
        if let Some(prompt) = self.prompt {
            query.push(" and prompt_id = ").push_bind(prompt);
        }
    }

    /// The roll-ups' and summaries' rows, each folded into the totals of the key `key_of`
    /// gives it.
    async fn fold<K: Eq + Hash>(
        &self,
        pool: &PgPool,
        key_of: impl Fn(Option<i32>, Option<&str>, Option<&str>, NaiveDate) -> Option<K>,
    ) -> sqlx::Result<HashMap<K, Totals>> {
        let mut sums: QueryBuilder<'_, Postgres> = QueryBuilder::new(
            "select prompt_version, prompt_label, feature, day, currency, sum(calls)::bigint as calls,
                    sum(input_tokens)::bigint as input_tokens, sum(output_tokens)::bigint as output_tokens,
                    sum(errors)::bigint as errors, sum(uncosted)::bigint as uncosted, sum(cost) as cost,
                    sum(original_cost) as original_cost, max(last_used) as last_used
             from usage_rollup",
        );
        self.filter(&mut sums);
        sums.push(" group by prompt_version, prompt_label, feature, day, currency");
        let mut totals: HashMap<K, Totals> = HashMap::new();
        for row in sums.build_query_as::<SumRow>().fetch_all(pool).await? {
            let Some(key) = key_of(
                row.prompt_version,
                row.prompt_label.as_deref(),
                row.feature.as_deref(),
                row.day,
            ) else {
                continue;
            };
            let entry = totals.entry(key).or_default();
            entry.calls += row.calls;
            entry.input_tokens += row.input_tokens;
            entry.output_tokens += row.output_tokens;
            entry.errors += row.errors;
            entry.uncosted += row.uncosted;
            entry.last_used = entry.last_used.max(row.last_used);
            if let Some(currency) = row.currency {
                let cost = entry.costs.entry(currency).or_default();
                cost.0 += row.cost;
                cost.1 += row.original_cost;
            }
        }
        let mut summaries: QueryBuilder<'_, Postgres> = QueryBuilder::new(
            "select prompt_version, prompt_label, feature, day, summary from usage_analytics",
        );
        self.filter(&mut summaries);
        for row in summaries.build_query_as::<SummaryRow>().fetch_all(pool).await? {
            let Some(key) = key_of(
                row.prompt_version,
                row.prompt_label.as_deref(),
                row.feature.as_deref(),
                row.day,
            ) else {
                continue;
            };
            if let Ok(summary) = serde_json::from_value::<CallSummary>(row.summary) {
                totals.entry(key).or_default().summary.merge(&summary);
            }
        }
        Ok(totals)
    }
}

/// A prompt version's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionFigures {
    /// `null` for calls that named the prompt but no version or label.
    pub version: Option<i32>,
    #[serde(flatten)]
    pub figures: CallFigures,
}

/// What the calls made through a label on one day came to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LabelDay {
    pub label: String,
    pub day: NaiveDate,
    /// The versions the label resolved to that day.
    pub versions: Vec<i32>,
    #[serde(flatten)]
    pub figures: CallFigures,
}

/// A prompt's analytics over a range of days.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptAnalytics {
    pub prompt_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// By version, newest first.
    pub versions: Vec<VersionFigures>,
    /// By label and day, for the calls that named a label.
    pub labels: Vec<LabelDay>,
}

/// The analytics of `tenant`'s prompt `prompt` on days `from` to `to` (exclusive).
pub async fn prompt(
    pool: &PgPool,
    tenant: &str,
    prompt: Uuid,
    (from, to): (NaiveDate, NaiveDate),
) -> sqlx::Result<PromptAnalytics> {
    let scope = Scope {
        tenant,
        prompt: Some(prompt),
        from,
        to,
    };
    let by_version = scope.fold(pool, |version, _, _, _| Some(version)).await?;
    let mut versions: Vec<VersionFigures> = by_version
        .into_iter()
        .map(|(version, totals)| VersionFigures {
            version,
            figures: totals.figures(),
        })
        .collect();
    versions.sort_by_key(|figures| std::cmp::Reverse(figures.version));
    let by_label = scope
        .fold(pool, |version, label, _, day| {
            label.map(|label| (label.to_string(), day, version))
        })
        .await?;
    // Per label and day, the versions it served merged.
    let mut days: BTreeMap<(String, NaiveDate), (Vec<i32>, Totals)> = BTreeMap::new();
    for ((label, day, version), totals) in by_label {
        let (versions, merged) = days.entry((label, day)).or_default();
        versions.extend(version);
        merged.calls += totals.calls;
        merged.input_tokens += totals.input_tokens;
        merged.output_tokens += totals.output_tokens;
        merged.errors += totals.errors;
        merged.uncosted += totals.uncosted;
        merged.last_used = merged.last_used.max(totals.last_used);
        for (currency, (cost, original)) in totals.costs {
            let entry = merged.costs.entry(currency).or_default();
            entry.0 += cost;
            entry.1 += original;
        }
        merged.summary.merge(&totals.summary);
    }
    let labels = days
        .into_iter()
        .map(|((label, day), (mut versions, totals))| {
            versions.sort_unstable();
            LabelDay {
                label,
                day,
                versions,
                figures: totals.figures(),
            }
        })
        .collect();
    Ok(PromptAnalytics {
        prompt_id: prompt,
        from,
        to,
        versions,
        labels,
    })
}

/// How a feature's figures moved against the previous period of the same length; `null`
/// where there is nothing to compare with.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureChange {
    /// Relative change of the calls (0.25: a quarter more).
    pub calls: Option<f64>,
    /// Relative change of the cost, when both periods cost in one and the same currency.
    pub cost: Option<f64>,
    /// Change of the error rate, in rate points (0.02: two percentage points more).
    pub error_rate: Option<f64>,
    /// Relative change of the latency's 95th percentile.
    pub latency_p95: Option<f64>,
}

/// A feature's figures in the period, and before it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureFigures {
    /// `null` for calls that named no feature.
    pub feature: Option<String>,
    #[serde(flatten)]
    pub figures: CallFigures,
    /// The same figures over the previous period; `null` when the feature had no calls then.
    pub previous: Option<CallFigures>,
    pub change: FeatureChange,
}

/// The feature performance summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureAnalytics {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The period compared with: as long as this one, just before it.
    pub previous_from: NaiveDate,
    /// By calls, most first.
    pub features: Vec<FeatureFigures>,
}

/// `tenant`'s features on days `from` to `to` (exclusive), each against the period of the
/// same length before.
pub async fn features(
    pool: &PgPool,
    tenant: &str,
    (from, to): (NaiveDate, NaiveDate),
) -> sqlx::Result<FeatureAnalytics> {
    let previous_from = from - (to - from);
    let by_feature = |_: Option<i32>, _: Option<&str>, feature: Option<&str>, _: NaiveDate| {
        Some(feature.map(str::to_string))
    };
    let current = Scope {
        tenant,
        prompt: None,
        from,
        to,
    }
    .fold(pool, by_feature)
    .await?;
    let mut previous = Scope {
        tenant,
        prompt: None,
        from: previous_from,
        to: from,
    }
    .fold(pool, by_feature)
    .await?;
    let mut features: Vec<FeatureFigures> = current
        .into_iter()
        .map(|(feature, totals)| {
            let figures = totals.figures();
            let before = previous.remove(&feature).map(|totals| totals.figures());
            FeatureFigures {
                change: change(&figures, before.as_ref()),
                feature,
                figures,
                previous: before,
            }
        })
        .collect();
    features.sort_by(|a, b| {
        b.figures
            .calls
            .cmp(&a.figures.calls)
            .then_with(|| a.feature.cmp(&b.feature))
    });
    Ok(FeatureAnalytics {
        from,
        to,
        previous_from,
        features,
    })
}

fn change(now: &CallFigures, before: Option<&CallFigures>) -> FeatureChange {
    let relative = |now: f64, before: f64| (before != 0.0).then(|| (now - before) / before);
    let Some(before) = before else {
        return FeatureChange {
            calls: None,
            cost: None,
            error_rate: None,
            latency_p95: None,
        };
    };
    let cost = match (now.cost.as_slice(), before.cost.as_slice()) {
        ([now], [before]) if now.currency == before.currency => {
            let figure = |text: &str| text.parse::<f64>().ok();
            figure(&now.cost)
                .zip(figure(&before.cost))
                .and_then(|(now, before)| relative(now, before))
        }
        _ => None,
    };
    FeatureChange {
        calls: relative(now.calls as f64, before.calls as f64),
        cost,
        error_rate: Some(now.error_rate - before.error_rate),
        latency_p95: now
            .latency_ms
            .zip(before.latency_ms)
            .and_then(|(now, before)| relative(now.p95, before.p95)),
    }
}
