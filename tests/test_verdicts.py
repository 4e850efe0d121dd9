"""The verdicts' statistics (sweeps/verdicts.py), each checked against another library's or a
paper's numbers, and the arm table built on them: seeds averaged within folds, the corrected
interval, Holm over the arms, McNemar on one split."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeps.results import arm_table, format_arm_table
from sweeps.verdicts import (corrected_test, holm, interval, item_test, item_verdict, plain_paired_t,
                             train_test_ratio, wilson)


def test_the_corrected_test_is_baycomps_correlated_t_test_at_its_own_correction():
    """baycomp's CorrelatedTTest assumes n_test/n_train = 1/(K-1) (runs=1); at that ratio the
    probabilities agree exactly, and the frequentist p is twice the smaller one-sided
    posterior mass at rope 0 (the correlated t posterior is the corrected t statistic's)."""
    from baycomp import CorrelatedTTest

    arm = np.array([0.71, 0.74, 0.69, 0.77, 0.73, 0.70, 0.72, 0.75, 0.71, 0.74])
    ref = np.array([0.70, 0.71, 0.69, 0.74, 0.70, 0.71, 0.70, 0.72, 0.70, 0.71])
    k = len(arm)
    ours = corrected_test(arm, ref, 1 / (k - 1), rope=0.01)
    left, rope, right = CorrelatedTTest.probs(arm, ref, rope=0.01)  # diff = ref − arm: left is "arm better"
    assert (ours["p_better"], ours["p_equivalent"], ours["p_worse"]) == pytest.approx((left, rope, right))
    left0, right0 = CorrelatedTTest.probs(arm, ref, rope=0)
    assert corrected_test(arm, ref, 1 / (k - 1), rope=0)["p_value"] == pytest.approx(2 * min(left0, right0))
    # Nadeau & Bengio's variance, by hand: s²(1/K + n_test/n_train)
    d = arm - ref
    t = d.mean() / math.sqrt(d.var(ddof=1) * (1 / k + 1 / 9))
    assert ours["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), k - 1))
    assert ours["diff_ci95"] == pytest.approx(stats.t.ppf(0.975, k - 1) * math.sqrt(d.var(ddof=1) * (1 / k + 1 / 9)))
    # the correction widens: the plain paired t-test is more confident on the same folds
    assert plain_paired_t(arm, ref)["p_value"] < ours["p_value"]


def test_verdicts_read_better_equivalent_worse_and_undecided():
    up = np.array([0.80, 0.82, 0.81, 0.83, 0.80, 0.82])
    base = up - np.array([0.05, 0.06, 0.05, 0.07, 0.06, 0.05])
    assert corrected_test(up, base, 0.2)["verdict"] == "better"
    assert corrected_test(base, up, 0.2)["verdict"] == "worse"
    same = base + np.array([0.001, -0.001, 0.0005, -0.0005, 0.001, -0.001])
    assert corrected_test(same, base, 0.2)["verdict"] == "equivalent"
    noisy = base + np.array([0.03, -0.02, 0.01, -0.03, 0.02, 0.0])
    assert corrected_test(noisy, base, 0.2)["verdict"] == "undecided"
    assert corrected_test([0.8], [0.7], 0.2)["verdict"].startswith("n/a")


def test_holm_matches_the_procedure_and_leaves_nan():
    # Holm (1979): sorted p × (m, m−1, …), made monotone: 0.01·3, max(0.03·2, 0.03), max(0.04·1, 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.02, math.nan, 0.5])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_items():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.75
    b = np.where(rng.random(400) < 0.85, a, ~a)
    r = item_test(a, b, seed=1)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert r["discordant"] == only_a + only_b
    assert r["p_value"] == pytest.approx(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert r["diff_low"] < r["diff"] < r["diff_high"]
    assert item_verdict(r, 0.001) == ("better" if r["diff"] > 0 else "worse")
    assert item_verdict(item_test(a, a), 1.0) == "equivalent"


def test_wilson_interval_is_scipys():
    ci = stats.binomtest(81, 263).proportion_ci(0.95, method="wilson")
    assert wilson(81 / 263, 263) == pytest.approx((ci.high - ci.low) / 2)


def _trials(folds: int, seeds: int, seed_noise: float, rng) -> pd.DataFrame:
    """Two arms on the same folds: the fold decides most of the score, the seed a little."""
    rows = []
    fold_level = rng.normal(0.70, 0.03, folds)
    for fold in range(folds):
        for s in range(seeds):
            for arm, shift in (("x", 0.01), ("floor", 0.0)):
                acc = fold_level[fold] + shift + rng.normal(0, seed_noise)
                rows.append({"arm": arm, "config_id": f"{arm}/c0", "fold": fold, "seed": 42 + s,
                             "trial": f"{arm}-{fold}-{s}", "best_val_acc": acc, "test_acc": acc, "test_uar": acc,
                             "test_macro_f1": acc, "status": "OK", "model": "m", "random_init": False,
                             "n_train": 800, "n_test": 200})
    return pd.DataFrame(rows)


def test_more_seeds_do_not_narrow_the_interval_beyond_averaging_them_within_folds():
    """With the fold deciding the score, --seeds 3 measures the same folds again: its interval
    must stay that of the fold means (the old test over 12 pairs was about √3 narrower)."""
    one = arm_table(_trials(4, 1, 0.0, np.random.default_rng(7)), {"x": {}, "floor": {}}, reference="floor")
    three = arm_table(_trials(4, 3, 0.0, np.random.default_rng(7)), {"x": {}, "floor": {}}, reference="floor")
    one, three = one.set_index("arm"), three.set_index("arm")
    assert three.loc["x", "n_runs"] == 12 and three.loc["x", "n_folds"] == 4
    assert three.loc["x", "test_acc_ci95"] == pytest.approx(one.loc["x", "test_acc_ci95"])
    # with seed noise on top, averaging seeds can only tighten by what the noise averages away
    noisy = arm_table(_trials(4, 3, 0.005, np.random.default_rng(7)), {"x": {}, "floor": {}},
                      reference="floor").set_index("arm")
    assert noisy.loc["x", "test_acc_ci95"] > 0.8 * one.loc["x", "test_acc_ci95"]
    # the interval is the corrected one over the 4 fold means (n_test/n_train = 200/800)
    fold_means = _trials(4, 1, 0.0, np.random.default_rng(7)).query("arm == 'x'")["test_acc"]
    assert one.loc["x", "test_acc_ci95"] == pytest.approx(interval(fold_means, 0.25)[2])
    assert train_test_ratio(_trials(2, 1, 0, np.random.default_rng(0)), 2) == pytest.approx(0.25)


def test_one_split_compares_arms_item_by_item_and_names_the_test():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 300)
    preds_x = np.where(rng.random(300) < 0.80, labels, (labels + 1) % 4)
    preds_f = np.where(rng.random(300) < 0.60, labels, (labels + 1) % 4)
    trials = pd.DataFrame([
        {"arm": arm, "config_id": f"{arm}/c0", "fold": None, "seed": 42, "trial": f"t-{arm}",
         "best_val_acc": 0.5, "test_acc": float(np.mean(p == labels)), "test_uar": 0.5, "test_macro_f1": 0.5,
         "status": "OK", "model": "m", "random_init": False, "n_train": 1000, "n_test": 300}
        for arm, p in (("x", preds_x), ("floor", preds_f))])
    predictions = pd.concat([pd.DataFrame({"trial": f"t-{arm}", "split": "test", "uid": [f"u{i}" for i in range(300)],
                                           "label": labels, "pred": p}) for arm, p in (("x", preds_x), ("floor", preds_f))])
    table = arm_table(trials, {"x": {}, "floor": {}}, reference="floor", predictions=predictions).set_index("arm")
    assert table.loc["x", "test"] == "mcnemar" and table.loc["x", "verdict"] == "better"
    assert table.loc["x", "test_acc_ci95"] == pytest.approx(wilson(table.loc["x", "test_acc_mean"], 300))
    text = format_arm_table(table.reset_index())
    assert "McNemar" in text and "better" in text
    # without the per-item predictions the table says why it cannot judge
    bare = arm_table(trials, {"x": {}, "floor": {}}, reference="floor").set_index("arm")
    assert bare.loc["x", "verdict"].startswith("n/a: one split")


def test_the_table_names_the_bayesian_test_and_shows_its_probabilities():
    table = arm_table(_trials(5, 1, 0.0, np.random.default_rng(1)), {"x": {}, "floor": {}}, reference="floor",
                      rope=0.02)
    text = format_arm_table(table)
    assert "P(b/e/w)" in text and "within ±0.02" in text and "Holm" in text and "p (Holm)" in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_nemenyis_critical_difference_is_demsars():
    """Demšar (2006), section 3.2.2: k = 4 classifiers on N = 14 data sets, CD = 1.25 at α = 0.05;
    his Table 5's q_0.05 for k = 2 … 6: 1.960, 2.343, 2.569, 2.728, 2.850."""
    from sweeps.compare import critical_difference

    assert critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)
    for k, q in zip(range(2, 7), (1.960, 2.343, 2.569, 2.728, 2.850)):
        assert critical_difference(k, 6) / math.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=0.001)


