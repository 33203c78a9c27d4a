"""Reference values for domain/src/experiment_stats.rs, computed with SciPy and NumPy.

Writes experiment_stats.json beside this file; the Rust tests in experiment_stats.rs read it
and compare every number. Regenerate from the repository root with:

    python3 -m venv /tmp/scipy-venv && /tmp/scipy-venv/bin/pip install scipy numpy
    /tmp/scipy-venv/bin/python domain/tests/reference/experiment_stats.py

statsmodels is optional: when it is installed, the two-proportion tests and the Holm and
Benjamini-Hochberg adjustments are also cross-checked against it (the file written is the
same either way).

Where SciPy has the test itself (Welch's t-test and its interval, the chi-square goodness
of fit, Benjamini-Hochberg, the t-interval of a mean) its result is used. Where it has only
the distribution (the z-tests, the delta method, the sequential boundary, the posterior)
the formula is written out here in NumPy, independently of the Rust code, and SciPy
supplies the quantiles and tail probabilities. Inputs are fixed literals so that the file
only changes when this script does.
"""

import json
import math
from pathlib import Path

import numpy as np
import scipy
from scipy import optimize, special, stats

try:
    import statsmodels
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportions_ztest
except ImportError:
    statsmodels = None

OUT = Path(__file__).with_suffix(".json")


def close(a, b, rel=1e-12):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# Samples, either as raw values (one per unit) or as summaries (n, mean, sample variance).
# Unequal sizes and variances throughout; the summaries have large n for large df and
# small p-values.
VALUES = {
    "a": [12.1, 9.8, 11.4, 10.2, 13.7, 8.9, 10.5, 12.8, 11.1, 9.4],
    "b": [13.2, 14.8, 10.9, 15.5, 12.2, 16.1, 11.7, 14.4, 13.9, 17.3, 12.6, 15.0, 14.1, 16.8],
    "c": [0.0, 1.0, 0.0, 0.0, 3.5, 0.0, 2.25, 0.0, 0.0, 7.75, 0.0, 1.5],
    "d": [0.0, 0.0, 4.0, 0.0, 0.5, 0.0, 0.0, 0.0, 2.0],
    "e": [101.5, 99.25, 100.75, 98.5, 100.0],
    "f": [5.0, 7.0],
}
SUMMARIES = {
    "s1": {"n": 10000, "mean": 4.82, "variance": 9.61},
    "s2": {"n": 12000, "mean": 4.95, "variance": 11.56},
    "s3": {"n": 250, "mean": 0.0, "variance": 2.0},
    "s4": {"n": 40, "mean": 1.3, "variance": 4.5},
    "s5": {"n": 5000, "mean": 100.0, "variance": 400.0},
    "s6": {"n": 5200, "mean": 99.1, "variance": 380.0},
}


def sample_json(name):
    if name in VALUES:
        return {"values": VALUES[name]}
    return dict(SUMMARIES[name])


def summary(name):
    """n, mean, sample variance (ddof=1), computed by NumPy for raw values."""
    if name in VALUES:
        v = np.array(VALUES[name])
        return len(v), float(v.mean()), float(v.var(ddof=1))
    s = SUMMARIES[name]
    return s["n"], s["mean"], s["variance"]


def relative(c, var_c, t, var_t, quantile):
    """Delta method for t/c - 1 with independent estimates: Var ~ var_t/c^2 + t^2 var_c/c^4."""
    if c == 0.0:
        return None, None, None
    lift = t / c - 1.0
    sd = math.sqrt(var_t / c**2 + t**2 * var_c / c**4)
    return lift, lift - quantile * sd, lift + quantile * sd


def z_quantile(alpha):
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def comparison(lift, low, high, rel, p_value, significant):
    lift_rel, rel_low, rel_high = rel
    return {
        "lift_abs": lift,
        "lift_abs_ci": [low, high],
        "lift_rel": lift_rel,
        "lift_rel_ci": None if lift_rel is None else [rel_low, rel_high],
        "p_value": p_value,
        "significant": significant,
    }


# --- Sample summaries and the t-interval of a mean ---------------------------------------

def sample_cases():
    cases = []
    for name, values in VALUES.items():
        v = np.array(values)
        cases.append({"values": values, "n": len(v), "mean": float(v.mean()), "variance": float(v.var(ddof=1))})
    # Running sums as a store would keep them: Sample::from_sums must give the same summary.
    sums = []
    for name in ["a", "b", "e"]:
        v = np.array(VALUES[name])
        sums.append({
            "n": len(v), "sum": float(v.sum()), "sum_squares": float((v * v).sum()),
            "mean": float(v.mean()), "variance": float(v.var(ddof=1)),
        })
    return cases, sums


