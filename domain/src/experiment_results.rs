//! An experiment's results: per variant and metric the units' summary, per treatment and
//! metric its comparison with the control by the method asked for, the sample ratio check,
//! multiple-testing corrections, and the guardrails found worse. Pure: the units come from
//! the read side, the statistics from [`crate::experiment_stats`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::experiment::{ExperimentSpec, Metric, MetricKind, MetricRole};
use crate::experiment_stats::{
    bayesian, benjamini_hochberg, holm, mean_interval, ratio_comparison, sequential, srm, two_proportions,
    welch, Comparison, Interval, RatioSample, Sample, Srm,
};

/// Significance level of every test and the width of every interval (95 %).
pub const ALPHA: f64 = 0.05;

/// What one variant's units gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantData {
    /// Subjects exposed to the variant (and to no other).
    pub units: u64,
    /// Per binary or continuous metric, one value per unit that has one.
    pub values: BTreeMap<String, Vec<f64>>,
    /// Per ratio metric, per unit its numerator and denominator.
    pub pairs: BTreeMap<String, Vec<(f64, f64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Fixed horizon: read once, at the planned sample size.
    Fixed,
    /// Always valid: safe to read as often as you like.
    Sequential,
    /// A normal posterior on the lift and the chance to beat control.
    Bayesian,
}

impl Method {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fixed" => Some(Self::Fixed),
            "sequential" => Some(Self::Sequential),
            "bayesian" => Some(Self::Bayesian),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    None,
    Holm,
    Bh,
}

impl Correction {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "holm" => Some(Self::Holm),
            "bh" => Some(Self::Bh),
            _ => None,
        }
    }
}

/// One variant's figures for one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantFigures {
    pub variant: String,
    pub units: u64,
    /// The metric's mean per unit (a ratio metric: the ratio of sums).
    pub mean: Option<f64>,
    /// The per-unit variance (a ratio metric: the variance of the ratio).
    pub variance: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Fewer units than `min_units_per_variant`: the figures are not to be read as final.
    pub below_min_units: bool,
}

/// A treatment against the control for one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonFigures {
    pub variant: String,
    pub lift_abs: Option<f64>,
    pub lift_abs_ci_low: Option<f64>,
    pub lift_abs_ci_high: Option<f64>,
    pub lift_rel: Option<f64>,
    pub lift_rel_ci_low: Option<f64>,
    pub lift_rel_ci_high: Option<f64>,
    /// Two-sided p-value of "no difference" (fixed and sequential methods).
    pub p_value: Option<f64>,
    /// The p-value after the correction asked for (primary and secondary metrics only).
    pub p_value_adjusted: Option<f64>,
    /// Whether the difference is significant at 5 % (after the correction, if any; for the
    /// Bayesian method, whether the credible interval excludes 0).
    pub significant: bool,
    /// Bayesian: the posterior chance that the variant is better than the control.
    pub chance_to_beat_control: Option<f64>,
    /// Significant and in the metric's better direction.
    pub better: bool,
    /// Significant and in the metric's worse direction.
    pub worse: bool,
    /// Either variant has fewer units than `min_units_per_variant`.
    pub below_min_units: bool,
    /// Why there is no comparison (too few units, no variance, the method not available).
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricResults {
    pub name: String,
    pub kind: MetricKind,
    pub role: MetricRole,
    pub higher_is_better: bool,
    pub variants: Vec<VariantFigures>,
    pub comparisons: Vec<ComparisonFigures>,
}

/// The sample ratio check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmFigures {
    /// Units per variant, in the variants' order.
    pub units: Vec<u64>,
    /// The shares the weights expect, in percent.
    pub expected_percent: Vec<u32>,
    pub chi_square: Option<f64>,
    pub p_value: Option<f64>,
    /// p < 0.001: assignment or logging is likely broken; do not trust the comparisons.
    pub flagged: bool,
}