def test_compare_ranks_arms_across_three_corpora_and_draws_the_cd_diagram(tmp_path, capsys, mlflow_server):
    """Three sweeps' arm tables (one per corpus, as `emosweep compare` finds them): the corpus ×
    arm table, average ranks, Friedman's p (scipy's), the CD diagram, the Bayesian signed-rank
    line; a sweep that is not there is one line and exit 2."""
    from sweeps.cli import main

    means = {"ravdess": [0.62, 0.55, 0.40, 0.50], "manifest": [0.60, 0.57, 0.42, 0.49], "lookalike": [0.91, 0.88, 0.70, 0.80]}
    arms = ["layers_mean", "mean_std", "first_frame", "probe"]
    sweeps = []
    for corpus, values in means.items():
        folder = tmp_path / corpus  # no per-item predictions: the corpus is named by the folder
        folder.mkdir()
        pd.DataFrame({"arm": arms, "test_acc_mean": values, "reference": "probe"}).to_csv(folder / "results.arms.csv",
                                                                                           index=False)
        sweeps.append(str(folder))
    out = tmp_path / "cmp"
    assert main(["compare", *sweeps, "--out", str(out), "--tracking-uri", mlflow_server.uri]) == 0
    text = capsys.readouterr().out
    friedman = stats.friedmanchisquare(*[[means[c][i] for c in means] for i in range(4)]).pvalue
    assert f"p = {friedman:.3g}" in text and "critical difference" in text
    assert "layers_mean against probe" in text and "P(better/equivalent/worse)" in text
    table = pd.read_csv(out / "compare.csv", index_col="corpus")
    assert table.shape == (3, 4) and table.loc["lookalike", "probe"] == 0.80
    assert (out / "cd.png").stat().st_size > 5000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    run = client.search_runs([client.get_experiment_by_name("emosweep-compare").experiment_id])[0]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"compare.md", "compare.csv", "cd.png"}
    assert main(["compare", sweeps[0], str(tmp_path / "nope"), "--no-tracking"]) == 2
    assert "nope" in capsys.readouterr().err


