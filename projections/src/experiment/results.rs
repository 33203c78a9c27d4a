//! The observations an experiment's figures come from: usage records carrying the
//! experiment and a variant (their `metrics`), and observations reported later. The unit is
//! the subject: its value for a metric is the sum of its observations (a binary metric: 1
//! when any is at least 1). A subject seen in more than one variant is left out of every
//! figure and counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::experiment::{ExperimentSpec, MetricKind};
use domain::experiment_results::VariantData;
use sqlx::PgPool;
use uuid::Uuid;

/// An experiment's units as they stood at `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentUnits {
    pub variants: BTreeMap<String, VariantData>,
    /// Subjects seen in more than one variant: counted here, in no figure.
    pub subjects_in_several_variants: u64,
    /// Usage records and observations read.
    pub records: i64,
    pub observations: i64,
    pub until: DateTime<Utc>,
}

/// What `tenant`'s experiment `id` with `spec` observed up to `until` (by the time the data
/// was both stamped and received, so that the same `until` reads the same data later).
pub async fn units(
    pool: &PgPool,
    tenant: &str,
    id: Uuid,
    spec: &ExperimentSpec,
    until: DateTime<Utc>,
) -> sqlx::Result<ExperimentUnits> {
    let names: Vec<String> = spec
        .metrics()
        .flat_map(|(metric, _)| metric.observed_names())
        .map(str::to_string)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    type Row = (String, String, Option<String>, Option<f64>, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(
        "with recorded as (
             select subject, variant, metrics from usage_record
             where tenant_id = $1 and experiment_id = $2 and subject is not null and variant is not null
               and ts <= $4 and ingested_at <= $4
         ), observed as (
             select subject, variant, m.key as metric, m.value::float8 as value
             from recorded, jsonb_each_text(coalesce(metrics, '{}')) m
             where m.key = any($3) and m.value ~ '^-?[0-9.eE+-]+$'
             union all
             select subject, variant, metric, value from experiment_observation
             where tenant_id = $1 and experiment_id = $2 and metric = any($3)
               and observed_at <= $4 and received_at <= $4
         ), exposed as (
             select subject, variant from recorded
             union
             select subject, variant from experiment_observation
             where tenant_id = $1 and experiment_id = $2 and observed_at <= $4 and received_at <= $4
         )
         select e.subject, e.variant, o.metric, sum(o.value), max(o.value)
         from exposed e left join observed o on o.subject = e.subject and o.variant = e.variant
         group by e.subject, e.variant, o.metric",
    )
    .bind(tenant)
    .bind(id)
    .bind(&names)
    .bind(until)
    .fetch_all(pool)
    .await?;
    let (records, observations): (i64, i64) = sqlx::query_as(
        "select (select count(*) from usage_record where tenant_id = $1 and experiment_id = $2
                   and ts <= $3 and ingested_at <= $3),
                (select count(*) from experiment_observation where tenant_id = $1 and experiment_id = $2
                   and observed_at <= $3 and received_at <= $3)",
    )
    .bind(tenant)
    .bind(id)
    .bind(until)
    .fetch_one(pool)
    .await?;

    // Per subject: its variants, and per variant its sums and maxima by observation name.
    type Sums = HashMap<String, (f64, f64)>;
    let mut subjects: HashMap<String, HashMap<String, Sums>> = HashMap::new();
    for (subject, variant, metric, sum, max) in rows {
        let sums = subjects.entry(subject).or_default().entry(variant).or_default();
        if let (Some(metric), Some(sum), Some(max)) = (metric, sum, max) {
            sums.insert(metric, (sum, max));
        }
    }
    let mut variants: BTreeMap<String, VariantData> = spec
        .variants
        .iter()
        .map(|variant| (variant.name.clone(), VariantData::default()))
        .collect();
    let mut several = 0;
    for seen in subjects.into_values() {
        if seen.len() > 1 {
            several += 1;
            continue;
        }
        let Some((variant, sums)) = seen.into_iter().next() else {
            continue;
        };
        // A variant the experiment does not have (a client's mistake) is not a unit.
        let Some(units) = variants.get_mut(&variant) else {
            continue;
        };
        units.units += 1;
        for (metric, _) in spec.metrics() {
            let sum = |name: &str| sums.get(name).map(|(sum, _)| *sum);
            match (metric.kind, &metric.numerator, &metric.denominator) {
                (MetricKind::Binary, _, _) => {
                    let converted = sums.get(&metric.name).is_some_and(|(_, max)| *max >= 1.0);
                    units
                        .values
                        .entry(metric.name.clone())
                        .or_default()
                        .push(f64::from(u8::from(converted)));
                }
                (MetricKind::Continuous, _, _) => {
                    if let Some(value) = sum(&metric.name) {
                        units.values.entry(metric.name.clone()).or_default().push(value);
                    }
                }
                (MetricKind::Ratio, Some(numerator), Some(denominator)) => {
                    units
                        .pairs
                        .entry(metric.name.clone())
                        .or_default()
                        .push((sum(numerator).unwrap_or(0.0), sum(denominator).unwrap_or(0.0)));
                }
                (MetricKind::Ratio, _, _) => {}
            }
        }
    }
    // Subjects come out of a hash map in no set order; sorted, the sums behind every figure
    // add up in one order, so the same `until` gives the same figures to the last bit.
    for units in variants.values_mut() {
        for values in units.values.values_mut() {
            values.sort_by(f64::total_cmp);
        }
        for pairs in units.pairs.values_mut() {
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        }
    }
    Ok(ExperimentUnits {
        variants,
        subjects_in_several_variants: several,
        records,
        observations,
        until,
    })
}