def mean_interval_cases():
    cases = []
    for name, alpha in [("a", 0.05), ("b", 0.1), ("c", 0.01), ("f", 0.05), ("s1", 0.05), ("s4", 0.2)]:
        n, mean, var = summary(name)
        low, high = stats.t.interval(1.0 - alpha, df=n - 1, loc=mean, scale=math.sqrt(var / n))
        if name in VALUES:
            # The same interval from SciPy's one-sample test on the raw values.
            ci = stats.ttest_1samp(VALUES[name], 0.0).confidence_interval(1.0 - alpha)
            assert close(ci.low, low, 1e-10) and close(ci.high, high, 1e-10)
        cases.append({"sample": sample_json(name), "alpha": alpha, "interval": [float(low), float(high)]})
    return cases


# --- Welch ---------------------------------------------------------------------------------

def welch_cases():
    cases = []
    for c, t, alpha in [("a", "b", 0.05), ("b", "a", 0.01), ("c", "d", 0.05), ("a", "e", 0.1),
                        ("s1", "s2", 0.05), ("s3", "s4", 0.05), ("s5", "s6", 0.001)]:
        nc, mc, vc = summary(c)
        nt, mt, vt = summary(t)
        se2c, se2t = vc / nc, vt / nt
        se = math.sqrt(se2c + se2t)
        df = (se2c + se2t) ** 2 / (se2c**2 / (nc - 1) + se2t**2 / (nt - 1))
        q = float(stats.t.ppf(1.0 - alpha / 2.0, df))
        lift = mt - mc
        low, high = lift - q * se, lift + q * se
        if c in VALUES and t in VALUES:
            # SciPy's Welch test on the raw values; its interval is on mean(first) - mean(second).
            res = stats.ttest_ind(VALUES[t], VALUES[c], equal_var=False)
            p_value = float(res.pvalue)
            ci = res.confidence_interval(1.0 - alpha)
            assert close(ci.low, low, 1e-10) and close(ci.high, high, 1e-10), (c, t)
            assert close(res.df, df, 1e-12)
        else:
            res = stats.ttest_ind_from_stats(mt, math.sqrt(vt), nt, mc, math.sqrt(vc), nc, equal_var=False)
            p_value = float(res.pvalue)
        rel = relative(mc, se2c, mt, se2t, z_quantile(alpha))
        cases.append({
            "control": sample_json(c), "treatment": sample_json(t), "alpha": alpha, "df": df,
            "expected": comparison(lift, low, high, rel, p_value, p_value < alpha),
        })
    return cases


# --- Two proportions -----------------------------------------------------------------------

def two_proportion_cases():
    cases = []
    for control, treatment, alpha in [((120, 1000), (150, 1000), 0.05), ((45, 800), (38, 1200), 0.05),
                                       ((2410, 50000), (2603, 50500), 0.01), ((0, 150), (4, 140), 0.05),
                                       ((9, 10), (17, 20), 0.1)]:
        for pooled in [True, False]:
            (xc, nc), (xt, nt) = control, treatment
            pc, pt = xc / nc, xt / nt
            var_c, var_t = pc * (1 - pc) / nc, pt * (1 - pt) / nt
            if pooled:
                p = (xc + xt) / (nc + nt)
                se_test = math.sqrt(p * (1 - p) * (1 / nc + 1 / nt))
            else:
                se_test = math.sqrt(var_c + var_t)
            lift = pt - pc
            z = lift / se_test
            p_value = float(2.0 * stats.norm.sf(abs(z)))
            if statsmodels is not None and pooled:
                # statsmodels' default variance is the pooled one.
                _, sm_p = proportions_ztest([xt, xc], [nt, nc])
                assert close(sm_p, p_value, 1e-10), (control, treatment)
            q = z_quantile(alpha)
            half = q * math.sqrt(var_c + var_t)
            rel = relative(pc, var_c, pt, var_t, q)
            cases.append({
                "control": list(control), "treatment": list(treatment), "pooled": pooled, "alpha": alpha,
                "expected": comparison(lift, lift - half, lift + half, rel, p_value, p_value < alpha),
            })
    return cases


# --- Ratio metrics -------------------------------------------------------------------------

PAIRS = {
    # (revenue, visits) per user
    "r1": [(12.0, 3.0), (0.0, 1.0), (5.5, 2.0), (30.0, 6.0), (0.0, 2.0), (8.25, 1.0), (14.0, 4.0),
           (2.0, 1.0), (0.0, 3.0), (21.5, 5.0)],
    "r2": [(15.0, 3.0), (4.0, 2.0), (0.0, 1.0), (27.5, 4.0), (9.0, 2.0), (11.0, 3.0), (0.0, 1.0),
           (18.0, 5.0), (6.5, 1.0), (13.0, 2.0), (22.0, 4.0), (3.0, 2.0)],
    "r3": [(1.0, 2.0), (0.0, 4.0), (3.0, 3.0), (2.0, 5.0), (1.0, 1.0), (0.0, 2.0), (4.0, 6.0)],
}