def test_one_sweep_over_three_corpora_is_ranked_at_its_end_and_by_compare(tmp_path, capsys):
    """S2 with three --corpus: its within-corpus arms (ARM on the first, ARM_on_CORPUS on the
    others) make the corpus × arm table; cross arms stay out of it."""
    from sweeps.cli import main
    from sweeps.compare import across_corpora, corpus_arm_table

    rows = []
    for corpus, values in {"ravdess": [0.62, 0.55, 0.50], "manifest": [0.60, 0.57, 0.49],
                           "lookalike": [0.91, 0.88, 0.80]}.items():
        for arm, value in zip(["layers_mean", "mean_std", "probe"], values):
            name = arm if corpus == "ravdess" else f"{arm}_on_{corpus}"
            rows.append({"arm": name, "train_corpus": corpus, "test_corpus": corpus, "test_acc_mean": value,
                         "reference": "probe" if corpus == "ravdess" else f"probe_on_{corpus}"})
    rows.append({"arm": "ravdess_to_lookalike", "train_corpus": "ravdess", "test_corpus": "lookalike",
                 "test_acc_mean": 0.3, "reference": "ravdess_to_lookalike_probe"})
    arms = pd.DataFrame(rows)
    table, reference = corpus_arm_table(arms)
    assert table.shape == (3, 3) and reference == "probe" and table.loc["lookalike", "mean_std"] == 0.88
    text, files = across_corpora(arms, tmp_path / "results")
    assert "3 arms across 3 corpora" in text and "layers_mean against probe" in text
    assert [f.name for f in files] == ["results.corpora.md", "results.cd.png"]
    assert corpus_arm_table(arms[arms["test_corpus"] == "ravdess"]) is None  # one corpus: nothing to rank
    folder = tmp_path / "sweep"
    folder.mkdir()
    arms.to_csv(folder / "results.arms.csv", index=False)
    assert main(["compare", str(folder), "--out", str(tmp_path / "cmp"), "--no-tracking"]) == 0
    assert "Friedman" in capsys.readouterr().out and (tmp_path / "cmp" / "cd.png").exists()
