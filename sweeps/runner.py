"""The one sweep engine every study calls.

A study is arms × a searched space × fixed defaults, with a metric and a mode. `main(study)`
parses the common flags, starts (or joins) Ray and an MLflow server, runs a Ray Tune Tuner
whose searcher keeps one seeded Optuna sampler per arm (a real grid over the arms crossed
with a searched space; the first trial of every arm is the study's reproduction config),
with an early-stopping scheduler, a checkpoint per epoch, retries from checkpoints and
--resume. It ends with the study's results table, printed and written as CSV and Markdown,
and logged to the sweep's parent MLflow run.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import pandas as pd
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from workloads.core.config import parse_value
from workloads.core.console import quiet_logs, restore_logs
from workloads.core.paths import emosweep_home
from workloads.core.ray_start import start_ray
from workloads.core.storage import filesystem
from workloads.core.seeding import derive_seed
from workloads.core.mlflow_server import SharedServer
from sweeps.results import (arm_table, default_reference, format_arm_table, plot_arms,
                            results_table, write_tables)
from workloads.core.tracking import (TrackingContext, fail_fast_requests, find_child_run, git_commit,
                                     share_sweep_view, start_parent_run)

STATE_FILE = "emosweep.json"  # beside Tune's own state in the experiment folder


@dataclass
class Study:
    """What a study file declares. `trainable(config, tracking)` trains one trial."""

    name: str
    workload: str
    trainable: Callable
    arms: dict  # arm name → config overrides (the arm's fixed knobs)
    space: dict  # searched hyper-parameters: name → ray.tune domain
    defaults: dict  # the report's setup; also the first value tried for every searched knob
    metric: str = "best_val_acc"
    mode: str = "max"
    smoke: dict = field(default_factory=dict)  # overrides for --smoke: tiny data and model
    cpu_subset: dict = field(default_factory=dict)  # overrides on a machine with no GPU, unless --full-data
    # One line said (printed, on the parent run, in the results file) when cpu_subset is in
    # force: what the subset is and what it can and cannot show. `{subset}` lists it.
    cpu_note: str = ""
    prepare: Callable | None = None  # (config, opts) → config: resolve models/data once, in the driver
    describe: Callable | None = None  # config → {artifact name: text or Path of a file}: the data report, on the parent run
    table_columns: list = field(default_factory=list)  # config keys shown in the results table
    description: str = ""
    # arm config (after prepare) → why this arm cannot run on this data, or None: such arms are
    # named with the reason and left out, the others run
    unavailable: Callable | None = None
    extra_flags: dict = field(default_factory=dict)  # flag name → help: more string options (--text-model …)
    # Folds: a corpus with official splits refuses --folds (this says why); otherwise the
    # driver's items table (prepare → write_items) is folded by speaker or by item.
    official_splits: str = ""
    speaker_folds: bool = True  # False: the labels are the speakers (speaker ID), folds split items
    split_by: str = "speaker"  # how the study's own split (no --folds) is made: speaker or item
    # the arm each arm is compared with: an arm name, a callable arm → arm (or None), or None:
    # the floor where the study has one, else its first arm (the report's)
    reference: object = None


def arm_space(space: dict, arm: dict) -> dict:
    """The part of the study's searched space an arm searches: all of it, or the keys its
    `searched` entry lists (a solver's own knobs: SGD's alpha, not the sag solver's C)."""
    if "searched" not in arm:
        return space
    return {k: v for k, v in space.items() if k in arm["searched"]}


class ArmGridSearch(Searcher):
    """Every arm × `samples_per_arm` configurations × `replicates` (folds × seeds). Each arm
    has its own Optuna TPE sampler (seeded from the sweep seed and the arm name), because the
    best hyper-parameters of one arm say little about another's; its first suggestion is the
    study's default configuration, so every arm always includes the reproduction of the
    original setup. A configuration runs once per replicate, each its own Tune trial; Optuna
    is told the configuration's mean validation metric once all its replicates are done."""

    def __init__(self, arms: dict, space: dict, base: dict, samples_per_arm: int, metric: str, mode: str,
                 seed: int, replicates: list | None = None):
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
        for arm in arms:
            own = arm_space(space, arms[arm])  # an arm may search only the knobs it uses
            if not own:
                continue
            # the reproduction point: the arm's own values (e.g. its dropout) over the defaults
            config = self.arm_config(arm)
            first = {k: config[k] for k in own if k in config}
            self.searchers[arm] = OptunaSearch(space=OptunaSearch.convert_search_space(dict(own)), metric=metric,
                                               mode=mode, points_to_evaluate=[first] if first else None,
                                               seed=self.seeds[arm])

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
        forced = {k: self.base[k] for k in self.base.get("_over_arms", ()) if k in self.base}
        return {**self.base, **self.arms[arm], **forced}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        arm, group = self.trial_arm.get(trial_id), self.trial_group.get(trial_id)
        # intermediate values (Optuna's pruners) only mean something for a configuration run once
        if arm in self.searchers and self.metric in result and len(self.replicates) == 1:
            self.searchers[arm].on_trial_result(group, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        arm, group = self.trial_arm.get(trial_id), self.trial_group.get(trial_id)
        if group not in self.groups:
            return
        state = self.groups[group]
        state["left"] -= 1
        if result is not None and not error and self.metric in result:
            state["values"].append(float(result[self.metric]))
        if state["left"] == 0 and arm in self.searchers:
            values = state["values"]
            mean = {self.metric: sum(values) / len(values)} if values else None
            self.searchers[arm].on_trial_complete(group, mean, error=not values)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


_CURRENT_TRACKING_URI: str | None = None  # this driver's tracking URI (a resumed sweep may get a new port)


class ChildRunStatus(tune.Callback):
    """Closes each trial's MLflow run when Tune is done with it: FINISHED, stopped early by
    the scheduler (tagged), or FAILED after its last retry. Tune pickles callbacks with the
    sweep, so it reads the tracking URI of the current driver rather than keeping one."""

    def __init__(self, experiment_id: str, parent_run_id: str, epochs_key: str = "epochs"):
        self.experiment_id, self.parent_run_id, self.epochs_key = experiment_id, parent_run_id, epochs_key

    def _close(self, trial, status: str) -> None:
        from mlflow.tracking import MlflowClient

        uri = _CURRENT_TRACKING_URI
        if not uri:
            return
        ctx = TrackingContext(uri, self.experiment_id, self.parent_run_id)
        client = MlflowClient(uri)
        try:
            run = find_child_run(client, ctx, trial.trial_id)
            if run is None or run.info.status == "FINISHED":  # a resumed sweep re-announces finished trials
                return
            done = int((trial.last_result or {}).get("epoch", 0))
            planned = int(trial.config.get(self.epochs_key, done))
            client.set_tag(run.info.run_id, "num_failures", str(trial.num_failures))
            if status == "FINISHED" and done < planned and not (trial.last_result or {}).get("early_stopped"):
                client.set_tag(run.info.run_id, "stopped_early", f"after epoch {done} of {planned}")
            client.set_terminated(run.info.run_id, status)
        except Exception as e:  # tracking must never take the sweep down
            print(f"[emosweep] could not close the MLflow run of trial {trial.trial_id}: {e}", file=sys.stderr)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED")


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_name(trial) -> str:
    return f"{trial.config.get('arm', 'trial')}_{trial.trial_id.split('_')[-1]}"


# ----------------------------------------------------------------------------- options

def build_parser(study: Study) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=study.name, description=study.description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny data and model; about a minute on a laptop CPU")
    p.add_argument("--full-data", action="store_true", help="use all the data even without a GPU")
    p.add_argument("--data-dir", help="corpus in its native layout (default: the study's embedded data)")
    p.add_argument("--model", help="hub id, local model folder, or 'offline' for the packaged model")
    for flag, text in study.extra_flags.items():
        p.add_argument(f"--{flag}", help=text)
    p.add_argument("--arms", help=f"comma-separated subset of: {', '.join(study.arms)}")
    p.add_argument("--num-samples", type=int, default=1, help="trials per arm (the first is the reproduction)")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed config value (JSON values: --set max_length=64)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="data-parallel workers per trial (Ray Train, DDP); each gets the CPUs/GPUs above")
    p.add_argument("--scheduler", choices=["asha", "fifo"],
                   help="early stopping (default: asha when --num-samples > 1, else fifo so every arm finishes)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial, from its last checkpoint")
    p.add_argument("--address", help="join an existing Ray cluster ('auto' on a node of `ray up`)")
    p.add_argument("--storage-path", help="where Tune keeps trials and checkpoints: local path or URI "
                   "(default: $EMOSWEEP_STORAGE_PATH, else $EMOSWEEP_HOME/ray)")
    p.add_argument("--tracking-uri", help="MLflow server to log to (default: $EMOSWEEP_TRACKING_URI, else start "
                   "one on loopback)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the study name)")
    p.add_argument("--name", help="name of this sweep (default: study name + timestamp)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="NAME",
                   help="resume an interrupted sweep: its name, its folder, or the latest of this study")
    p.add_argument("--results-out", help="results table CSV path (a .md is written beside it)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--folds", metavar="K|loso",
                   help="run every configuration on K speaker-disjoint folds (each fold's speakers are its test "
                        "set), or one fold per speaker (loso); the table gives each arm's mean and 95%% CI")
    p.add_argument("--seeds", type=int, default=1, help="repeats of every configuration (and fold) with derived seeds")
    p.add_argument("--split-by", choices=["speaker", "item"],
                   help="folds of speakers (default, when the corpus names them) or stratified folds of items")
    p.add_argument("--reference", metavar="ARM",
                   help="the arm every arm is compared with, paired over folds and seeds (default: the floor, "
                        "else the report's arm)")
    p.add_argument("--allow-leak", action="store_true",
                   help="run even when a split shares speakers or identical audio between train, val and test "
                        "(recorded as a tag)")
    p.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2],
                   help="0: a progress bar and emosweep's summary, the libraries' logs to a file; 1: Ray's and "
                        "Tune's output and the trials' own output here too; 2: Tune's most detailed status")
    return p


