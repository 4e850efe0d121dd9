"""The comparisons behind a verdict: which arm is better than its reference, and how sure.

The unit is the fold. A trial is (arm, configuration, fold, seed); the seeds of one fold share
its data split, so they are averaged within the fold before anything is tested across folds
(treating them as independent samples narrows every interval for nothing).

Over K ≥ 2 folds the folds still share training data, so a plain t-test over them is
overconfident (Dietterich 1998; Nadeau & Bengio 2003; Bouckaert & Frank 2004). Both tests here
use Nadeau and Bengio's corrected variance, σ²·(1/K + n_test/n_train):
- the corrected resampled t-test (Weka's), two-sided p from Student's t with K − 1 degrees of
  freedom (scipy), Holm-adjusted across the arms compared with one reference (statsmodels);
- the Bayesian correlated t-test (Benavoli et al. 2017, `baycomp`): P(better), P(equivalent)
  and P(worse) with a region of practical equivalence (--rope). Its verdict is the table's.

On one split (an official one) the item is the unit: McNemar's exact test on the two arms'
per-item predictions (statsmodels) and a bootstrap interval of the accuracy difference over
items (scipy).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

ROPE = 0.01  # accuracy: differences smaller than one point are "equivalent"
LEVEL = 0.95  # a Bayesian verdict needs this posterior probability; the tests' alpha is 1 − LEVEL
ALPHA = 1 - LEVEL

# the line under the table that names the test behind each verdict
TEST_NOTES = {
    "bayes": ("verdicts: Bayesian correlated t-test over the folds' means (seeds averaged within a fold; "
              "Benavoli et al. 2017, baycomp): P(b/e/w) = P(better / equivalent within ±{rope:g} / worse), "
              "a verdict at P ≥ {level:g}; p: corrected resampled t-test (Nadeau & Bengio 2003), Holm-adjusted "
              "over the arms"),
    "mcnemar": ("verdicts: McNemar's exact test on the per-item test predictions of one split, Holm-adjusted "
                "over the arms; Δ's interval: bootstrap over items; equivalent when it lies within ±{rope:g}"),
}


def fold_means(runs: pd.DataFrame, columns) -> pd.DataFrame:
    """One row per fold (a single split is one fold, `fold` NaN): the mean of each column
    over the fold's seeds."""
    key = runs["fold"].astype(object).where(runs["fold"].notna(), -1)
    return runs.groupby(key, sort=True)[[c for c in columns if c in runs]].mean()


def train_test_ratio(runs: pd.DataFrame, k: int) -> float:
    """n_test / n_train of Nadeau and Bengio's correction: from the item counts the trials
    report, else K-fold cross-validation's 1 / (K − 1)."""
    if {"n_train", "n_test"} <= set(runs) and runs["n_train"].notna().all() and (runs["n_train"] > 0).all():
        return float(runs["n_test"].mean() / runs["n_train"].mean())
    return 1.0 / max(k - 1, 1)


def corrected_var(values, ratio: float) -> float:
    """The corrected variance of the mean of K fold estimates: s²·(1/K + n_test/n_train)."""
    x = np.asarray(values, dtype=float)
    return float(np.var(x, ddof=1) * (1.0 / len(x) + ratio))


def interval(values, ratio: float | None) -> tuple[float, float, float]:
    """(mean, standard deviation, half-width of the 95% interval) of K fold estimates; with a
    ratio, the interval uses the corrected variance (None: the plain t interval, for values
    that share no training data)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) < 2:
        return float(x[0]), math.nan, math.nan
    mean, std = float(x.mean()), float(x.std(ddof=1))
    var = corrected_var(x, ratio) if ratio is not None else std ** 2 / len(x)
    return mean, std, float(stats.t.ppf(1 - ALPHA / 2, len(x) - 1) * math.sqrt(var))


def wilson(acc: float, n: int) -> float:
    """Half-width of the Wilson 95% interval of an accuracy over n items (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(round(acc * n), n, alpha=ALPHA, method="wilson")
    return float(high - low) / 2


def corrected_test(a, b, ratio: float, rope: float = ROPE) -> dict:
    """Arm `a` against reference `b`, paired over K folds (one value each, seeds already
    averaged): the mean difference a − b, its corrected 95% interval, the corrected t-test's
    two-sided p, and the Bayesian correlated t-test's P(better/equivalent/worse) and verdict."""
    from baycomp.single import Posterior
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    k = len(d)
    out = {"diff": float(d.mean()) if k else math.nan, "n_pairs": k, "test": "bayes"}
    if k < 2:
        return {**out, "diff_ci95": math.nan, "p_value": math.nan, "p_better": math.nan,
                "p_equivalent": math.nan, "p_worse": math.nan, "verdict": "n/a: one fold"}
    var = corrected_var(d, ratio)
    if var == 0:  # every fold the same difference: certain, either way
        p = 1.0 if d[0] == 0 else 0.0
        half = 0.0
    else:
        t = out["diff"] / math.sqrt(var)
        p = float(2 * stats.t.sf(abs(t), k - 1))
        half = float(stats.t.ppf(1 - ALPHA / 2, k - 1) * math.sqrt(var))
    probs = Posterior(out["diff"], var, k - 1, rope=rope).probs()  # (worse, [equivalent,] better)
    worse, equivalent, better = probs if len(probs) == 3 else (probs[0], 0.0, probs[1])
    return {**out, "diff_ci95": half, "p_value": p, "p_better": float(better), "p_equivalent": float(equivalent),
            "p_worse": float(worse), "verdict": bayes_verdict(better, equivalent, worse)}


def bayes_verdict(better: float, equivalent: float, worse: float, level: float = LEVEL) -> str:
    for name, p in (("better", better), ("equivalent", equivalent), ("worse", worse)):
        if p >= level:
            return name
    return "undecided"


def item_test(correct_a, correct_b, seed: int = 0, rope: float = ROPE, n_resamples: int = 2000) -> dict:
    """Two arms' per-item correctness on one test split (the same items, in the same order):
    McNemar's exact test and the bootstrap 95% interval of the accuracy difference."""
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    p = float(mcnemar(table, exact=True).pvalue)
    d = a.astype(float) - b.astype(float)
    if np.all(d == d[0]):
        low = high = float(d[0])
    else:
        ci = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=LEVEL,
                             rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"diff": float(d.mean()), "diff_ci95": (high - low) / 2, "diff_low": low, "diff_high": high,
            "p_value": p, "n_pairs": len(d), "test": "mcnemar", "discordant": table[0][1] + table[1][0]}


def item_verdict(result: dict, p_adjusted: float, rope: float = ROPE) -> str:
    if p_adjusted < ALPHA and result["diff"] != 0:
        return "better" if result["diff"] > 0 else "worse"
    if -rope <= result["diff_low"] and result["diff_high"] <= rope:
        return "equivalent"
    return "undecided"


def holm(p_values) -> list:
    """Holm's step-down adjustment of the p-values of the arms compared with one reference
    (statsmodels); NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return list(out)


def plain_paired_t(a, b) -> dict:
    """The table's old test, kept for bench/calibration.py's comparison: a paired t-test over
    every (fold, seed) pair as if they were independent."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    if len(d) < 2 or np.all(d == d[0]):
        p = math.nan if len(d) < 2 else (1.0 if d[0] == 0 else 0.0)
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    verdict = ("better" if d.mean() > 0 else "worse") if p < ALPHA and d.mean() != 0 else "no difference"
    return {"diff": float(d.mean()), "p_value": p, "verdict": verdict}