/// A guardrail significantly worse than the control in a variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailBreach {
    pub metric: String,
    pub variant: String,
    pub lift_abs: Option<f64>,
    pub p_value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentResults {
    pub method: Method,
    pub correction: Correction,
    pub alpha: f64,
    pub min_units_per_variant: u64,
    /// Every variant has at least `min_units_per_variant` units.
    pub min_units_reached: bool,
    /// Subjects seen in more than one variant: left out of every figure.
    pub subjects_in_several_variants: u64,
    pub srm: SrmFigures,
    /// The primary metric first, then the secondary ones, then the guardrails.
    pub metrics: Vec<MetricResults>,
    pub guardrails_breached: Vec<GuardrailBreach>,
}

fn figures_of(sample: &Sample) -> (Option<f64>, Option<f64>, Option<Interval>) {
    if sample.n == 0 {
        return (None, None, None);
    }
    (
        Some(sample.mean),
        Some(sample.variance),
        mean_interval(sample, ALPHA),
    )
}

/// The results of an experiment defined by `spec` whose units gave `data` (by variant name).
pub fn results(
    spec: &ExperimentSpec,
    data: &BTreeMap<String, VariantData>,
    subjects_in_several_variants: u64,
    method: Method,
    correction: Correction,
) -> ExperimentResults {
    let empty = VariantData::default();
    let data_of = |name: &str| data.get(name).unwrap_or(&empty);
    let min = spec.min_units_per_variant;
    let units: Vec<u64> = spec.variants.iter().map(|v| data_of(&v.name).units).collect();
    let weights: Vec<f64> = spec.variants.iter().map(|v| f64::from(v.weight)).collect();
    let check = srm(&units, &weights);
    let srm = SrmFigures {
        expected_percent: spec.variants.iter().map(|v| v.weight).collect(),
        chi_square: check.map(|c: Srm| c.chi_square),
        p_value: check.map(|c| c.p_value),
        flagged: check.is_some_and(|c| c.flagged),
        units,
    };
    let Some(control) = spec.control() else {
        return ExperimentResults {
            method,
            correction,
            alpha: ALPHA,
            min_units_per_variant: min,
            min_units_reached: false,
            subjects_in_several_variants,
            srm,
            metrics: Vec::new(),
            guardrails_breached: Vec::new(),
        };
    };
    let mut metrics: Vec<MetricResults> = spec
        .metrics()
        .map(|(metric, role)| metric_results(spec, metric, role, &data_of, &control.name, method))
        .collect();

    // Corrections across the primary and secondary metrics × treatments.
    if correction != Correction::None {
        let mut places = Vec::new();
        let mut p_values = Vec::new();
        for (m, metric) in metrics.iter().enumerate() {
            if metric.role == MetricRole::Guardrail {
                continue;
            }
            for (c, comparison) in metric.comparisons.iter().enumerate() {
                if let Some(p) = comparison.p_value {
                    places.push((m, c));
                    p_values.push(p);
                }
            }
        }
        let adjusted = match correction {
            Correction::Holm => holm(&p_values),
            Correction::Bh => benjamini_hochberg(&p_values),
            Correction::None => p_values.clone(),
        };
        for ((m, c), p) in places.into_iter().zip(adjusted) {
            let metric = &mut metrics[m];
            let higher_is_better = metric.higher_is_better;
            let comparison = &mut metric.comparisons[c];
            comparison.p_value_adjusted = Some(p);
            comparison.significant = p < ALPHA;
            let up = comparison.lift_abs.is_some_and(|lift| lift > 0.0);
            comparison.better = comparison.significant && up == higher_is_better;
            comparison.worse = comparison.significant && up != higher_is_better;
        }
    }
    let guardrails_breached = metrics
        .iter()
        .filter(|metric| metric.role == MetricRole::Guardrail)
        .flat_map(|metric| {
            metric
                .comparisons
                .iter()
                .filter(|comparison| comparison.worse)
                .map(|comparison| GuardrailBreach {
                    metric: metric.name.clone(),
                    variant: comparison.variant.clone(),
                    lift_abs: comparison.lift_abs,
                    p_value: comparison.p_value,
                })
        })
        .collect();
    ExperimentResults {
        method,
        correction,
        alpha: ALPHA,
        min_units_per_variant: min,
        min_units_reached: spec.variants.iter().all(|v| data_of(&v.name).units >= min),
        subjects_in_several_variants,
        srm,
        metrics,
        guardrails_breached,
    }
}