def ratio_summary(name):
    a = np.array(PAIRS[name])
    x, y = a[:, 0], a[:, 1]
    cov = np.cov(x, y, ddof=1)
    n = len(x)
    mx, my = float(x.mean()), float(y.mean())
    r = float(x.sum() / y.sum())
    # Delta method for mean(x)/mean(y): gradient (1/my, -mx/my^2) against Cov(mean x, mean y).
    grad = np.array([1.0 / my, -mx / my**2])
    var_r = float(grad @ (cov / n) @ grad)
    return {
        "pairs": [list(p) for p in PAIRS[name]], "n": n, "mean_x": mx, "mean_y": my,
        "var_x": float(cov[0, 0]), "var_y": float(cov[1, 1]), "cov_xy": float(cov[0, 1]),
        "ratio": r, "ratio_variance": var_r,
    }


def ratio_cases():
    samples = {name: ratio_summary(name) for name in PAIRS}
    comparisons = []
    for c, t, alpha in [("r1", "r2", 0.05), ("r2", "r3", 0.1), ("r3", "r1", 0.01)]:
        sc, st = samples[c], samples[t]
        lift = st["ratio"] - sc["ratio"]
        se = math.sqrt(sc["ratio_variance"] + st["ratio_variance"])
        p_value = float(2.0 * stats.norm.sf(abs(lift / se)))
        q = z_quantile(alpha)
        rel = relative(sc["ratio"], sc["ratio_variance"], st["ratio"], st["ratio_variance"], q)
        comparisons.append({
            "control": c, "treatment": t, "alpha": alpha,
            "expected": comparison(lift, lift - q * se, lift + q * se, rel, p_value, p_value < alpha),
        })
    return list(samples.values()), comparisons


# --- Sample ratio mismatch -----------------------------------------------------------------

def srm_cases():
    cases = []
    for observed, weights in [([5000, 5000], [1, 1]), ([5120, 4880], [50, 50]), ([10321, 9679], [0.5, 0.5]),
                              ([3300, 3350, 3350], [1, 1, 1]), ([2050, 6100, 1850], [2, 6, 2]),
                              ([900, 100], [0.9, 0.1]), ([3, 9], [1, 1])]:
        w = np.array(weights, dtype=float)
        f_exp = sum(observed) * w / w.sum()
        res = stats.chisquare(observed, f_exp=f_exp)
        cases.append({
            "observed": observed, "weights": [float(x) for x in weights],
            "chi_square": float(res.statistic), "p_value": float(res.pvalue), "flagged": bool(res.pvalue < 0.001),
        })
    return cases


# --- Multiple testing ----------------------------------------------------------------------

def holm(p):
    """Textbook Holm: sorted ascending, (m - j + 1) p_(j) (1-based), running max, cap 1."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def bh(p):
    """Textbook Benjamini-Hochberg: m p_(j) / j, running min from the largest, cap 1."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * p[i] / (rank + 1))
        adjusted[i] = running
    return adjusted


def multiple_testing_cases():
    cases = []
    for p in [[0.01, 0.04, 0.03, 0.005], [0.2, 0.001, 0.04, 0.04, 0.8, 0.012, 0.3],
              [0.5], [0.9, 0.95, 0.6], [0.0001, 0.0002, 0.0003, 0.5, 0.049, 0.051, 0.02, 0.03, 0.2, 1.0]]:
        h, b = holm(p), bh(p)
        assert np.allclose(b, stats.false_discovery_control(p, method="bh"), rtol=1e-14, atol=0)
        if statsmodels is not None:
            assert np.allclose(h, multipletests(p, method="holm")[1], rtol=1e-14, atol=0)
            assert np.allclose(b, multipletests(p, method="fdr_bh")[1], rtol=1e-14, atol=0)
        cases.append({"p_values": p, "holm": h.tolist(), "benjamini_hochberg": b.tolist()})
    return cases


# --- Sequential (asymptotic confidence sequence) -------------------------------------------

