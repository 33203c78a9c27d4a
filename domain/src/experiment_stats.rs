//! Statistics for comparing the variants of an A/B experiment: fixed-horizon tests on means,
//! proportions and ratio metrics, sample ratio mismatch, multiple-testing corrections, an
//! always-valid (sequential) interval and a normal-approximation posterior.
//!
//! Everything here is pure arithmetic on summaries. Every function that estimates something
//! returns `None` on degenerate input (too few units for a variance, a zero standard error,
//! empty or mismatched slices, a significance level outside (0, 1)), so that a `Some` never
//! holds a NaN or an infinity. Lifts are always treatment minus control.
//!
//! The reference values these are tested against come from SciPy:
//! `domain/tests/reference/experiment_stats.py` says how to regenerate them.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// Per-unit summary of one variant's values for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Number of units.
    pub n: u64,
    /// Mean of the units' values; 0 when `n` is 0.
    pub mean: f64,
    /// Sample variance (denominator `n - 1`); 0 when `n < 2`.
    pub variance: f64,
}

impl Sample {
    /// Summarises values, one per unit. Two passes (mean, then squared deviations) so that a
    /// large common offset does not cancel the variance away.
    pub fn from_values(values: &[f64]) -> Sample {
        let n = values.len() as u64;
        if n == 0 {
            return Sample {
                n,
                mean: 0.0,
                variance: 0.0,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let variance = if n < 2 {
            0.0
        } else {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        };
        Sample { n, mean, variance }
    }

    /// Summarises from running sums: `variance = (Σx² − n·mean²) / (n − 1)`, floored at 0
    /// because rounding can push it just below.
    pub fn from_sums(n: u64, sum: f64, sum_squares: f64) -> Sample {
        if n == 0 {
            return Sample {
                n,
                mean: 0.0,
                variance: 0.0,
            };
        }
        let mean = sum / n as f64;
        let variance = if n < 2 {
            0.0
        } else {
            ((sum_squares - n as f64 * mean * mean) / (n - 1) as f64).max(0.0)
        };
        Sample { n, mean, variance }
    }

    /// Variance of the mean, `variance / n`.
    fn mean_variance(&self) -> f64 {
        self.variance / self.n as f64
    }
}

/// A two-sided interval, `low <= high`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    fn around(centre: f64, half_width: f64) -> Interval {
        Interval {
            low: centre - half_width,
            high: centre + half_width,
        }
    }

    fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }

    fn is_finite(&self) -> bool {
        self.low.is_finite() && self.high.is_finite()
    }
}

/// Student-t interval for the mean at level `1 − alpha`:
/// `mean ± t(1 − alpha/2; n − 1) · sqrt(variance / n)`.
///
/// Assumes independent units and a mean close to normal (the central limit theorem, or
/// normal values). `None` when `n < 2`; a sample whose values are all equal gets the
/// zero-width interval at its mean.
pub fn mean_interval(sample: &Sample, alpha: f64) -> Option<Interval> {
    if sample.n < 2 {
        return None;
    }
    let t = t_quantile(alpha, (sample.n - 1) as f64)?;
    finite_interval(Interval::around(sample.mean, t * sample.mean_variance().sqrt()))
}

/// The comparison of a treatment with the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// Treatment minus control.
    pub lift_abs: f64,
    pub lift_abs_ci: Interval,
    /// Treatment over control, minus 1; `None` when the control's estimate is 0.
    pub lift_rel: Option<f64>,
    pub lift_rel_ci: Option<Interval>,
    /// Two-sided p-value of "no difference".
    pub p_value: f64,
    /// For the fixed-horizon tests `p_value < alpha`; for [`sequential`] the interval
    /// excluding 0 (the same thing up to rounding).
    pub significant: bool,
}

/// Welch's t-test of the difference of means, treatment minus control.
///
/// `d = mean_t − mean_c`, `se² = s_c²/n_c + s_t²/n_t`, Welch–Satterthwaite
/// `df = se⁴ / ((s_c²/n_c)²/(n_c − 1) + (s_t²/n_t)²/(n_t − 1))`, `t = d / se`,
/// `p = 2·P(T_df > |t|)`, interval `d ± t(1 − alpha/2; df)·se`.
///
/// The relative lift `mean_t / mean_c − 1` gets a delta-method interval with the normal
/// quantile: `Var(T/C) ≈ Var(T)/C² + T²·Var(C)/C⁴` (independent variants).
///
/// Assumes independent units and approximately normal means; variances may differ.
/// `None` when either variant has fewer than 2 units or `se` is 0.
pub fn welch(control: &Sample, treatment: &Sample, alpha: f64) -> Option<Comparison> {
    if control.n < 2 || treatment.n < 2 {
        return None;
    }
    let (vc, vt) = (control.mean_variance(), treatment.mean_variance());
    let se2 = vc + vt;
    let df = se2 * se2 / (vc * vc / (control.n - 1) as f64 + vt * vt / (treatment.n - 1) as f64);
    let se = positive_se(se2)?;
    let diff = treatment.mean - control.mean;
    let students = StudentsT::new(0.0, 1.0, df).ok()?;
    let p_value = (2.0 * students.sf((diff / se).abs())).min(1.0);
    let t = t_quantile(alpha, df)?;
    let (lift_rel, lift_rel_ci) = relative_lift(control.mean, vc, treatment.mean, vt, z_quantile(alpha)?);
    finite_comparison(Comparison {
        lift_abs: diff,
        lift_abs_ci: Interval::around(diff, t * se),
        lift_rel,
        lift_rel_ci,
        p_value,
        significant: p_value < alpha,
    })
}