fn metric_results<'a>(
    spec: &ExperimentSpec,
    metric: &Metric,
    role: MetricRole,
    data_of: &impl Fn(&str) -> &'a VariantData,
    control: &str,
    method: Method,
) -> MetricResults {
    let min = spec.min_units_per_variant;
    let sample_of = |variant: &str| {
        Sample::from_values(
            data_of(variant)
                .values
                .get(&metric.name)
                .map_or(&[][..], Vec::as_slice),
        )
    };
    let ratio_of = |variant: &str| {
        RatioSample::from_pairs(
            data_of(variant)
                .pairs
                .get(&metric.name)
                .map_or(&[][..], Vec::as_slice),
        )
    };
    let variants = spec
        .variants
        .iter()
        .map(|variant| {
            let below_min_units = data_of(&variant.name).units < min;
            let (mean, variance, interval) = match metric.kind {
                MetricKind::Ratio => {
                    let ratio = ratio_of(&variant.name);
                    let mean = ratio.ratio();
                    let variance = ratio.ratio_variance();
                    let interval = mean.zip(variance).map(|(mean, variance)| {
                        let half = 1.959_963_984_540_054 * variance.sqrt();
                        Interval {
                            low: mean - half,
                            high: mean + half,
                        }
                    });
                    (mean, variance, interval)
                }
                _ => figures_of(&sample_of(&variant.name)),
            };
            VariantFigures {
                variant: variant.name.clone(),
                units: data_of(&variant.name).units,
                mean,
                variance,
                ci_low: interval.map(|i| i.low),
                ci_high: interval.map(|i| i.high),
                below_min_units,
            }
        })
        .collect();
    let comparisons = spec
        .variants
        .iter()
        .filter(|variant| variant.name != control)
        .map(|variant| {
            let below_min_units = data_of(&variant.name).units < min || data_of(control).units < min;
            let comparing = Comparing {
                metric,
                method,
                tuning_units: spec.sequential_tuning_units,
                below_min_units,
            };
            compare(&comparing, control, &variant.name, &sample_of, &ratio_of)
        })
        .collect();
    MetricResults {
        name: metric.name.clone(),
        kind: metric.kind,
        role,
        higher_is_better: metric.higher_is_better,
        variants,
        comparisons,
    }
}

/// How a treatment is compared with the control.
struct Comparing<'a> {
    metric: &'a Metric,
    method: Method,
    /// The sequential method's total units at which its intervals are tightest.
    tuning_units: u64,
    below_min_units: bool,
}

