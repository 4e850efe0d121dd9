"""Which knobs mattered: Optuna's fANOVA over a sweep's configurations (sweeps/importance.py),
on tables whose answer is planted."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweeps.importance import MIN_CONFIGS, importances, lines
from sweeps.space import choice, loguniform, uniform

SPACE = {"lr": loguniform(1e-4, 1e-2), "dropout": uniform(0.0, 0.4), "head_width": choice([128, 256, 512])}


def sweep_table(n_configs: int, folds: int = 2, seed: int = 0, norm_effect: float = 0.0) -> pd.DataFrame:
    """Two arms; the validation accuracy rises with log(lr) and nothing else (plus noise), and
    `speaker_norm` (on for arm a, off for arm b) adds norm_effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, norm in (("a", True), ("b", False)):
        for c in range(n_configs):
            lr, dropout, width = 10 ** rng.uniform(-4, -2), rng.uniform(0, 0.4), int(rng.choice([128, 256, 512]))
            for fold in range(folds):
                acc = 0.4 + 0.15 * (np.log10(lr) + 4) + norm_effect * norm + rng.normal(0, 0.005)
                rows.append({"arm": arm, "config_id": f"{arm}/c{c}", "fold": fold, "status": "OK",
                             "best_val_acc": acc, "lr": lr, "dropout": dropout, "head_width": width,
                             "speaker_norm": norm})
    return pd.DataFrame(rows)


def test_the_knob_that_moves_the_metric_ranks_first():
    found = importances(sweep_table(24), {"a": {}, "b": {}}, SPACE, "best_val_acc", "max", seed=3)
    for arm in ("a", "b"):
        n, ranked = found[arm]
        assert n == 24 and list(ranked)[0] == "lr" and ranked["lr"] > 0.8
        assert sum(ranked.values()) == pytest.approx(1.0)
    assert "lr 0." in lines(found)[0] and "(fANOVA over 24 configurations)" in lines(found)[0]


def test_a_failed_run_is_not_counted_and_the_mean_over_folds_is_the_value():
    table = sweep_table(MIN_CONFIGS)
    table.loc[0, "status"] = "ERROR"  # one fold of a/c0 crashed: a/c0 still counts, by its other fold
    found = importances(table, {"a": {}}, SPACE, "best_val_acc", "max", seed=0)
    assert found["a"][0] == MIN_CONFIGS


def test_below_min_configs_a_knob_without_effect_takes_a_share_of_noise():
    """Why MIN_CONFIGS is 16: over six planted tables, fANOVA gave dropout, which moves nothing,
    up to 0.33 at 8 configurations and at most 0.06 at 16 (0.01 at 32). This one is the worst at 8."""
    from sweeps.importance import configurations, distribution, rank

    dists = {k: distribution(d) for k, d in SPACE.items()}

    def dropout_share(n: int) -> float:
        return rank(configurations(sweep_table(n, seed=1).query("arm == 'a'"), "best_val_acc"), dists, "max", 0)["dropout"]

    assert dropout_share(MIN_CONFIGS // 2) > 0.25 and dropout_share(MIN_CONFIGS) < 0.1


def test_too_few_configurations_say_so_instead_of_ranking_noise():
    found = importances(sweep_table(MIN_CONFIGS - 1), {"a": {}, "b": {}}, SPACE, "best_val_acc", "max", seed=0)
    n, reason = found["a"]
    assert n == MIN_CONFIGS - 1 and isinstance(reason, str) and f"of the {MIN_CONFIGS}" in reason
    assert "too few" in lines(found)[0]


def test_an_arm_that_searches_nothing_is_not_ranked():
    found = importances(sweep_table(10), {"a": {}, "b": {"searched": []}}, SPACE, "best_val_acc", "max", seed=0)
    assert "a" in found and "b" not in found


def test_a_switch_searched_with_search_is_ranked_beside_the_arms_knobs():
    """--search speaker_norm=true,false: each arm's sampler varies it (a floor does not), and
    where it pays 10 points it outranks every knob but lr."""
    from sweeps.study import arm_space, searched_space
    from sweeps.hubert_pooling import STUDY

    base = {**STUDY.defaults, "_pinned": [], "_search": {"speaker_norm": [True, False]}}
    space = searched_space(STUDY, base, quiet=True)
    assert "speaker_norm" in arm_space(space, STUDY.arms["layers_mean"], base["_search"])
    assert arm_space(space, STUDY.arms["probe"], base["_search"]) == {}  # the floor searches nothing
    assert "layer_frac" not in arm_space(space, STUDY.arms["layers_mean"], base["_search"])  # layer_mean's alone
    rng = np.random.default_rng(1)
    table = sweep_table(32)
    table["speaker_norm"] = np.repeat(rng.random(len(table) // 2) < 0.5, 2)  # one value per configuration
    table["best_val_acc"] += 0.10 * table["speaker_norm"]
    found = importances(table, {"a": {}, "b": {}}, {**SPACE, "speaker_norm": space["speaker_norm"]},
                        "best_val_acc", "max", seed=0, extra=base["_search"])
    ranked = found["a"][1]
    assert set(ranked) == {"lr", "dropout", "head_width", "speaker_norm"}
    assert ranked["speaker_norm"] > ranked["dropout"] and ranked["speaker_norm"] > ranked["head_width"]