/// Two-proportion z-test; each variant is `(successes, units)`.
///
/// `p̂ = successes / units`, `d = p̂_t − p̂_c`. The test uses `z = d / se` with the pooled
/// `se = sqrt(p̄(1 − p̄)(1/n_c + 1/n_t))`, `p̄ = (x_c + x_t)/(n_c + n_t)`, when `pooled`, else
/// the unpooled `se = sqrt(p̂_c(1 − p̂_c)/n_c + p̂_t(1 − p̂_t)/n_t)`; `p = 2·P(Z > |z|)`.
/// The interval on `d` is always the unpooled (Wald) one, `d ± z(1 − alpha/2)·se_unpooled`,
/// because the pooled error only holds under the null. The relative lift `p̂_t/p̂_c − 1` gets a
/// delta-method interval as in [`welch`], with `Var(p̂) = p̂(1 − p̂)/n`.
///
/// Assumes independent units and counts large enough for the normal approximation.
/// `None` when a variant has no units, more successes than units, or the test's `se` is 0.
pub fn two_proportions(
    control: (u64, u64),
    treatment: (u64, u64),
    pooled: bool,
    alpha: f64,
) -> Option<Comparison> {
    let ((xc, nc), (xt, nt)) = (control, treatment);
    if nc == 0 || nt == 0 || xc > nc || xt > nt {
        return None;
    }
    let (pc, pt) = (xc as f64 / nc as f64, xt as f64 / nt as f64);
    let (vc, vt) = (pc * (1.0 - pc) / nc as f64, pt * (1.0 - pt) / nt as f64);
    let se_unpooled = (vc + vt).sqrt();
    let se_test = if pooled {
        // In f64: u64 sums of counts could overflow.
        let p = (xc as f64 + xt as f64) / (nc as f64 + nt as f64);
        positive_se(p * (1.0 - p) * (1.0 / nc as f64 + 1.0 / nt as f64))?
    } else {
        positive_se(vc + vt)?
    };
    let diff = pt - pc;
    let p_value = normal_two_sided_p(diff / se_test);
    let z = z_quantile(alpha)?;
    let (lift_rel, lift_rel_ci) = relative_lift(pc, vc, pt, vt, z);
    finite_comparison(Comparison {
        lift_abs: diff,
        lift_abs_ci: Interval::around(diff, z * se_unpooled),
        lift_rel,
        lift_rel_ci,
        p_value,
        significant: p_value < alpha,
    })
}

/// A ratio metric per variant: per unit a numerator `x` and a denominator `y` (say revenue
/// and visits), estimated as `Σx / Σy = mean_x / mean_y`. The variances and covariance are
/// sample ones over units (denominator `n − 1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RatioSample {
    pub n: u64,
    pub mean_x: f64,
    pub mean_y: f64,
    pub var_x: f64,
    pub var_y: f64,
    pub cov_xy: f64,
}

impl RatioSample {
    /// Summarises `(x, y)` pairs, one per unit (two passes, as [`Sample::from_values`]).
    pub fn from_pairs(pairs: &[(f64, f64)]) -> RatioSample {
        let n = pairs.len() as u64;
        let mut sample = RatioSample {
            n,
            mean_x: 0.0,
            mean_y: 0.0,
            var_x: 0.0,
            var_y: 0.0,
            cov_xy: 0.0,
        };
        if n == 0 {
            return sample;
        }
        sample.mean_x = pairs.iter().map(|p| p.0).sum::<f64>() / n as f64;
        sample.mean_y = pairs.iter().map(|p| p.1).sum::<f64>() / n as f64;
        if n >= 2 {
            let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
            for &(x, y) in pairs {
                let (dx, dy) = (x - sample.mean_x, y - sample.mean_y);
                sxx += dx * dx;
                syy += dy * dy;
                sxy += dx * dy;
            }
            let denominator = (n - 1) as f64;
            sample.var_x = sxx / denominator;
            sample.var_y = syy / denominator;
            sample.cov_xy = sxy / denominator;
        }
        sample
    }

    /// `mean_x / mean_y`; `None` without units or when `mean_y` is 0.
    pub fn ratio(&self) -> Option<f64> {
        if self.n == 0 || self.mean_y == 0.0 {
            return None;
        }
        Some(self.mean_x / self.mean_y).filter(|r| r.is_finite())
    }

    /// Delta-method variance of the ratio estimate `R = mean_x / mean_y`:
    /// `Var(R) ≈ (var_x − 2R·cov_xy + R²·var_y) / (n·mean_y²)`, floored at 0 (rounding).
    /// Assumes the units are independent and `mean_y` is well away from 0. `None` when
    /// `n < 2` or the ratio is undefined.
    pub fn ratio_variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let r = self.ratio()?;
        let numerator = self.var_x - 2.0 * r * self.cov_xy + r * r * self.var_y;
        Some((numerator / (self.n as f64 * self.mean_y * self.mean_y)).max(0.0)).filter(|v| v.is_finite())
    }
}

