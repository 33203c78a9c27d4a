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
        let p = (xc + xt) as f64 / (nc + nt) as f64;
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
/// and sessions), estimated as `Σx / Σy = mean_x / mean_y`. The variances and covariance are
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
    let v = (control.n + treatment.n) as f64 * rho2;
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