def sequential_cases():
    """Normal-mixture boundary with N = n_c + n_t and sigma^2 = N se^2:
    d +- se sqrt(2 (N rho^2 + 1) / (N rho^2) ln(sqrt(N rho^2 + 1) / alpha)),
    rho^2 = (-W_{-1}(-alpha^2 / e) - 1) / tuning_n (the width's minimiser at N = tuning_n).
    The always-valid p-value is found here by root finding on alpha with rho fixed, which
    checks the closed form the Rust code uses."""
    cases = []
    for c, t, alpha, tuning_n in [("s1", "s2", 0.05, 20000), ("s1", "s2", 0.05, 1000), ("a", "b", 0.05, 50),
                                  ("s5", "s6", 0.1, 10000), ("s3", "s4", 0.01, 500), ("c", "d", 0.05, 100)]:
        nc, mc, vc = summary(c)
        nt, mt, vt = summary(t)
        se2c, se2t = vc / nc, vt / nt
        se = math.sqrt(se2c + se2t)
        lift = mt - mc
        # u = N rho^2 + 1 at the optimum solves u - 1 - ln u = -2 ln alpha: the W_{-1} branch.
        u = -float(np.real(special.lambertw(-alpha**2 / math.e, k=-1)))
        rho2 = (u - 1.0) / tuning_n
        v = (nc + nt) * rho2

        def multiplier(a):
            return math.sqrt(2.0 * (v + 1.0) / v * math.log(math.sqrt(v + 1.0) / a))

        # rho2 does minimise the width at N = tuning_n.
        width = lambda r2: math.sqrt(2 * (tuning_n * r2 + 1) / (tuning_n * r2) * math.log(math.sqrt(tuning_n * r2 + 1) / alpha))
        best = optimize.minimize_scalar(width, bounds=(rho2 / 10, rho2 * 10), method="bounded",
                                        options={"xatol": 1e-12 * rho2})
        assert abs(best.x - rho2) <= 1e-4 * rho2, (best.x, rho2)

        q = multiplier(alpha)
        # p-value: the alpha at which the half-width equals |lift| (1 when no alpha < 1 does).
        if abs(lift) <= se * multiplier(1.0 - 1e-15):
            p_value = 1.0
        else:
            p_value = optimize.brentq(lambda a: se * multiplier(a) - abs(lift), 1e-300, 1.0 - 1e-15,
                                      xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        low, high = lift - q * se, lift + q * se
        rel = relative(mc, se2c, mt, se2t, q)
        cases.append({
            "control": sample_json(c), "treatment": sample_json(t), "alpha": alpha, "tuning_n": tuning_n,
            "rho2": rho2,
            "expected": comparison(lift, low, high, rel, p_value, bool(low > 0 or high < 0)),
        })
    return cases


# --- Bayesian ------------------------------------------------------------------------------

def bayesian_cases():
    cases = []
    for c, t, prior, higher, alpha in [("a", "b", None, True, 0.05), ("a", "b", (0.0, 1.0), True, 0.05),
                                       ("s1", "s2", None, True, 0.1), ("s1", "s2", (0.0, 0.01), False, 0.05),
                                       ("s5", "s6", (0.5, 4.0), False, 0.2), ("c", "d", (-0.2, 0.25), True, 0.05)]:
        nc, mc, vc = summary(c)
        nt, mt, vt = summary(t)
        se2 = vc / nc + vt / nt
        d = mt - mc
        if prior is None:
            mean, var = d, se2
        else:
            m0, v0 = prior
            precision = 1.0 / v0 + 1.0 / se2
            var = 1.0 / precision
            mean = var * (m0 / v0 + d / se2)
        sd = math.sqrt(var)
        low, high = stats.norm.interval(1.0 - alpha, loc=mean, scale=sd)
        # P(lift > 0) or P(lift < 0) under N(mean, sd^2).
        chance = float(stats.norm.sf(0.0, loc=mean, scale=sd) if higher else stats.norm.cdf(0.0, loc=mean, scale=sd))
        cases.append({
            "control": sample_json(c), "treatment": sample_json(t),
            "prior": None if prior is None else list(prior), "higher_is_better": higher, "alpha": alpha,
            "expected": {"mean": mean, "sd": sd, "interval": [float(low), float(high)], "chance_to_beat_control": chance},
        })
    return cases


def main():
    samples, sums = sample_cases()
    ratio_samples, ratio_comparisons = ratio_cases()
    fixture = {
        "generated_by": "domain/tests/reference/experiment_stats.py",
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "samples": samples,
        "sums": sums,
        "mean_interval": mean_interval_cases(),
        "welch": welch_cases(),
        "two_proportions": two_proportion_cases(),
        "ratio_samples": ratio_samples,
        "ratio_comparisons": ratio_comparisons,
        "srm": srm_cases(),
        "multiple_testing": multiple_testing_cases(),
        "sequential": sequential_cases(),
        "bayesian": bayesian_cases(),
    }
    # repr-exact floats: json writes the shortest string that reads back to the same double.
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