/// z-test on the difference of two ratio metrics, `d = R_t − R_c`, with
/// `se² = Var(R_c) + Var(R_t)` from [`RatioSample::ratio_variance`], `p = 2·P(Z > |d/se|)` and
/// interval `d ± z(1 − alpha/2)·se`. The relative lift `R_t/R_c − 1` gets a delta-method
/// interval as in [`welch`].
///
/// `None` when either ratio or its variance is undefined, or `se` is 0.
pub fn ratio_comparison(control: &RatioSample, treatment: &RatioSample, alpha: f64) -> Option<Comparison> {
    let (rc, rt) = (control.ratio()?, treatment.ratio()?);
    let (vc, vt) = (control.ratio_variance()?, treatment.ratio_variance()?);
    let se = positive_se(vc + vt)?;
    let diff = rt - rc;
    let p_value = normal_two_sided_p(diff / se);
    let z = z_quantile(alpha)?;
    let (lift_rel, lift_rel_ci) = relative_lift(rc, vc, rt, vt, z);
    finite_comparison(Comparison {
        lift_abs: diff,
        lift_abs_ci: Interval::around(diff, z * se),
        lift_rel,
        lift_rel_ci,
        p_value,
        significant: p_value < alpha,
    })
}

/// Sample ratio mismatch: the result of a chi-square goodness-of-fit test of the units
/// observed per variant against the shares the experiment was configured with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Srm {
    pub chi_square: f64,
    pub p_value: f64,
    /// `p_value < 0.001`: the usual, deliberately strict threshold, because a mismatch
    /// signals broken assignment or logging rather than an effect.
    pub flagged: bool,
}

/// The p-value below which [`Srm::flagged`] is set.
pub const SRM_THRESHOLD: f64 = 0.001;

/// Chi-square goodness of fit: expected `e_i = N·w_i/Σw`, `χ² = Σ (o_i − e_i)²/e_i`,
/// `p = P(χ²_{k−1} > χ²)` for `k` variants. Weights are on any positive scale.
///
/// `None` with fewer than 2 variants, mismatched lengths, a weight that is not positive and
/// finite, or no units at all.
pub fn srm(observed: &[u64], weights: &[f64]) -> Option<Srm> {
    if observed.len() < 2 || observed.len() != weights.len() {
        return None;
    }
    if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
        return None;
    }
    let total = observed.iter().map(|&o| o as f64).sum::<f64>();
    let weight_sum = weights.iter().sum::<f64>();
    if total <= 0.0 || !weight_sum.is_finite() {
        return None;
    }
    let chi_square = observed
        .iter()
        .zip(weights)
        .map(|(&o, w)| {
            let expected = total * w / weight_sum;
            (o as f64 - expected).powi(2) / expected
        })
        .sum::<f64>();
    let p_value = ChiSquared::new((observed.len() - 1) as f64).ok()?.sf(chi_square);
    if !(chi_square.is_finite() && p_value.is_finite()) {
        return None;
    }
    Some(Srm {
        chi_square,
        p_value,
        flagged: p_value < SRM_THRESHOLD,
    })
}

/// Holm's step-down adjustment (controls the family-wise error rate under any dependence).
///
/// With the `m` p-values sorted ascending, `p̃_(i) = min(1, max_{j ≤ i} (m − j + 1)·p_(j))`,
/// returned in input order. Inputs are clamped to [0, 1]; a NaN counts as 1 (no evidence).
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let (p, order) = sorted(p_values);
    let m = p.len() as f64;
    let mut adjusted = vec![0.0; p.len()];
    let mut running_max: f64 = 0.0;
    for (rank, &index) in order.iter().enumerate() {
        running_max = running_max.max(((m - rank as f64) * p[index]).min(1.0));
        adjusted[index] = running_max;
    }
    adjusted
}

/// Benjamini–Hochberg step-up adjustment (controls the false discovery rate for independent
/// or positively dependent tests).
///
/// With the `m` p-values sorted ascending, `p̃_(i) = min(1, min_{j ≥ i} m·p_(j)/j)`, returned in
/// input order. Inputs are clamped to [0, 1]; a NaN counts as 1 (no evidence).
pub fn benjamini_hochberg(p_values: &[f64]) -> Vec<f64> {
    let (p, order) = sorted(p_values);
    let m = p.len() as f64;
    let mut adjusted = vec![0.0; p.len()];
    let mut running_min: f64 = 1.0;
    for (rank, &index) in order.iter().enumerate().rev() {
        running_min = running_min.min(m * p[index] / (rank + 1) as f64);
        adjusted[index] = running_min;
    }
    adjusted
}

/// The cleaned p-values and the indices that sort them ascending.
fn sorted(p_values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let p: Vec<f64> = p_values
        .iter()
        .map(|&p| if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) })
        .collect();
    let mut order: Vec<usize> = (0..p.len()).collect();
    // Stable, so ties keep input order; the adjusted values of ties are equal either way.
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    (p, order)
}