def _in_domain(domain, value) -> bool:
    if hasattr(domain, "categories"):
        return value in domain.categories
    lower, upper = getattr(domain, "lower", None), getattr(domain, "upper", None)
    try:
        return lower is None or lower <= value <= upper
    except TypeError:
        return False


def searched_space(study: Study, base: dict, quiet: bool = False) -> dict:
    """The study's space less what is pinned: keys set on the command line, and defaults that
    lie outside their domain (the reproduction config must run as written; say so)."""
    space = {}
    for key, domain in study.space.items():
        if key in base.get("_pinned", ()):
            continue
        if key in base and not _in_domain(domain, base[key]):
            if quiet:
                continue
            print(f"[emosweep] {key}={base[key]!r} lies outside the searched {domain!r}; "
                  f"every trial uses {base[key]!r}", file=sys.stderr)
            continue
        space[key] = domain
    return space


def select_arms(study: Study, opts) -> dict:
    if not opts.arms:
        return study.arms
    wanted = [a.strip() for a in opts.arms.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in study.arms]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; {study.name} has {list(study.arms)}")
    return {a: study.arms[a] for a in wanted}


def study_config(study: Study, opts, has_gpu: bool) -> tuple[dict, dict]:
    """(arms, base config) for this run: defaults ← cpu subset ← smoke ← flags."""
    base = dict(study.defaults)
    over_arms = set()  # set for this run: these beat what an arm sets
    if not has_gpu and not opts.full_data and not opts.smoke:
        base.update(study.cpu_subset)
        over_arms |= set(study.cpu_subset)
        if study.cpu_note:
            subset = ", ".join(f"{k}={v}" for k, v in study.cpu_subset.items())
            base["_run_note"] = study.cpu_note.format(subset=subset)
            print(f"[emosweep] {base['_run_note']}")
    if opts.smoke:
        base.update(study.smoke)
        over_arms |= set(study.smoke)
    pinned = set()  # set on the command line: the same for every trial, no longer searched
    for item in opts.set:
        key, _, value = item.partition("=")
        base[key] = parse_value(value)
        pinned.add(key)
    if opts.epochs:
        base["epochs"] = opts.epochs
        pinned.add("epochs")
    base["_pinned"] = sorted(pinned)
    base["_over_arms"] = sorted(pinned | over_arms)
    base["seed"] = opts.seed
    if opts.workers_per_trial > 1:
        base.update(workers_per_trial=opts.workers_per_trial, cpus_per_worker=opts.cpus_per_trial,
                    gpus_per_worker=opts.gpus_per_trial if opts.gpus_per_trial is not None else int(has_gpu))
    base["data_dir"] = str(Path(opts.data_dir).resolve()) if opts.data_dir else base.get("data_dir")
    arms = select_arms(study, opts)
    if study.prepare is not None:
        base = study.prepare(base, opts)
    base = plan_folds(study, base, opts)
    if study.unavailable is not None:
        for arm in list(arms):
            why = study.unavailable({**base, **arms[arm]})
            if why:
                print(f"[emosweep] arm {arm} cannot run: {why}", file=sys.stderr)
                arms = {a: c for a, c in arms.items() if a != arm}
        if not arms:
            raise SystemExit(f"no arm of {study.name} can run on this data (see above)")
    return arms, base


