"""Which knobs mattered: Optuna's fANOVA over a sweep's configurations (sweeps/importance.py),
on tables whose answer is planted."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweeps.importance import ALL_ARMS, MIN_CONFIGS, importances, lines
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


def test_too_few_configurations_say_so_instead_of_ranking_noise():
    found = importances(sweep_table(MIN_CONFIGS - 1), {"a": {}, "b": {}}, SPACE, "best_val_acc", "max", seed=0)
    n, reason = found["a"]
    assert n == MIN_CONFIGS - 1 and isinstance(reason, str) and f"of the {MIN_CONFIGS}" in reason
    assert "too few" in lines(found)[0]


def test_an_arm_that_searches_nothing_is_not_ranked():
    found = importances(sweep_table(10), {"a": {}, "b": {"searched": []}}, SPACE, "best_val_acc", "max", seed=0)
    assert "a" in found and "b" not in found


def test_a_switch_the_arms_set_is_ranked_across_them():
    """speaker_norm differs between the arms and pays 10 points: across the arms it outranks
    every searched knob but lr's own spread."""
    found = importances(sweep_table(12, norm_effect=0.10), {"a": {}, "b": {}}, SPACE, "best_val_acc", "max",
                        seed=0, switches=["speaker_norm", "arm"])
    n, ranked = found[ALL_ARMS]
    assert n == 24 and set(ranked) == {"speaker_norm", "lr", "dropout", "head_width"}
    assert ranked["speaker_norm"] > ranked["dropout"] and ranked["speaker_norm"] > ranked["head_width"]