/// An always-valid interval on the difference of means (safe to look at after every unit):
/// the asymptotic confidence sequence of Waudby-Smith et al. (2021), "Time-uniform central
/// limit theory and asymptotic confidence sequences", i.e. Robbins' normal-mixture boundary
/// (Howard et al. 2021) applied to the estimated variance.
///
/// With `N = n_c + n_t` units so far, `d = mean_t − mean_c`, `se² = s_c²/n_c + s_t²/n_t`:
///
/// `d ± se · sqrt( 2(Nρ² + 1)/(Nρ²) · ln( sqrt(Nρ² + 1) / alpha ) )`
///
/// which is the paper's `σ̂·sqrt(2(tρ² + 1)/(t²ρ²)·ln(sqrt(tρ² + 1)/α))` with `t = N` and
/// `σ̂² = N·se²` (the per-unit variance of the difference). `ρ² = (u − 1)/tuning_n` where
/// `u > 1` solves `u − 1 − ln u = −2 ln alpha` (so `u = −W₋₁(−alpha²/e)`), the value that makes
/// the boundary narrowest at `N = tuning_n`.
///
/// The always-valid p-value is the smallest level whose interval excludes 0, in closed form
/// (the reciprocal of the normal-mixture martingale):
/// `p = min(1, sqrt(Nρ² + 1) · exp(−(Nρ²/(Nρ² + 1)) · z²/2))`, `z = d/se`.
/// The relative lift's interval widens the delta-method error (see [`welch`]) by the same
/// factor as the absolute one.
///
/// Assumes independent units and enough of them for the central limit theorem (the
/// guarantee is asymptotic). `None` when either variant has fewer than 2 units, `se` is 0
/// or `tuning_n` is 0.
pub fn sequential(control: &Sample, treatment: &Sample, alpha: f64, tuning_n: u64) -> Option<Comparison> {
    if control.n < 2 || treatment.n < 2 || tuning_n == 0 || !valid_alpha(alpha) {
        return None;
    }
    let rho2 = (mixture_u(alpha)? - 1.0) / tuning_n as f64;
    let (vc, vt) = (control.mean_variance(), treatment.mean_variance());
    let se = positive_se(vc + vt)?;
    let diff = treatment.mean - control.mean;
    let v = (control.n as f64 + treatment.n as f64) * rho2;
    // Half-width in standard errors; it stands in for the quantile of a fixed-horizon test.
    let multiplier = (2.0 * (v + 1.0) / v * ((v + 1.0).sqrt() / alpha).ln()).sqrt();
    let z = diff / se;
    let p_value = ((v + 1.0).sqrt() * (-(v / (v + 1.0)) * z * z / 2.0).exp()).min(1.0);
    let lift_abs_ci = Interval::around(diff, multiplier * se);
    let (lift_rel, lift_rel_ci) = relative_lift(control.mean, vc, treatment.mean, vt, multiplier);
    finite_comparison(Comparison {
        lift_abs: diff,
        lift_abs_ci,
        lift_rel,
        lift_rel_ci,
        p_value,
        significant: lift_abs_ci.excludes_zero(),
    })
}

/// The `u > 1` solving `u − 1 − ln u = −2 ln alpha` (Newton's method from above, where the
/// function is convex and increasing, so the iterates fall monotonically to the root).
fn mixture_u(alpha: f64) -> Option<f64> {
    let target = -2.0 * alpha.ln();
    // The function is positive at this start (2 + target − ln(3 + 2·target) > 0), so the
    // start lies above the root.
    let mut u = 2.0 * (1.0 + target) + 1.0;
    for _ in 0..100 {
        let next = u - (u - 1.0 - u.ln() - target) / (1.0 - 1.0 / u);
        if (next - u).abs() <= 4.0 * f64::EPSILON * u {
            return Some(next);
        }
        u = next;
    }
    Some(u).filter(|u| u.is_finite() && *u > 1.0)
}

/// The normal approximation to the posterior of the absolute lift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Posterior {
    pub mean: f64,
    pub sd: f64,
    /// Central credible interval at `1 − alpha`.
    pub interval: Interval,
    /// `P(lift > 0)`, or `P(lift < 0)` when lower is better.
    pub chance_to_beat_control: f64,
}

/// Posterior of the absolute lift from the normal likelihood `d ~ N(lift, se²)`
/// (`d = mean_t − mean_c`, `se² = s_c²/n_c + s_t²/n_t`) and an optional normal prior
/// `lift ~ N(prior_mean, prior_variance)` given as `(prior_mean, prior_variance)`; flat when
/// `None`.
///
/// Precision `1/sd² = 1/prior_variance + 1/se²`, mean
/// `sd²·(prior_mean/prior_variance + d/se²)` (flat prior: mean `d`, sd `se`). Interval
/// `mean ± z(1 − alpha/2)·sd`; chance to beat control `Φ(mean/sd)` (`Φ(−mean/sd)` when lower
/// is better).
///
/// Assumes the means are approximately normal (large samples). `None` when either variant
/// has fewer than 2 units, `se` is 0, or the prior variance is not positive and finite.
pub fn bayesian(
    control: &Sample,
    treatment: &Sample,
    prior: Option<(f64, f64)>,
    higher_is_better: bool,
    alpha: f64,
) -> Option<Posterior> {
    if control.n < 2 || treatment.n < 2 {
        return None;
    }
    let se2 = control.mean_variance() + treatment.mean_variance();
    positive_se(se2)?;
    let diff = treatment.mean - control.mean;
    let (mean, variance) = match prior {
        None => (diff, se2),
        Some((prior_mean, prior_variance)) => {
            if !(prior_variance.is_finite() && prior_variance > 0.0 && prior_mean.is_finite()) {
                return None;
            }
            let precision = 1.0 / prior_variance + 1.0 / se2;
            (
                (prior_mean / prior_variance + diff / se2) / precision,
                1.0 / precision,
            )
        }
    };
    let sd = variance.sqrt();
    let z = z_quantile(alpha)?;
    let standard = standard_normal()?;
    let chance = standard.cdf(if higher_is_better { mean / sd } else { -mean / sd });
    let posterior = Posterior {
        mean,
        sd,
        interval: Interval::around(mean, z * sd),
        chance_to_beat_control: chance,
    };
    let finite = [mean, sd, chance].iter().all(|v| v.is_finite()) && posterior.interval.is_finite();
    (finite && sd > 0.0).then_some(posterior)
}