def check_fold_flags(study: Study, opts) -> None:
    """The fold flags a study cannot use are refused before anything starts."""
    from workloads.data.folds import FoldError, parse_folds

    try:
        folds = parse_folds(opts.folds)
    except FoldError as e:
        raise SystemExit(str(e)) from None
    if folds and study.official_splits:
        raise SystemExit(f"--folds: {study.name} uses {study.official_splits}; its splits are fixed. "
                         f"Use --seeds N to repeat every configuration with other seeds")
    if opts.allow_leak and study.official_splits:
        raise SystemExit(f"--allow-leak: {study.name} uses {study.official_splits}; the split gate does not run on them")
    if opts.split_by and study.official_splits:
        raise SystemExit(f"--split-by: {study.name} uses {study.official_splits}; its splits are fixed")
    if opts.split_by and not folds:
        raise SystemExit("--split-by chooses how --folds makes its folds; give --folds K too")
    if opts.split_by == "speaker" and not study.speaker_folds:
        raise SystemExit(f"--split-by speaker: {study.name}'s labels are the speakers; its folds split items")
    if opts.seeds < 1:
        raise SystemExit(f"--seeds {opts.seeds}: at least 1")
    if opts.reference and opts.reference not in study.arms:
        raise SystemExit(f"--reference {opts.reference}: not an arm of {study.name} ({', '.join(study.arms)})")


