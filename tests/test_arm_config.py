"""How a trial's config is assembled: defaults ← the arm's own values ← what was set for the
run (--set, --epochs, --smoke, the CPU subset) ← the sampler's values; and each arm's first
trial is its reproduction point."""
from __future__ import annotations

import pytest
from ray import tune

from sweeps.search import ArmGridSearch

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
    from sweeps.study import arm_space

    arms = {"sgd": {"searched": ("lr",)}, "fixed": {"searched": ()}, "all": {}}
    search = ArmGridSearch(arms, SPACE, {"lr": 1e-3, "dropout": 0.25, "_over_arms": []}, samples_per_arm=2,
                           metric="best_val_acc", mode="max", seed=0)
    first = [search.suggest(f"t{i}") for i in range(3)]
    second = [search.suggest(f"t{i}") for i in range(3, 5)]
    by_arm = {s["arm"]: s for s in second}
    assert by_arm["sgd"]["dropout"] == 0.25 and by_arm["sgd"]["lr"] != 1e-3  # lr searched, dropout left alone
    # nothing searched: one configuration, the defaults (a second would be a copy)
    assert first[1]["arm"] == "fixed" and first[1]["lr"] == 1e-3 and "fixed" not in by_arm
    assert search.suggest("t5") == "FINISHED"
    assert by_arm["all"]["lr"] != 1e-3
    assert set(arm_space(SPACE, arms["sgd"])) == {"lr"} and arm_space(SPACE, arms["all"]) == SPACE


def test_a_configuration_runs_once_per_fold_and_seed_and_optuna_hears_their_mean():
    replicates = [{"fold": f, "seed": s, "replicate": r} for f in range(2) for r, s in enumerate((42, 7))]
    search = ArmGridSearch({"a": {}, "b": {}}, SPACE, {"lr": 1e-3, "dropout": 0.25, "_over_arms": []},
                           samples_per_arm=2, metric="best_val_acc", mode="max", seed=0, replicates=replicates)
    first = [search.suggest(f"t{i}") for i in range(4)]
    assert {c["config_id"] for c in first} == {"a/c0"}  # one configuration's four runs, then the next
    assert [(c["fold"], c["seed"]) for c in first] == [(0, 42), (0, 7), (1, 42), (1, 7)]
    assert all({k: v for k, v in c.items() if k not in ("fold", "seed", "replicate")} ==
               {k: v for k, v in first[0].items() if k not in ("fold", "seed", "replicate")} for c in first)
    optuna = search.searchers["a"]
    for i, value in enumerate((0.5, 0.7, 0.6, 0.8)):
        search.on_trial_complete(f"t{i}", {"best_val_acc": value})
        done = optuna._ot_study.trials[0].state.name
        assert (done == "COMPLETE") == (i == 3)  # told only when every run of the configuration is done
    assert optuna._ot_study.trials[0].value == pytest.approx(0.65)
    second = [search.suggest(f"t{i}") for i in range(4, 16)]
    assert [c["config_id"] for c in second[::4]] == ["b/c0", "a/c1", "b/c1"]
    assert search.suggest("t16") == "FINISHED"


def test_a_resumed_searcher_reopens_its_optuna_studies_and_fails_what_the_kill_orphaned(tmp_path):
    """The studies live in the sweep's sqlite file: a searcher built again over it (a resume)
    does not queue the reproduction point a second time, and a configuration Optuna handed out
    after the last saved state (the driver killed in between) is marked FAIL, not left RUNNING."""
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    base = {"lr": 1e-3, "dropout": 0.25, "_over_arms": []}

    def searcher():
        return ArmGridSearch({"a": {}}, SPACE, base, samples_per_arm=3, metric="best_val_acc", mode="max", seed=0,
                             storage=url, sweep="s")

    first = searcher()
    assert first.suggest("t0")["lr"] == 1e-3
    first.on_trial_complete("t0", {"best_val_acc": 0.5})
    first.save(str(tmp_path / "searcher.pkl"))
    first.suggest("t1")  # handed out, then the driver is killed before Tune saves again
    again = searcher()
    again.restore(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name="s/a", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    resumed = again.suggest("t1")  # Tune asks again for the configuration it never saved
    assert resumed["config_id"] == "a/c1" and resumed["lr"] != 1e-3
    again.on_trial_complete("t1", {"best_val_acc": 0.6})
    states = [t.state.name for t in optuna.load_study(study_name="s/a", storage=url).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # no second reproduction point queued