/// Delta-method relative lift `t/c − 1` and `± quantile·sd` around it, where
/// `Var(t/c) ≈ var_t/c² + t²·var_c/c⁴` (independent estimates); both `None` when `c` is 0.
fn relative_lift(c: f64, var_c: f64, t: f64, var_t: f64, quantile: f64) -> (Option<f64>, Option<Interval>) {
    if c == 0.0 {
        return (None, None);
    }
    let lift = t / c - 1.0;
    let sd = (var_t / (c * c) + t * t * var_c / (c * c * c * c)).sqrt();
    let interval = Interval::around(lift, quantile * sd);
    if lift.is_finite() && interval.is_finite() {
        (Some(lift), Some(interval))
    } else {
        (None, None)
    }
}

fn valid_alpha(alpha: f64) -> bool {
    alpha > 0.0 && alpha < 1.0
}

fn standard_normal() -> Option<Normal> {
    Normal::new(0.0, 1.0).ok()
}

/// `z(1 − alpha/2)`, computed as `−z(alpha/2)` so that a small alpha loses no precision.
fn z_quantile(alpha: f64) -> Option<f64> {
    if !valid_alpha(alpha) {
        return None;
    }
    Some(-standard_normal()?.inverse_cdf(alpha / 2.0))
}

/// `t(1 − alpha/2; df)`, as [`z_quantile`].
fn t_quantile(alpha: f64, df: f64) -> Option<f64> {
    if !valid_alpha(alpha) || df.is_nan() || df <= 0.0 {
        return None;
    }
    Some(-StudentsT::new(0.0, 1.0, df).ok()?.inverse_cdf(alpha / 2.0)).filter(|t| t.is_finite())
}

fn normal_two_sided_p(z: f64) -> f64 {
    // sf rather than 1 − cdf, so that tiny p-values keep their digits.
    standard_normal().map_or(f64::NAN, |n| (2.0 * n.sf(z.abs())).min(1.0))
}

/// `sqrt(variance)` when it is a positive finite number.
fn positive_se(variance: f64) -> Option<f64> {
    (variance.is_finite() && variance > 0.0).then(|| variance.sqrt())
}

fn finite_interval(interval: Interval) -> Option<Interval> {
    interval.is_finite().then_some(interval)
}

/// The comparison when every number in it is finite (inputs such as infinite means can
/// otherwise slip through), else `None`.
fn finite_comparison(comparison: Comparison) -> Option<Comparison> {
    let finite = comparison.lift_abs.is_finite()
        && comparison.lift_abs_ci.is_finite()
        && comparison.p_value.is_finite()
        && comparison.lift_rel.is_none_or(f64::is_finite)
        && comparison.lift_rel_ci.is_none_or(|i| i.is_finite());
    finite.then_some(comparison)
}

#[cfg(test)]
mod tests {
    //! Every number is checked against `domain/tests/reference/experiment_stats.json`, which
    //! `domain/tests/reference/experiment_stats.py` computes with SciPy and NumPy.

    use serde_json::Value;

    use super::*;

    const FIXTURE: &str = include_str!("../tests/reference/experiment_stats.json");