def plan_folds(study: Study, base: dict, opts) -> dict:
    """After the study's prepare: how many folds, split how, and the split-integrity gate over
    every fold (or the one split) before any trial starts. A leak is refused by name unless
    --allow-leak. Sets n_folds, split_by, split_seed and the gate's report on base."""
    from workloads.data.folds import (FoldError, assignments, count_folds, gate, parse_folds, resolve_split_by,
                                      split_sizes)

    base = dict(base)
    folds = parse_folds(opts.folds)
    base.update(folds=str(folds or 0), n_folds=0, split_seed=opts.seed, seeds=opts.seeds,
                split_by=study.split_by if not study.official_splits else "official")
    if study.official_splits or ("items_file" not in base and "items" not in base):
        return base  # the corpus's own splits
    from workloads.data.study_items import study_items

    items = study_items(base)
    try:
        if folds:
            base["split_by"], why = resolve_split_by(items, opts.split_by, study.speaker_folds)
            base["n_folds"] = count_folds(items, folds, base["split_by"])
            print(f"[emosweep] {base['n_folds']} folds by {base['split_by']} ({why}), split seed {opts.seed}")
        elif study.split_by == "speaker" and not all(str(r.get("speaker") or "") for r in items.values()):
            base["split_by"] = "item"
    except FoldError as e:
        raise SystemExit(str(e)) from None
    checks = assignments(items, base["n_folds"], base["split_by"], opts.seed)
    per, leaks = gate(items, checks, base["split_by"])
    hashed = any(r.get("content_hash") for r in items.values())
    checked = (["no speaker in two parts"] if base["split_by"] == "speaker" else []) + \
              (["no identical decoded audio in two parts"] if hashed else [])
    verdict = "clean" if not leaks else f"{len(leaks)} leak(s)" + (", allowed by --allow-leak" if opts.allow_leak else "")
    base["_gate"] = (f"split gate ({', '.join(checked) or 'nothing to check'}) over "
                     f"{len(per)} {'folds' if base['n_folds'] else 'split'}: {verdict}")
    base["_gate_leaks"] = leaks[:50]
    if base["n_folds"]:  # the data report: what each fold trains, validates and tests on
        lines = ["| fold | train items (speakers) | val | test |", "|---|---|---|---|"]
        for name, splits in checks:
            sizes = split_sizes(items, splits)
            lines.append(f"| {name.split()[-1]} | " + " | ".join(f"{n} ({s})" for n, s in sizes.values()) + " |")
        base["_gate"] += "\n\n" + "\n".join(lines)
    print(f"[emosweep] {base['_gate'].splitlines()[0]}")
    if leaks and not opts.allow_leak:
        shown = "\n  ".join(leaks[:10]) + (f"\n  … and {len(leaks) - 10} more" if len(leaks) > 10 else "")
        raise SystemExit(f"the split leaks between train, val and test; refusing to run:\n  {shown}\n"
                         f"(--allow-leak runs it anyway, and records that)")
    return base


def trial_count(study: Study, arms: dict, state: dict) -> int:
    """Trials a sweep runs: configurations (one for an arm that searches nothing) × folds × seeds."""
    space = searched_space(study, state["base"], quiet=True)
    configs = sum(int(state["samples_per_arm"]) if arm_space(space, arms[a]) else 1 for a in arms)
    return configs * len(state.get("replicates") or [{}])


def replicates_of(base: dict) -> list[dict]:
    """(fold, seed) of every trial of one configuration: folds × seeds. The first seed is the
    sweep's own; the others derive from it. The split seed stays the sweep's, so every seed
    sees the same folds and arms pair over them."""
    seed = int(base["seed"])
    seeds = [seed] + [derive_seed(seed, "replicate", r) for r in range(1, int(base.get("seeds", 1)))]
    folds = list(range(int(base.get("n_folds") or 0))) or [None]
    return [{"fold": f, "seed": s, "replicate": r} for f in folds for r, s in enumerate(seeds)]


class Storage:
    """Where Tune keeps a sweep: a local folder or an object-store URI (s3://, gs://, …), read
    and written through pyarrow's filesystems, as Tune itself does."""

    def __init__(self, root: str):
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = root.rstrip("/")
        self.fs, self.base = filesystem(self.root)
        self.local = "://" not in root

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _fs_path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._fs_path(name)).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(self._fs_path(name)) as f:
            return f.read().decode()

    def write_text(self, name: str, text: str) -> None:
        self.fs.create_dir(self._fs_path(name).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self._fs_path(name)) as f:
            f.write(text.encode())

    def sweeps(self, prefix: str) -> list[str]:
        """Names of the sweeps under root whose name starts with prefix, oldest first."""
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.base, allow_not_found=True))
        found = [(i.mtime_ns or 0, i.base_name) for i in infos
                 if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(prefix)
                 and self.exists(f"{i.base_name}/{STATE_FILE}")]
        return [name for _, name in sorted(found)]