fn compare(
    comparing: &Comparing<'_>,
    control: &str,
    variant: &str,
    sample_of: &impl Fn(&str) -> Sample,
    ratio_of: &impl Fn(&str) -> RatioSample,
) -> ComparisonFigures {
    let (metric, method, below_min_units) = (comparing.metric, comparing.method, comparing.below_min_units);
    let mut figures = ComparisonFigures {
        variant: variant.to_string(),
        lift_abs: None,
        lift_abs_ci_low: None,
        lift_abs_ci_high: None,
        lift_rel: None,
        lift_rel_ci_low: None,
        lift_rel_ci_high: None,
        p_value: None,
        p_value_adjusted: None,
        significant: false,
        chance_to_beat_control: None,
        better: false,
        worse: false,
        below_min_units,
        note: None,
    };
    let (c, t) = (sample_of(control), sample_of(variant));
    let comparison: Option<Comparison> = match (metric.kind, method) {
        (MetricKind::Ratio, Method::Fixed) => ratio_comparison(&ratio_of(control), &ratio_of(variant), ALPHA),
        (MetricKind::Ratio, _) => {
            figures.note = Some("ratio metrics are compared with the fixed method only".into());
            ratio_comparison(&ratio_of(control), &ratio_of(variant), ALPHA)
        }
        (MetricKind::Binary, Method::Fixed) => {
            let successes = |sample: &Sample| (sample.mean * sample.n as f64).round() as u64;
            two_proportions((successes(&c), c.n), (successes(&t), t.n), true, ALPHA)
        }
        (MetricKind::Continuous, Method::Fixed) => welch(&c, &t, ALPHA),
        (_, Method::Sequential) => sequential(&c, &t, ALPHA, comparing.tuning_units),
        (_, Method::Bayesian) => {
            let prior = metric.prior.map(|(mean, sd)| (mean, sd * sd));
            let posterior = bayesian(&c, &t, prior, metric.higher_is_better, ALPHA);
            if let Some(posterior) = posterior {
                figures.lift_abs = Some(posterior.mean);
                figures.lift_abs_ci_low = Some(posterior.interval.low);
                figures.lift_abs_ci_high = Some(posterior.interval.high);
                figures.chance_to_beat_control = Some(posterior.chance_to_beat_control);
                figures.significant = posterior.interval.low > 0.0 || posterior.interval.high < 0.0;
                if c.mean != 0.0 {
                    figures.lift_rel = Some(posterior.mean / c.mean);
                }
            } else {
                figures.note = Some("too few units, or no variance, to compare".into());
            }
            None
        }
    };
    if let Some(comparison) = comparison {
        figures.lift_abs = Some(comparison.lift_abs);
        figures.lift_abs_ci_low = Some(comparison.lift_abs_ci.low);
        figures.lift_abs_ci_high = Some(comparison.lift_abs_ci.high);
        figures.lift_rel = comparison.lift_rel;
        figures.lift_rel_ci_low = comparison.lift_rel_ci.map(|i| i.low);
        figures.lift_rel_ci_high = comparison.lift_rel_ci.map(|i| i.high);
        figures.p_value = Some(comparison.p_value);
        figures.significant = comparison.significant;
    } else if method != Method::Bayesian && figures.note.is_none() {
        figures.note = Some("too few units, or no variance, to compare".into());
    }
    let up = figures.lift_abs.is_some_and(|lift| lift > 0.0);
    figures.better = figures.significant && up == metric.higher_is_better;
    figures.worse = figures.significant && up != metric.higher_is_better;
    figures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{parse_spec, RawMetric, RawSpec, RawVariant, Targeting};

    fn spec(prior_sd: Option<f64>) -> ExperimentSpec {
        let variant = |name: &str, control| RawVariant {
            name: name.into(),
            weight: 50,
            control,
            prompt_version: None,
            model: None,
            config: None,
        };
        parse_spec(RawSpec {
            name: "x".into(),
            hypothesis: "y".into(),
            prompt_id: None,
            variants: vec![variant("a", true), variant("b", false)],
            primary_metric: RawMetric {
                name: "score".into(),
                kind: "continuous".into(),
                numerator: None,
                denominator: None,
                higher_is_better: true,
                prior_mean: prior_sd.map(|_| 0.0),
                prior_sd,
            },
            secondary_metrics: vec![],
            guardrail_metrics: vec![],
            min_units_per_variant: None,
            targeting: Targeting::default(),
            sequential_tuning_units: None,
        })
        .unwrap()
    }

    #[test]
    fn a_tight_prior_at_zero_pulls_the_bayesian_lift_towards_zero() {
        let data: BTreeMap<String, VariantData> = [("a", 0.0), ("b", 1.0)]
            .into_iter()
            .map(|(name, shift)| {
                let values = (0..100).map(|n| f64::from(n % 10) + shift).collect();
                let mut data = VariantData {
                    units: 100,
                    ..VariantData::default()
                };
                data.values.insert("score".into(), values);
                (name.to_string(), data)
            })
            .collect();
        let lift = |prior_sd| {
            results(&spec(prior_sd), &data, 0, Method::Bayesian, Correction::None).metrics[0].comparisons[0]
                .lift_abs
                .unwrap()
        };
        let flat = lift(None);
        assert!((flat - 1.0).abs() < 1e-9, "{flat}");
        let shrunk = lift(Some(0.1));
        assert!(shrunk > 0.0 && shrunk < 0.5, "{shrunk}");
        // Fixed: a clear difference, significant.
        let fixed = results(&spec(None), &data, 0, Method::Fixed, Correction::Holm);
        let comparison = &fixed.metrics[0].comparisons[0];
        assert!(comparison.significant && comparison.better);
        assert_eq!(
            comparison.p_value_adjusted, comparison.p_value,
            "one test: Holm leaves it"
        );
    }
}