    /// Relative tolerance for every value, Student-t tails and quantiles included: statrs
    /// and SciPy agree to about 1e-10 there (different algorithms for the special functions).
    const REL: f64 = 1e-9;

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("the fixture is JSON")
    }

    fn f(v: &Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    fn u(v: &Value) -> u64 {
        v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
    }

    fn cases<'a>(fixture: &'a Value, key: &str) -> &'a Vec<Value> {
        let cases = fixture[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in the fixture"));
        assert!(!cases.is_empty(), "{key} has no cases");
        cases
    }

    /// `|actual − expected| <= rel·|expected|`, with `rel` as an absolute bound near 0.
    #[track_caller]
    fn close(what: &str, actual: f64, expected: f64, rel: f64) {
        let bound = rel * expected.abs().max(1e-300);
        assert!(
            (actual - expected).abs() <= bound || (expected == 0.0 && actual.abs() <= rel),
            "{what}: {actual} vs SciPy's {expected} (relative error {:e})",
            ((actual - expected) / expected).abs()
        );
    }

    #[track_caller]
    fn close_interval(what: &str, actual: Interval, expected: &Value, rel: f64) {
        close(&format!("{what} low"), actual.low, f(&expected[0]), rel);
        close(&format!("{what} high"), actual.high, f(&expected[1]), rel);
    }

    fn sample(v: &Value) -> Sample {
        match v.get("values") {
            Some(values) => Sample::from_values(
                &values
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(f)
                    .collect::<Vec<_>>(),
            ),
            None => Sample {
                n: u(&v["n"]),
                mean: f(&v["mean"]),
                variance: f(&v["variance"]),
            },
        }
    }

    #[track_caller]
    fn check_comparison(what: &str, actual: Comparison, expected: &Value) {
        close(
            &format!("{what} lift_abs"),
            actual.lift_abs,
            f(&expected["lift_abs"]),
            REL,
        );
        close_interval(
            &format!("{what} lift_abs_ci"),
            actual.lift_abs_ci,
            &expected["lift_abs_ci"],
            REL,
        );
        match (actual.lift_rel, expected["lift_rel"].as_f64()) {
            (Some(lift), Some(reference)) => close(&format!("{what} lift_rel"), lift, reference, REL),
            (None, None) => {}
            (ours, theirs) => panic!("{what} lift_rel: {ours:?} vs SciPy's {theirs:?}"),
        }
        match actual.lift_rel_ci {
            Some(ci) => close_interval(&format!("{what} lift_rel_ci"), ci, &expected["lift_rel_ci"], REL),
            None => assert!(expected["lift_rel_ci"].is_null(), "{what} lift_rel_ci missing"),
        }
        close(
            &format!("{what} p_value"),
            actual.p_value,
            f(&expected["p_value"]),
            REL,
        );
        assert_eq!(
            actual.significant,
            expected["significant"].as_bool().expect("significant"),
            "{what}"
        );
    }

    #[test]
    fn samples_match_numpy() {
        let fixture = fixture();
        for case in cases(&fixture, "samples") {
            let s = sample(case);
            assert_eq!(s.n, u(&case["n"]));
            close("mean", s.mean, f(&case["mean"]), REL);
            close("variance", s.variance, f(&case["variance"]), REL);
        }
        for case in cases(&fixture, "sums") {
            let s = Sample::from_sums(u(&case["n"]), f(&case["sum"]), f(&case["sum_squares"]));
            close("mean from sums", s.mean, f(&case["mean"]), REL);
            close("variance from sums", s.variance, f(&case["variance"]), REL);
        }
    }

    #[test]
    fn mean_intervals_match_scipy() {
        let fixture = fixture();
        for case in cases(&fixture, "mean_interval") {
            let interval = mean_interval(&sample(&case["sample"]), f(&case["alpha"])).expect("interval");
            close_interval("mean interval", interval, &case["interval"], REL);
        }
    }

    #[test]
    fn welch_matches_scipy() {
        let fixture = fixture();
        for (i, case) in cases(&fixture, "welch").iter().enumerate() {
            let (control, treatment) = (sample(&case["control"]), sample(&case["treatment"]));
            let result = welch(&control, &treatment, f(&case["alpha"])).expect("comparison");
            check_comparison(&format!("welch #{i}"), result, &case["expected"]);
        }
    }

    #[test]
    fn two_proportions_match_scipy() {
        let fixture = fixture();
        for (i, case) in cases(&fixture, "two_proportions").iter().enumerate() {
            let pair = |v: &Value| (u(&v[0]), u(&v[1]));
            let pooled = case["pooled"].as_bool().expect("pooled");
            let result = two_proportions(
                pair(&case["control"]),
                pair(&case["treatment"]),
                pooled,
                f(&case["alpha"]),
            )
            .expect("comparison");
            check_comparison(
                &format!("proportions #{i} pooled={pooled}"),
                result,
                &case["expected"],
            );
        }
    }

    #[test]
    fn ratio_metrics_match_numpy() {
        let fixture = fixture();
        let mut samples = Vec::new();
        for case in cases(&fixture, "ratio_samples") {
            let pairs: Vec<(f64, f64)> = case["pairs"]
                .as_array()
                .expect("pairs")
                .iter()
                .map(|p| (f(&p[0]), f(&p[1])))
                .collect();
            let s = RatioSample::from_pairs(&pairs);
            assert_eq!(s.n, u(&case["n"]));
            for (what, ours, key) in [
                ("mean_x", s.mean_x, "mean_x"),
                ("mean_y", s.mean_y, "mean_y"),
                ("var_x", s.var_x, "var_x"),
                ("var_y", s.var_y, "var_y"),
                ("cov_xy", s.cov_xy, "cov_xy"),
            ] {
                close(what, ours, f(&case[key]), REL);
            }
            close("ratio", s.ratio().expect("ratio"), f(&case["ratio"]), REL);
            close(
                "ratio variance",
                s.ratio_variance().expect("variance"),
                f(&case["ratio_variance"]),
                REL,
            );
            samples.push(s);
        }
        let by_name = |name: &Value| {
            let index: usize = name.as_str().expect("name")[1..].parse().expect("r<number>");
            samples[index - 1]
        };
        for (i, case) in cases(&fixture, "ratio_comparisons").iter().enumerate() {
            let result = ratio_comparison(
                &by_name(&case["control"]),
                &by_name(&case["treatment"]),
                f(&case["alpha"]),
            )
            .expect("comparison");
            check_comparison(&format!("ratio #{i}"), result, &case["expected"]);
        }
    }

    #[test]
    fn srm_matches_scipy_chisquare() {
        let fixture = fixture();
        for case in cases(&fixture, "srm") {
            let observed: Vec<u64> = case["observed"]
                .as_array()
                .expect("observed")
                .iter()
                .map(u)
                .collect();
            let weights: Vec<f64> = case["weights"]
                .as_array()
                .expect("weights")
                .iter()
                .map(f)
                .collect();
            let result = srm(&observed, &weights).expect("srm");
            close("chi-square", result.chi_square, f(&case["chi_square"]), REL);
            close("srm p-value", result.p_value, f(&case["p_value"]), REL);
            assert_eq!(
                result.flagged,
                case["flagged"].as_bool().expect("flagged"),
                "{observed:?}"
            );
        }
    }

    #[test]
    fn holm_and_benjamini_hochberg_match_the_reference() {
        let fixture = fixture();
        for case in cases(&fixture, "multiple_testing") {
            let p: Vec<f64> = case["p_values"].as_array().expect("p").iter().map(f).collect();
            for (what, ours, key) in [
                ("holm", holm(&p), "holm"),
                ("bh", benjamini_hochberg(&p), "benjamini_hochberg"),
            ] {
                let reference = case[key].as_array().expect("adjusted");
                assert_eq!(ours.len(), reference.len());
                for (a, e) in ours.iter().zip(reference) {
                    close(what, *a, f(e), REL);
                }
            }
        }
    }

    #[test]
    fn sequential_matches_the_boundary_formula() {
        let fixture = fixture();
        for (i, case) in cases(&fixture, "sequential").iter().enumerate() {
            let (alpha, tuning_n) = (f(&case["alpha"]), u(&case["tuning_n"]));
            // ρ² from Newton's method against SciPy's Lambert W.
            let rho2 = (mixture_u(alpha).expect("u") - 1.0) / tuning_n as f64;
            close("rho²", rho2, f(&case["rho2"]), REL);
            let (control, treatment) = (sample(&case["control"]), sample(&case["treatment"]));
            let result = sequential(&control, &treatment, alpha, tuning_n).expect("comparison");
            check_comparison(&format!("sequential #{i}"), result, &case["expected"]);
        }
    }

    #[test]
    fn bayesian_matches_scipy_norm() {
        let fixture = fixture();
        for case in cases(&fixture, "bayesian") {
            let prior = case["prior"].as_array().map(|p| (f(&p[0]), f(&p[1])));
            let higher = case["higher_is_better"].as_bool().expect("higher_is_better");
            let (control, treatment) = (sample(&case["control"]), sample(&case["treatment"]));
            let posterior =
                bayesian(&control, &treatment, prior, higher, f(&case["alpha"])).expect("posterior");
            let expected = &case["expected"];
            close("posterior mean", posterior.mean, f(&expected["mean"]), REL);
            close("posterior sd", posterior.sd, f(&expected["sd"]), REL);
            close_interval(
                "credible interval",
                posterior.interval,
                &expected["interval"],
                REL,
            );
            close(
                "chance to beat control",
                posterior.chance_to_beat_control,
                f(&expected["chance_to_beat_control"]),
                REL,
            );
        }
    }

    fn s(n: u64, mean: f64, variance: f64) -> Sample {
        Sample { n, mean, variance }
    }

    #[test]
    fn degenerate_samples_give_none() {
        let one = s(1, 3.0, 0.0);
        let fine = s(100, 3.0, 2.0);
        let constant = s(100, 3.0, 0.0);
        assert_eq!(Sample::from_values(&[]), s(0, 0.0, 0.0));
        assert_eq!(Sample::from_values(&[4.0]), s(1, 4.0, 0.0));
        assert_eq!(Sample::from_sums(0, 0.0, 0.0), s(0, 0.0, 0.0));
        // Seven units of 0.7: rounding would make this variance slightly negative.
        assert_eq!(Sample::from_sums(7, 4.9, 3.4299999999999993).variance, 0.0);

        assert_eq!(mean_interval(&one, 0.05), None);
        assert_eq!(
            mean_interval(&constant, 0.05),
            Some(Interval { low: 3.0, high: 3.0 })
        );
        for alpha in [0.0, 1.0, -0.1, f64::NAN] {
            assert_eq!(mean_interval(&fine, alpha), None, "alpha {alpha}");
            assert_eq!(welch(&fine, &fine, alpha), None, "alpha {alpha}");
            assert_eq!(sequential(&fine, &fine, alpha, 100), None, "alpha {alpha}");
            assert_eq!(bayesian(&fine, &fine, None, true, alpha), None, "alpha {alpha}");
            assert_eq!(
                two_proportions((1, 10), (2, 10), true, alpha),
                None,
                "alpha {alpha}"
            );
        }
        assert_eq!(welch(&one, &fine, 0.05), None);
        assert_eq!(welch(&constant, &constant, 0.05), None);
        assert_eq!(welch(&s(10, f64::INFINITY, 1.0), &fine, 0.05), None);
        assert_eq!(sequential(&constant, &constant, 0.05, 100), None);
        assert_eq!(sequential(&fine, &fine, 0.05, 0), None);
        assert_eq!(bayesian(&constant, &constant, None, true, 0.05), None);
        assert_eq!(bayesian(&fine, &fine, Some((0.0, 0.0)), true, 0.05), None);
        assert_eq!(
            bayesian(&fine, &fine, Some((0.0, f64::INFINITY)), true, 0.05),
            None
        );
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert!(two_proportions((u64::MAX / 2, u64::MAX), (u64::MAX / 3, u64::MAX), true, 0.05).is_some());
        let huge = s(u64::MAX, 1.0, 1.0);
        assert!(sequential(&huge, &s(u64::MAX, 2.0, 1.0), 0.05, 1000).is_some());
    }

    #[test]
    fn a_zero_control_mean_has_no_relative_lift() {
        let result = welch(&s(50, 0.0, 1.0), &s(50, 0.5, 1.0), 0.05).expect("comparison");
        assert_eq!((result.lift_rel, result.lift_rel_ci), (None, None));
        // One variance 0: Welch's df falls back to the other variant's n − 1.
        let one_sided = welch(&s(20, 1.0, 0.0), &s(30, 1.5, 2.0), 0.05).expect("comparison");
        assert!(one_sided.p_value > 0.0 && one_sided.p_value < 1.0);
    }

    #[test]
    fn degenerate_proportions_give_none() {
        assert_eq!(two_proportions((0, 0), (1, 10), true, 0.05), None);
        assert_eq!(two_proportions((11, 10), (1, 10), true, 0.05), None);
        // Nothing varies: no standard error for either test.
        assert_eq!(two_proportions((0, 10), (0, 20), true, 0.05), None);
        assert_eq!(two_proportions((10, 10), (20, 20), false, 0.05), None);
        // 0 % against 100 %: the pooled error exists, the unpooled one does not.
        assert!(two_proportions((0, 10), (10, 10), true, 0.05).is_some());
        assert_eq!(two_proportions((0, 10), (10, 10), false, 0.05), None);
    }

    #[test]
    fn degenerate_ratios_give_none() {
        let empty = RatioSample::from_pairs(&[]);
        assert_eq!((empty.ratio(), empty.ratio_variance()), (None, None));
        let single = RatioSample::from_pairs(&[(2.0, 4.0)]);
        assert_eq!((single.ratio(), single.ratio_variance()), (Some(0.5), None));
        let zero_denominator = RatioSample::from_pairs(&[(1.0, 0.0), (2.0, 0.0)]);
        assert_eq!(zero_denominator.ratio(), None);
        // Every unit has the same ratio: the delta-method variance is 0.
        let exact = RatioSample::from_pairs(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]);
        assert_eq!(exact.ratio_variance(), Some(0.0));
        assert_eq!(ratio_comparison(&exact, &exact, 0.05), None);
        assert_eq!(ratio_comparison(&zero_denominator, &exact, 0.05), None);
    }

    #[test]
    fn degenerate_srm_inputs_give_none() {
        assert_eq!(srm(&[], &[]), None);
        assert_eq!(srm(&[10], &[1.0]), None);
        assert_eq!(srm(&[10, 10], &[1.0]), None);
        assert_eq!(srm(&[10, 10], &[1.0, 0.0]), None);
        assert_eq!(srm(&[10, 10], &[1.0, -1.0]), None);
        assert_eq!(srm(&[10, 10], &[1.0, f64::NAN]), None);
        assert_eq!(srm(&[0, 0], &[1.0, 1.0]), None);
        let even = srm(&[500, 500], &[1.0, 1.0]).expect("srm");
        assert_eq!((even.chi_square, even.p_value, even.flagged), (0.0, 1.0, false));
    }

    #[test]
    fn corrections_handle_empty_and_out_of_range_input() {
        assert!(holm(&[]).is_empty());
        assert!(benjamini_hochberg(&[]).is_empty());
        // NaN counts as 1, values outside [0, 1] are clamped; nothing comes out NaN.
        let p = [f64::NAN, 0.01, -0.5, 2.0];
        assert_eq!(holm(&p), vec![1.0, 0.03, 0.0, 1.0]);
        assert_eq!(benjamini_hochberg(&p), vec![1.0, 0.02, 0.0, 1.0]);
    }

    #[test]
    fn the_sequential_p_value_and_interval_agree() {
        let (control, treatment) = (s(4000, 10.0, 25.0), s(4100, 10.4, 26.0));
        for alpha in [0.2, 0.05, 0.01] {
            let result = sequential(&control, &treatment, alpha, 5000).expect("comparison");
            assert_eq!(result.significant, result.p_value < alpha, "alpha {alpha}");
        }
        // Wider than the fixed-horizon interval at the same level: the price of peeking.
        let fixed = welch(&control, &treatment, 0.05).expect("comparison");
        let always_valid = sequential(&control, &treatment, 0.05, 8100).expect("comparison");
        assert!(always_valid.lift_abs_ci.low < fixed.lift_abs_ci.low);
        assert!(always_valid.p_value > fixed.p_value);
    }

    #[test]
    fn mixture_u_solves_its_equation() {
        for alpha in [1e-12, 1e-3, 0.05, 0.5, 0.999] {
            let u = mixture_u(alpha).expect("u");
            let residual = u - 1.0 - u.ln() + 2.0 * alpha.ln();
            assert!(
                u > 1.0 && residual.abs() < 1e-9,
                "alpha {alpha}: u {u}, residual {residual}"
            );
        }
    }
}