def _find_resume(storage: Storage, study: Study, resume: str) -> str:
    """The name of the sweep to resume under storage (`resume` may be a local folder path)."""
    candidate = Path(resume).expanduser()
    if storage.local and candidate.is_dir() and (candidate / STATE_FILE).exists():
        if str(candidate.resolve().parent) != storage.root:
            raise SystemExit(f"{candidate} is not under the storage path {storage.root}; pass --storage-path")
        return candidate.name
    if resume != "latest":
        if not storage.exists(f"{resume}/{STATE_FILE}"):
            raise SystemExit(f"no sweep named {resume!r} under {storage.root}")
        return resume
    runs = storage.sweeps(f"{study.name}-")
    if not runs:
        raise SystemExit(f"nothing to resume: no sweep of {study.name} under {storage.root}")
    return runs[-1]


# ----------------------------------------------------------------------------- the engine

def warn_if_unreachable(uri: str) -> None:
    """A loopback MLflow server serves trials on this machine only. Several nodes on several
    hosts need the head's server (cluster.yaml exports EMOSWEEP_TRACKING_URI for that)."""
    import ray
    from urllib.parse import urlparse

    if urlparse(uri).hostname not in ("127.0.0.1", "localhost", "::1"):
        return
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    if len(hosts) > 1:
        print(f"[emosweep] warning: MLflow at {uri} is loopback-only but the cluster spans {len(hosts)} hosts; "
              f"trials elsewhere cannot log. Pass --tracking-uri http://<head-ip>:5000 or set "
              f"EMOSWEEP_TRACKING_URI.", file=sys.stderr)


class TrialProgress(tune.Callback):
    """The quiet terminal's view of a sweep: one bar over its trials, with the best result so
    far. Tune pickles callbacks with the sweep's state, so the bar is made when first needed."""

    def __init__(self, total: int, metric: str, mode: str):
        self.total, self.metric, self.mode = total, metric, mode
        self.best, self.errors, self.finished, self._bar = None, 0, 0, None

    def __getstate__(self):
        return {**self.__dict__, "_bar": None}

    def bar(self):
        if self._bar is None:
            from workloads.core.console import progress_bar

            self._bar = progress_bar(self.total, "trials", "trial")
        return self._bar

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and (self.best is None or (value > self.best) == (self.mode == "max")):
            self.best = value
        running = sum(t.status == "RUNNING" for t in trials)
        self.bar().set_postfix_str(f"running {running}, best {self.metric} {self.best:.4g}"
                                   + (f", {self.errors} failed" if self.errors else ""), refresh=True)

    def _done(self, trial, what: str) -> None:
        bar = self.bar()
        bar.update(1)
        self.finished += 1
        if bar.disable:  # no terminal (a log file, CI): one line per finished trial instead of a bar
            result = trial.last_result or {}
            value = result.get(self.metric)
            shown = f", {self.metric} {value:.4g}" if isinstance(value, (int, float)) else ""
            test = f", test_acc {result['test_acc']:.4g}" if isinstance(result.get("test_acc"), (int, float)) else ""
            print(f"[emosweep] trial {self.finished}/{self.total} {what}: {trial.config.get('arm')} ({trial.trial_id}){shown}"
                  f"{test}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errors += 1
        self._done(trial, "failed")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()


def reference_of(study: Study, arms: dict, asked: str | None):
    """The reference arm of each arm: --reference, else the study's own rule, else its floor or
    first arm."""
    if asked:
        return asked
    if callable(study.reference):
        return lambda arm: study.reference(arm, arms)
    return study.reference if study.reference in arms else default_reference(arms)


def selection_note(base: dict, samples: int, metric: str) -> str:
    """One line on how each arm's configuration was chosen and what its numbers are over."""
    n_folds, seeds = int(base.get("n_folds") or 0), int(base.get("seeds") or 1)
    over = (f"{n_folds} folds by {base.get('split_by')}" if n_folds else
            f"the {'official' if base.get('split_by') == 'official' else 'seeded ' + str(base.get('split_by'))} split")
    over += f" × {seeds} seed{'s' if seeds > 1 else ''}"
    chosen = ("one configuration per arm (the study's defaults)" if samples == 1 else
              f"each arm's configuration chosen among {samples} by its mean {metric} (validation) over the runs; "
              f"test metrics are reported, never used to choose")
    return f"Over {over}: {chosen}. ± is the 95% CI of the mean; Δ is paired with the reference arm."


def log_arm_runs(client, tracking: TrackingContext, trials: pd.DataFrame, arms_tab: pd.DataFrame,
                 metric: str) -> None:
    """One MLflow run per (arm, configuration) under the sweep's parent, holding its fold and
    seed runs as children and its aggregate metrics (results.config_stats); the configuration
    each arm's row reports is tagged `selected`, and the sweep's shared view lists those, one
    row per arm. Runs made by an earlier end of the same sweep (a resumed one) are reused."""
    from mlflow.entities import Metric

    from sweeps.results import config_stats
    from workloads.core.tracking import TAG_PARENT, TAG_TRIAL_ID

    ctx = tracking
    children = client.search_runs([ctx.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{ctx.parent_run_id}'",
                                  max_results=50000)
    existing = {r.data.tags["config_id"]: r for r in children if r.data.tags.get("emosweep_row") == "arm"}
    trial_runs = {r.data.tags.get(TAG_TRIAL_ID): r for r in children if "emosweep_row" not in r.data.tags}
    chosen = arms_tab.attrs.get("chosen", {})
    by_arm = arms_tab.set_index("arm")
    now = int(time.time() * 1000)
    done = trials[trials["status"] != "ERROR"]
    for config_id, group in trials.groupby(trials["config_id"].fillna("c0"), sort=False):
        arm = group["arm"].iloc[0]
        selected = chosen.get(arm) == config_id
        tags = {TAG_PARENT: ctx.parent_run_id, "emosweep_row": "arm", "arm": arm, "config_id": config_id,
                "selected": str(selected).lower(), **{k: v for k, v in ctx.tags.items() if k != "git_commit"}}
        run = existing.get(config_id) or client.create_run(ctx.experiment_id, run_name=f"{arm} ({config_id})",
                                                            tags={k: str(v) for k, v in tags.items()})
        runs = done[done["config_id"].fillna("c0") == config_id]
        metrics = config_stats(runs, metric) if len(runs) else {"n_runs": 0}
        if selected:
            metrics.update({k: by_arm.loc[arm, k] for k in ("test_acc_diff", "test_acc_diff_ci95", "p_value")})
            if pd.notna(by_arm.loc[arm, "verdict"]):
                client.set_tag(run.info.run_id, "verdict", str(by_arm.loc[arm, "verdict"]))
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                   if v is not None and pd.notna(v)])
        for trial_id in group["trial"].dropna():  # its fold and seed runs become its children
            if trial_id in trial_runs:
                client.set_tag(trial_runs[trial_id].info.run_id, TAG_PARENT, run.info.run_id)
        client.set_terminated(run.info.run_id, "FINISHED")
    share_sweep_view(client, ctx.uri, ctx.experiment_id, ctx.parent_run_id,
                     ["test_acc_mean", "test_acc_ci95", "test_uar_mean", "test_macro_f1_mean", "test_acc_diff",
                      "p_value", "n_runs"], f"{metric.replace('best_', '')}_mean", extra_filter="tags.selected = 'true'")


