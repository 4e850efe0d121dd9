"""The Tune searcher of every study: each arm × its configurations × (folds × seeds)."""
from __future__ import annotations

import pickle

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.space import contains, to_tune
from sweeps.study import arm_config, arm_space
from workloads.core.seeding import derive_seed


def study_name(sweep: str, arm: str) -> str:
    """The Optuna study of one arm of one sweep, as optuna-dashboard lists it."""
    return f"{sweep}/{arm}"


def optuna_storage(url: str):
    """Optuna's RDB storage at `url` (sqlite:///PATH, postgresql://...), its tables made if new;
    each arm's study is made by OptunaSearch (load_if_exists), so a resumed sweep reopens it."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {})


class ArmGridSearch(Searcher):
    """Every arm × `samples_per_arm` configurations × `replicates` (folds × seeds). Each arm
    has its own Optuna TPE sampler (seeded from the sweep seed and the arm name), because the
    best hyper-parameters of one arm say little about another's; its first suggestion is the
    study's default configuration, so every arm always includes the reproduction of the
    original setup. A configuration runs once per replicate, each its own Tune trial; Optuna
    is told the configuration's mean validation metric once all its replicates are done."""

    def __init__(self, arms: dict, space: dict, base: dict, samples_per_arm: int, metric: str, mode: str,
                 seed: int, replicates: list | None = None, storage: str | None = None, sweep: str = "sweep"):
        super().__init__(metric=metric, mode=mode)
        self.arms, self.base, self.samples_per_arm = arms, base, samples_per_arm
        self.replicates = list(replicates or [{}])  # [{"fold": k, "seed": s, "replicate": r}, ...]
        self.counts = {arm: 0 for arm in arms}
        self.trial_arm: dict = {}
        self.trial_group: dict = {}
        self.groups: dict = {}  # config_id → {"arm", "left": replicates not done, "values": their metrics}
        self.queue: list = []  # the remaining replicates of the configuration being handed out
        self.seeds = {arm: derive_seed(seed, "optuna", arm) for arm in arms}
        self.searchers = {}
        # Each arm's Optuna study lives in an RDB storage when one is given (optuna_storage), so
        # optuna-dashboard shows the search and it outlives the sweep; else in memory.
        rdb = optuna_storage(storage) if storage else None
        have = {s.study_name for s in rdb.get_all_studies()} if rdb else set()
        for arm in arms:
            own = arm_space(space, arms[arm], base.get("_search") or ())  # an arm may search only the knobs it uses
            if not own:
                continue
            # the reproduction point: the arm's own values (e.g. its dropout) over the defaults
            config = self.arm_config(arm)
            first = {k: config[k] for k in own if k in config and contains(own[k], config[k])}
            name = study_name(sweep, arm)
            # a study already in the storage is this sweep's, resumed: Tune restores the searcher
            # over it, and enqueuing the reproduction point again would add a trial to it
            self.searchers[arm] = OptunaSearch(
                space=OptunaSearch.convert_search_space({k: to_tune(v) for k, v in own.items()}), metric=metric,
                mode=mode, points_to_evaluate=[first] if first and name not in have else None,
                seed=self.seeds[arm], study_name=name, storage=rdb)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours; Tune's param_space is empty

    def suggest(self, trial_id: str):
        if not self.queue:
            # an arm that searches nothing (a floor) has one configuration: its repeats would be copies
            pending = [a for a in self.arms if self.counts[a] < (self.samples_per_arm if a in self.searchers else 1)]
            if not pending:
                return Searcher.FINISHED
            arm = min(pending, key=lambda a: self.counts[a])  # round-robin: early waves span the arms
            group = f"{arm}/c{self.counts[arm]}"
            sampled = {}
            if arm in self.searchers:
                sampled = self.searchers[arm].suggest(group)
                if sampled is None or sampled == Searcher.FINISHED:
                    return sampled
            self.counts[arm] += 1
            self.groups[group] = {"arm": arm, "left": len(self.replicates), "values": []}
            config = {**self.arm_config(arm), **sampled, "arm": arm, "config_id": group}
            self.queue = [{**config, **replicate} for replicate in self.replicates]
        config = self.queue.pop(0)
        self.trial_arm[trial_id] = config["arm"]
        self.trial_group[trial_id] = config["config_id"]
        return config

    def arm_config(self, arm: str) -> dict:
        """Defaults ← the arm's own values ← values set for this run (--set, --epochs, --smoke,
        the CPU subset), which beat the arm's. The sampler's values go on top."""
        return arm_config(self.base, self.arms[arm])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        arm, group = self.trial_arm.get(trial_id), self.trial_group.get(trial_id)
        # intermediate values (Optuna's pruners) only mean something for a configuration run once
        if arm in self.searchers and self.metric in result and len(self.replicates) == 1 and not self._told(arm, group):
            self.searchers[arm].on_trial_result(group, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        arm, group = self.trial_arm.get(trial_id), self.trial_group.get(trial_id)
        if group not in self.groups:
            return
        state = self.groups[group]
        state["left"] -= 1
        if result is not None and not error and self.metric in result:
            state["values"].append(float(result[self.metric]))
        if state["left"] == 0 and arm in self.searchers and not self._told(arm, group):
            values = state["values"]
            mean = {self.metric: sum(values) / len(values)} if values else None
            self.searchers[arm].on_trial_complete(group, mean, error=not values)

    def _told(self, arm: str, group: str) -> bool:
        """Whether the storage holds this configuration's Optuna trial finished already. An RDB
        storage outlives the driver, and Tune saves its state on a period: a resumed sweep
        re-announces a trial that finished after the last save (its last result, once), which
        Optuna was told of before the interruption."""
        trial = self.searchers[arm]._ot_trials.get(group)
        if trial is None:
            return False
        return trial.study._storage.get_trial(trial._trial_id).state.is_finished()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        for searcher in self.searchers.values():
            close_orphans(searcher)


def close_orphans(searcher) -> None:
    """A driver killed after Optuna handed out a configuration but before Tune saved its state
    left that Optuna trial RUNNING in an RDB storage, and the resumed sweep never tells it: it is
    marked FAIL, so the study's history holds only what ran (in memory, nothing outlives the kill)."""
    from optuna.trial import TrialState

    study = getattr(searcher, "_ot_study", None)
    if study is None:
        return
    mine = {t._trial_id for t in getattr(searcher, "_ot_trials", {}).values()}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial._trial_id not in mine:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

