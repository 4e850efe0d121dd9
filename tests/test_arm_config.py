"""How a trial's config is assembled: defaults ← the arm's own values ← what was set for the
run (--set, --epochs, --smoke, the CPU subset) ← the sampler's values; and each arm's first
trial is its reproduction point."""
from __future__ import annotations

from ray import tune

from sweeps.runner import ArmGridSearch

ARMS = {"basic": {"epochs": 10, "dropout": 0.0}, "deep": {"epochs": 40}}
SPACE = {"lr": tune.loguniform(1e-4, 1e-2), "dropout": tune.choice([0.0, 0.25, 0.4])}


def _suggestions(base: dict, n: int = 4) -> list[dict]:
    search = ArmGridSearch(ARMS, SPACE, base, samples_per_arm=2, metric="best_val_acc", mode="max", seed=0)
    return [search.suggest(f"t{i}") for i in range(n)]


def test_first_trial_of_an_arm_uses_the_arms_own_values():
    first_basic, first_deep, second_basic, second_deep = _suggestions(
        {"lr": 1e-3, "dropout": 0.25, "epochs": 40, "_over_arms": []})
    assert (first_basic["arm"], first_basic["epochs"], first_basic["dropout"], first_basic["lr"]) == ("basic", 10, 0.0, 1e-3)
    assert (first_deep["arm"], first_deep["epochs"], first_deep["dropout"]) == ("deep", 40, 0.25)
    assert second_basic["lr"] != 1e-3 and second_basic["epochs"] == 10  # searched, the arm's epochs kept


def test_values_set_for_the_run_beat_the_arm_but_not_the_search():
    suggestions = _suggestions({"lr": 1e-3, "dropout": 0.25, "epochs": 6, "_over_arms": ["epochs", "lr"]})
    assert all(s["epochs"] == 6 for s in suggestions)  # e.g. the CPU subset's epochs, for every arm
    assert suggestions[0]["lr"] == 1e-3 and suggestions[2]["lr"] != 1e-3  # still searched after the first


def test_an_arm_searches_only_the_knobs_it_names():
    from sweeps.runner import arm_space

    arms = {"sgd": {"searched": ("lr",)}, "fixed": {"searched": ()}, "all": {}}
    search = ArmGridSearch(arms, SPACE, {"lr": 1e-3, "dropout": 0.25, "_over_arms": []}, samples_per_arm=2,
                           metric="best_val_acc", mode="max", seed=0)
    first = [search.suggest(f"t{i}") for i in range(3)]
    second = [search.suggest(f"t{i}") for i in range(3, 6)]
    by_arm = {s["arm"]: s for s in second}
    assert by_arm["sgd"]["dropout"] == 0.25 and by_arm["sgd"]["lr"] != 1e-3  # lr searched, dropout left alone
    assert by_arm["fixed"] == {**first[1], "arm": "fixed"}  # nothing searched: the defaults again
    assert by_arm["all"]["lr"] != 1e-3
    assert set(arm_space(SPACE, arms["sgd"])) == {"lr"} and arm_space(SPACE, arms["all"]) == SPACE