def run_study(study: Study, opts) -> pd.DataFrame:
    """Run (or resume) one sweep of `study`; returns the results table."""
    # Short epochs checkpoint often by design; Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    fail_fast_requests()  # the driver's own MLflow calls fail in seconds and say so
    import ray
    from mlflow.tracking import MlflowClient

    t_start = time.perf_counter()
    if not opts.resume:
        select_arms(study, opts)  # a typo fails here, before Ray or MLflow start
        check_fold_flags(study, opts)
    home = emosweep_home()
    storage = Storage(opts.storage_path or os.environ.get("EMOSWEEP_STORAGE_PATH") or str(home / "ray"))
    opts.tracking_uri = opts.tracking_uri or os.environ.get("EMOSWEEP_TRACKING_URI")

    state: dict = {}
    name = None
    if opts.resume:
        name = _find_resume(storage, study, opts.resume)
        state = json.loads(storage.read_text(f"{name}/{STATE_FILE}"))
        opts.tracking_uri = opts.tracking_uri or state.get("tracking_uri")

    # The MLflow server boots while Ray starts.
    server = None
    if not opts.tracking_uri:  # this machine's shared server, started if none runs (a resumed sweep asks for its old port)
        server = SharedServer(home / "mlflow", port=state.get("mlflow_port")).acquire()
    timings = {}
    try:
        t = time.perf_counter()
        if opts.verbose == 0:
            log = quiet_logs(home / "logs", study.name)
            print(f"[emosweep] Ray, Tune and MLflow logs go to {log} (--verbose 1 shows them here)", flush=True)
        start_ray(opts.address, quiet=opts.verbose == 0)
        timings["ray_init_s"] = time.perf_counter() - t
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        if not opts.resume:  # data checks and model resolution overlap the MLflow server's boot
            t = time.perf_counter()
            arms, base = study_config(study, opts, has_gpu)
            timings["prepare_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if server is not None:
            server.wait_ready()
        uri = opts.tracking_uri or server.uri
        warn_if_unreachable(uri)
        global _CURRENT_TRACKING_URI
        _CURRENT_TRACKING_URI = uri
        timings["mlflow_ready_s"] = time.perf_counter() - t

        gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else (1 if has_gpu else 0)
        commit = git_commit()
        tags = {"study": study.name, "workload": study.workload, "git_commit": commit}

        if opts.resume:
            tracking = start_parent_run(uri, state["experiment"], name, {}, tags,
                                        resume_run_id=state["parent_run_id"])
            arms = state["arms"]
        else:
            name = opts.name or f"{study.name}-{datetime.now():%Y%m%d-%H%M%S}"
            samples = opts.num_samples
            replicates = replicates_of(base)
            scheduler = opts.scheduler or ("asha" if samples > 1 else "fifo")
            sweep_params = {
                "study": study.name, "arms": ",".join(arms), "samples_per_arm": samples, "metric": study.metric,
                "mode": study.mode, "scheduler": scheduler, "seed": opts.seed, "cpus_per_trial": opts.cpus_per_trial,
                "gpus_per_trial": gpus, "max_failures": opts.max_failures, "smoke": opts.smoke,
                "folds": base["folds"], "n_folds": base["n_folds"], "seeds": base["seeds"],
                "split_by": base["split_by"], "split_seed": base["split_seed"], "allow_leak": opts.allow_leak,
                "replicate_seeds": ",".join(str(s) for s in dict.fromkeys(r["seed"] for r in replicates)),
                **{f"optuna_seed.{a}": derive_seed(opts.seed, "optuna", a) for a in arms},
                **{f"base.{k}": v for k, v in base.items()},
                **{f"space.{k}": repr(v) for k, v in study.space.items()},
            }
            experiment = opts.experiment or study.name
            note = {"mlflow.note.content": base["_run_note"]} if base.get("_run_note") else {}
            leak_tags = {"split_gate": base.get("_gate", "not run: the study's official splits"),
                         **({"allow_leak": "true"} if opts.allow_leak and base.get("_gate_leaks") else {})}
            tracking = start_parent_run(uri, experiment, name, sweep_params,
                                        {**tags, "random_init": str(bool(base.get("random_init"))).lower(),
                                         "model_id": base.get("model_id", ""), **note, **leak_tags})
            metrics = ["test_acc", "test_macro_f1", *(c for c in study.table_columns if c.startswith("test_"))]
            try:
                view = share_sweep_view(MlflowClient(uri), uri, tracking.experiment_id, tracking.parent_run_id,
                                        metrics, study.metric)
            except Exception as e:  # a view is a convenience; the sweep goes on without it
                view = uri
                print(f"[emosweep] could not save the MLflow view of this sweep: {e}", file=sys.stderr)
            print(f"[emosweep] trials in the MLflow UI: {view}")
            if base.get("_gate_leaks"):
                MlflowClient(uri).log_text(tracking.parent_run_id, "\n".join(base["_gate_leaks"]) + "\n",
                                           "split_gate_leaks.txt")
            if study.describe is not None:
                for artifact, content in study.describe(base).items():
                    if isinstance(content, str) and base.get("_gate"):
                        content = content.rstrip("\n") + f"\n\n{base['_gate']}\n"
                    if isinstance(content, Path):  # a picture: logged as a file, not printed
                        MlflowClient(uri).log_artifact(tracking.parent_run_id, str(content))
                        continue
                    print(content)
                    MlflowClient(uri).log_text(tracking.parent_run_id, content, artifact)
            state = {"study": study.name, "experiment": experiment, "mlflow_view": view, "workers_per_trial": opts.workers_per_trial, "parent_run_id": tracking.parent_run_id,
                     "tracking_uri": opts.tracking_uri, "mlflow_port": server.port if server else None,
                     "arms": arms, "base": base, "scheduler": scheduler, "samples_per_arm": samples,
                     "replicates": replicates, "reference": opts.reference}
            state["n_trials"] = trial_count(study, arms, state)

        workers = int(state.get("workers_per_trial", opts.workers_per_trial))
        # A data-parallel trial is a coordinator that holds nothing; its Ray Train workers hold
        # the CPUs and GPUs (--cpus/--gpus-per-trial each).
        # (Tune needs a non-empty request: a little memory, which costs no CPU.)
        resources = ({"cpu": 0, "gpu": 0, "memory": 64 * 2**20} if workers > 1
                     else {"cpu": opts.cpus_per_trial, "gpu": gpus})
        trainable = tune.with_resources(tune.with_parameters(study.trainable, tracking=tracking), resources)
        if opts.resume:
            print(f"[emosweep] resuming {storage.path(name)} (MLflow parent run {tracking.parent_run_id})")
            tuner = tune.Tuner.restore(storage.path(name), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            space = searched_space(study, base)
            searcher = ArmGridSearch(arms, space, base, samples, study.metric, study.mode, opts.seed, replicates)
            sched = None
            if scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                max_epochs = max([int(base.get("epochs", 1))] +
                                 [int(c) for c in getattr(space.get("epochs"), "categories", [])])
                sched = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                                      grace_period=1, reduction_factor=2)
            tuner = tune.Tuner(
                trainable,
                param_space={},
                tune_config=tune.TuneConfig(
                    metric=study.metric, mode=study.mode, search_alg=searcher, scheduler=sched,
                    num_samples=state["n_trials"], max_concurrent_trials=opts.max_concurrent,
                    trial_name_creator=trial_name, trial_dirname_creator=trial_dirname, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=name, storage_path=storage.root, verbose=opts.verbose,
                    failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[ChildRunStatus(tracking.experiment_id, tracking.parent_run_id),
                               *([TrialProgress(state["n_trials"], study.metric, study.mode)]
                                 if opts.verbose == 0 else [])]),
            )
        state["mlflow_port"] = server.port if server else state.get("mlflow_port")
        storage.write_text(f"{name}/{STATE_FILE}", json.dumps(state, indent=2, default=str))

        t = time.perf_counter()
        try:
            result_grid = tuner.fit()
        except BaseException:
            MlflowClient(uri).set_terminated(tracking.parent_run_id, "FAILED")
            raise
        timings["tune_fit_s"] = time.perf_counter() - t

        table = results_table(study, result_grid, arms)
        expected = state.get("n_trials") or trial_count(study, arms, state)
        finished = result_grid.num_terminated + result_grid.num_errors >= expected
        if not finished:
            print(f"[emosweep] sweep interrupted: {result_grid.num_terminated + result_grid.num_errors} of "
                  f"{expected} trials done. Continue with: --resume {name}", file=sys.stderr)
        swept = state.get("base") or {}
        reference = reference_of(study, arms, state.get("reference"))
        arms_tab = arm_table(table, arms, study.metric, study.mode, reference, study.table_columns)
        how = selection_note(swept, int(state["samples_per_arm"]), study.metric)
        # The tables land in the sweep's folder when that is local, else under EMOSWEEP_HOME/results;
        # either way they are also logged to the parent run.
        local_dir = Path(storage.path(name)) if storage.local else home / "results" / name
        local_dir.mkdir(parents=True, exist_ok=True)
        out = Path(opts.results_out) if opts.results_out else local_dir / "results.csv"
        run_note = swept.get("_run_note")
        out, arms_csv, md = write_tables(table, arms_tab, out, f"{study.name}: {name}", run_note, how)
        run_id = tracking.parent_run_id
        timings["total_s"] = time.perf_counter() - t_start
        plot = None
        try:
            client = MlflowClient(uri)
            for path in (out, arms_csv, md, arms_csv.with_suffix(".md")):
                client.log_artifact(run_id, str(path))
            if len(arms_tab) > 1 and arms_tab["test_acc_mean"].notna().any():
                plot = plot_arms(arms_tab, out.with_name(out.stem + ".arms.png"))
                client.log_artifact(run_id, str(plot))
            if not table.empty and table["test_acc"].notna().any():
                client.log_metric(run_id, "best_test_acc", float(table["test_acc"].max()))
            if not arms_tab.empty:
                log_arm_runs(client, tracking, table, arms_tab, study.metric)
            for k, v in timings.items():
                client.log_metric(run_id, f"driver_{k}", v)
            client.set_terminated(run_id, "FINISHED" if finished else "KILLED")
        except Exception as e:  # the tables are on disk either way; say what MLflow is missing
            print(f"[emosweep] could not log the results tables to MLflow ({type(e).__name__}: {str(e)[:200]}); "
                  f"they are at {out}", file=sys.stderr)

        models = ", ".join(str(m) for m in arms_tab.get("model", pd.Series(dtype=object)).dropna().unique())
        print(f"\n{study.name} — {name}\n{how}\n{format_arm_table(arms_tab)}\n" + (f"model: {models}\n" if models else ""))
        if run_note:
            print(f"note: {run_note}")
        print(f"results: {arms_csv} (per arm), {out} (per trial), {md}" + (f", {plot}" if plot else ""))
        print(f"MLflow: {uri}  (experiment '{state['experiment']}', parent run {run_id})")
        if state.get("mlflow_view"):
            print(f"  the arms, best first: {state['mlflow_view']}")
        if server is not None:
            print(f"  the server stays up {server.idle_s / 60:.0f} min after its last use (`emosweep tracking` "
                  f"shows or stops it); it serves every sweep of {home}")
        print("driver timings: " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
        table.attrs.update(timings=timings, experiment_dir=storage.path(name), tracking_uri=uri, parent_run_id=run_id,
                           arms=arms_tab, arms_csv=str(arms_csv))
        return table
    finally:
        if server is not None:
            server.release()
        restore_logs()


def main(study: Study, argv: list[str] | None = None) -> pd.DataFrame:
    opts = build_parser(study).parse_args(argv)
    return run_study(study, opts)
