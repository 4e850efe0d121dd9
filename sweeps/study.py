"""What a study is, and the configuration of one run of it, without Ray.

A study file declares a `Study`: arms × a searched space × fixed defaults, with a metric and
a mode. This module turns the command line into the run's configuration (defaults ← CPU
subset ← smoke ← --set/--epochs), checks it (typos, types, flags the study cannot use, the
fold flags), prepares the data once and plans the folds with their split gate. Both engines
use it: Ray Tune (`sweeps/runner.py`) and `--local` (`sweeps/local.py`).
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sweeps.space import choice, contains, values_of
from workloads.core.config import BOOL_SPELLINGS, parse_value
from workloads.core.errors import InputNotFound, UserError
from workloads.core.seeding import derive_seed


@dataclass
class Study:
    """What a study file declares. `trainable(config, tracking=None)` trains one trial."""

    name: str
    workload: str
    trainable: Callable
    arms: dict  # arm name → config overrides (the arm's fixed knobs)
    space: dict  # searched hyper-parameters: name → sweeps.space domain
    defaults: dict  # the report's setup; also the first value tried for every searched knob
    metric: str = "best_val_acc"
    mode: str = "max"
    smoke: dict = field(default_factory=dict)  # overrides for --smoke: tiny data and model
    cpu_subset: dict = field(default_factory=dict)  # overrides on a machine with no GPU, unless --full-data
    # One line said (printed, on the parent run, in the results file) when cpu_subset is in
    # force: what the subset is and what it can and cannot show. `{subset}` lists it.
    cpu_note: str = ""
    # (config, **flags) → config: resolve models/data once, in the driver. The flags it names
    # (smoke, model, arms, or the study's extra flags) are passed; a flag it does not name is
    # refused on the command line.
    prepare: Callable | None = None
    describe: Callable | None = None  # config → {artifact name: text or Path of a file}: the data report, on the parent run
    table_columns: list = field(default_factory=list)  # config keys and metrics kept per trial and per arm (results.csv)
    terminal_columns: list = field(default_factory=list)  # of those, the ones the terminal's table shows
    description: str = ""
    # arm config (after prepare) → why this arm cannot run on this data, or None: such arms are
    # named with the reason and left out, the others run
    unavailable: Callable | None = None
    extra_flags: dict = field(default_factory=dict)  # flag name → help: more string options (--text-model …)
    path_flags: tuple = ()  # which extra flags name a path that must exist (checked before anything starts)
    # why --data-dir is refused, where the study reads its corpora from other flags (S4: one per corpus)
    no_data_dir: str = ""
    # Folds: a corpus with official splits refuses --folds (this says why); otherwise the
    # driver's items table (prepare → write_items) is folded by speaker or by item.
    official_splits: str = ""
    speaker_folds: bool = True  # False: the labels are the speakers (speaker ID), folds split items
    split_by: str = "speaker"  # how the study's own split (no --folds) is made: speaker or item
    # the arm each arm is compared with: an arm name, a callable arm → arm (or None), or None:
    # the floor where the study has one, else its first arm (the report's)
    reference: object = None
    # more settable keys of this study, or what a default's key takes when its type says too
    # little: name → (an example value whose type a --set value must have, None for any; one-line help)
    knobs: dict = field(default_factory=dict)
    # opts → the arms of the corpora the command line names (S4: --corpus NAME=PATH, --data-dir),
    # or None for the declared arms
    arms_for: Callable | None = None


# Keys the training engine reads on every study, settable with --set: name → (default, help).
ENGINE_KNOBS = {
    "cuda_graphs": (True, "on a GPU, replay each training step as one CUDA graph (false: eager steps)"),
    "tracking_patience_s": (120.0, "seconds a trial waits for an unreachable MLflow before saving its metrics beside it"),
    "tracking_every_s": (5.0, "seconds between a trial's background MLflow syncs of its epochs (0: after every epoch)"),
    "checkpoint_every_s": (30.0, "seconds between a trial's checkpoints (0: every epoch); a crashed or interrupted "
                                 "trial resumes from its last, losing at most this much training"),
    "worker_retries": (2, "restarts of a data-parallel trial's crashed Ray Train worker"),
    "inject_fault": (None, "testing only: {'epoch': E, 'batch': B} crashes the trial there once"),
    "encode_actors": (None, "encoder-cache actors (default: one per GPU, else one)"),
    "encode_batch": (8, "clips per encoder batch when filling the encoder cache"),
}


def arm_space(space: dict, arm: dict, extra=()) -> dict:
    """The part of the study's searched space an arm searches: all of it, or the keys its
    `searched` entry lists (a solver's own knobs: SGD's alpha, not the sag solver's C), plus the
    switches --search added (`extra`) for every arm that searches at all (a floor searches nothing)."""
    if "searched" not in arm:
        return space
    return {k: v for k, v in space.items() if k in arm["searched"] or (arm["searched"] and k in extra)}


# ----------------------------------------------------------------------------- the command line

def build_parser(study: Study) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=study.name, description=study.description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny data and model; about a minute on a laptop CPU")
    p.add_argument("--local", action="store_true",
                   help="no Ray: run each chosen arm's first configuration in this process, one after another "
                        "(a breakpoint in a trainable works)")
    p.add_argument("--full-data", action="store_true", help="use all the data even without a GPU")
    p.add_argument("--data-dir", help="corpus in its native layout, a manifest (.csv/.tsv/.jsonl/.json) or an EmoBox "
                                      "folder; the layout is told from it (default: the study's embedded data)")
    p.add_argument("--corpus", action="append", metavar="NAME=PATH",
                   help="a corpus under a name, in any layout --data-dir reads (repeatable where a study takes several)")
    p.add_argument("--media-root", help="where a manifest's or EmoBox's relative audio paths lie (default: beside it)")
    p.add_argument("--model", help="hub id, local model folder, shelf name, or 'offline' for the packaged model")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="refuse (and report) a clip longer than this, before decoding it where the container says "
                        "(default 600; studies that decode media)")
    p.add_argument("--max-file-mb", type=float, metavar="MB",
                   help="refuse (and report) a media file larger than this, unread (default 200; studies that "
                        "decode media)")
    for flag, text in study.extra_flags.items():
        p.add_argument(f"--{flag}", help=text)
    p.add_argument("--arms", help=f"comma-separated subset of: {', '.join(study.arms)}")
    p.add_argument("--num-samples", type=int, default=1, help="configurations per arm (the first is the reproduction)")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (JSON values: --set max_length=64); --set help lists the keys")
    p.add_argument("--search", action="append", default=[], metavar="KEY=V1,V2",
                   help="search a study switch too: each arm's sampler picks among these values, the first "
                        "configuration keeps the default (--search speaker_norm=true,false); the importances rank "
                        "it beside the arm's knobs. Takes the keys --set takes; needs --num-samples 2 or more")
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
                   "one on loopback); a sqlite:///FILE keeps its artifacts beside FILE")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="where each arm's Optuna study is kept, for optuna-dashboard and `emosweep ui --optuna` "
                        "(an SQLAlchemy URL: postgresql://... for the tracking server's database; default: "
                        "sqlite:///<the sweep's folder>/optuna.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the study name)")
    p.add_argument("--name", help="name of this sweep (default: study name + timestamp)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="NAME",
                   help="resume an interrupted sweep: its name, its folder, or the latest of this study")
    p.add_argument("--results-out", help="results table CSV path (a .md is written beside it)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--folds", metavar="K|loso|given",
                   help="run every configuration on K speaker-disjoint folds (each fold's speakers are its test "
                        "set), one fold per speaker (loso), or the corpus's own folds (given: EmoBox's); the table "
                        "gives each arm's mean and 95%% CI")
    p.add_argument("--seeds", type=int, default=1, help="repeats of every configuration (and fold) with derived seeds")
    p.add_argument("--split-by", choices=["speaker", "item"],
                   help="folds of speakers (default, when the corpus names them) or stratified folds of items")
    p.add_argument("--reference", metavar="ARM",
                   help="the arm every arm is compared with, paired over folds and seeds (default: the floor, "
                        "else the report's arm)")
    p.add_argument("--rope", type=float, default=0.01, metavar="ACC",
                   help="region of practical equivalence of the Bayesian verdicts, in accuracy: a difference "
                        "within ±ACC of the reference's is 'equivalent' (default 0.01)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="keep one item of each group of identical decoded audio (the first by name) and drop the "
                        "others before splitting; says which")
    p.add_argument("--allow-leak", action="store_true",
                   help="run even when a split shares speakers or identical audio between train, val and test "
                        "(recorded as a tag)")
    p.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2],
                   help="0: a progress bar and emosweep's summary, the libraries' logs to a file; 1: Ray's and "
                        "Tune's output, the trials' own output and a user error's traceback here too; 2: Tune's "
                        "most detailed status")
    return p


def prepare_flags(study: Study) -> set:
    """The flags the study's prepare takes by name."""
    if study.prepare is None:
        return set()
    params = inspect.signature(study.prepare).parameters
    return {name for name, p in params.items() if p.kind == p.KEYWORD_ONLY}


def check_flags(study: Study, opts) -> None:
    """What can be checked before anything starts: flags the study cannot use (refused, never
    ignored), paths that are not there, the arms, --set, the fold flags."""
    takes = prepare_flags(study)
    for flag in ["model", "corpus", "media-root", "max-seconds", "max-file-mb", *study.extra_flags]:
        if getattr(opts, flag.replace("-", "_"), None) is not None and flag.replace("-", "_") not in takes:
            raise UserError(f"--{flag}: {study.name} does not use it ({_flags_it_takes(study, takes)})")
    if opts.data_dir and study.no_data_dir:
        raise UserError(f"--data-dir: {study.no_data_dir}")
    if opts.full_data and not study.cpu_subset:
        raise UserError(f"--full-data: {study.name} always uses all its data")
    paths = {"--data-dir": opts.data_dir, "--media-root": opts.media_root,
             **{f"--{f}": getattr(opts, f.replace('-', '_'), None) for f in study.path_flags}}
    if opts.corpus:
        from workloads.data.layouts import named_corpora

        named_corpora(opts.corpus)  # NAME=PATH well formed, each path there
    for flag, value in paths.items():
        if value and "://" not in str(value) and not Path(value).expanduser().exists():
            raise InputNotFound(f"{flag} {value}: no such file or folder")
    select_arms(study, opts)
    parse_sets(study, opts.set)
    parse_searches(study, opts)
    check_fold_flags(study, opts)


def with_corpus_arms(study: Study, opts) -> Study:
    """The study with the arms of the corpora its command line names (S4: NAME, NAME_floor and
    every cross pair), or as declared. A resumed sweep keeps the arms it started with."""
    import dataclasses

    if study.arms_for is None or getattr(opts, "resume", None):
        return study
    arms = study.arms_for(opts)
    return study if arms is None else dataclasses.replace(study, arms=arms)


def _flags_it_takes(study: Study, takes: set) -> str:
    named = sorted(f for f in takes if f not in ("smoke", "arms"))
    return "its flags: " + ", ".join(f"--{f.replace('_', '-')}" for f in named) if named else "it takes no model flag"


def select_arms(study: Study, opts) -> dict:
    if not opts.arms:
        return study.arms
    wanted = [a.strip() for a in opts.arms.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in study.arms]
    if unknown:
        hint = nearest(unknown[0], study.arms)
        raise UserError(f"--arms: unknown arm(s) {unknown}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; {study.name} has {', '.join(study.arms)}")
    return {a: study.arms[a] for a in wanted}


# ----------------------------------------------------------------------------- --set

def settable(study: Study) -> dict:
    """Every key --set takes: name → (an example value whose type the value must have, or a
    domain, or None for any; where it comes from)."""
    keys = {name: (default, f"engine: {text}") for name, (default, text) in ENGINE_KNOBS.items()}
    for arm, config in study.arms.items():
        for k, v in config.items():
            if k != "searched":
                keys.setdefault(k, (v, f"arm {arm}'s knob"))
    for source in (study.cpu_subset, study.smoke):
        for k, v in source.items():
            keys.setdefault(k, (v, "subset/smoke"))
    keys.update({k: (v, "default") for k, v in study.defaults.items()})
    for k, domain in study.space.items():
        keys[k] = (study.defaults.get(k, domain), f"searched: {domain!r}")
    for k, (example, text) in study.knobs.items():  # a declared knob says what it takes (None: any type)
        keys[k] = (example, f"{study.name}: {text}")
    return keys


def nearest(typed: str, names) -> list[str]:
    """The name a typo most likely meant: a close spelling, else the one its words' initials
    spell (learning_rate → lr), else one that contains it or that it contains."""
    names = list(names)
    close = difflib.get_close_matches(typed, names, n=1)
    if close:
        return close
    initials = "".join(w[0] for w in typed.split("_") if w)
    for name in names:
        if name == initials or (len(name) > 2 and (name in typed or typed in name)):
            return [name]
    return []


def _type_ok(example, value) -> bool:
    if example is None or value is None:
        return True
    if hasattr(example, "to_tune") or hasattr(example, "sampler"):  # a domain without a default
        options = values_of(example)
        return any(_type_ok(o, value) for o in options) if options else isinstance(value, (int, float))
    if isinstance(example, bool) or isinstance(value, bool):
        return isinstance(example, bool) and isinstance(value, bool)
    if isinstance(example, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(example, float) or isinstance(value, int))
    return isinstance(value, type(example))


def _type_name(example) -> str:
    if hasattr(example, "to_tune"):
        return repr(example)
    return {bool: f"a boolean ({BOOL_SPELLINGS})", int: "an integer", float: "a number", str: "a string", list: "a JSON list",
            dict: "a JSON object"}.get(type(example), type(example).__name__)


def parse_sets(study: Study, items: list[str]) -> dict:
    """--set KEY=VALUE, checked as nanoGPT's configurator does: an unknown key is an error
    that lists the valid keys and suggests the nearest; a value must have its default's type."""
    keys = settable(study)
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if key == "help":
            width = max(len(k) for k in keys)
            lines = "\n".join(f"  {k:<{width}}  {_show(v)}  ({where})" for k, (v, where) in sorted(keys.items()))
            print(f"{study.name}: the keys --set takes, their defaults and where they come from:\n{lines}")
            raise SystemExit(0)
        if not eq or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE")
        if key not in keys:
            hint = nearest(key, keys)
            raise UserError(f"--set {key}: {study.name} has no such key" + (f"; did you mean {hint[0]}?" if hint else "")
                            + f" (valid: {', '.join(sorted(keys))}; --set help explains each)")
        example = keys[key][0]
        boolean = isinstance(example, bool) or (hasattr(example, "to_tune") and values_of(example)
                                                and all(isinstance(o, bool) for o in values_of(example)))
        try:
            value = parse_value(text, like=True if boolean else None)
        except ValueError:
            raise UserError(f"--set {key}={text}: expected {_type_name(True)} (the default is "
                            f"{_show(example)})") from None
        if not _type_ok(example, value):
            raise UserError(f"--set {key}={text}: expected {_type_name(example)} (the default is {_show(example)})")
        out[key] = value
    return out


def parse_searches(study: Study, opts) -> dict:
    """--search KEY=V1,V2,...: {key: [values]}, each value checked as --set checks it. A key also
    pinned by --set, one value, or a sweep of one configuration per arm (which never varies it)
    is refused."""
    out = {}
    pinned = {item.partition("=")[0].strip() for item in opts.set}
    for item in getattr(opts, "search", None) or []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise UserError(f"--search {item}: expected KEY=V1,V2")
        if key in pinned:
            raise UserError(f"--search {key}: --set {key} pins it for every trial; give one or the other")
        values = [parse_sets(study, [f"{key}={v.strip()}"])[key] for v in text.split(",")]
        if len(set(map(repr, values))) < 2:
            raise UserError(f"--search {item}: give two values or more (one is --set {key}=...)")
        out[key] = values
    if out and opts.num_samples < 2:
        raise UserError(f"--search {', '.join(out)}: one configuration per arm (--num-samples 1) never varies it; "
                        f"give --num-samples 2 or more")
    return out


def _show(value) -> str:
    return repr(value) if hasattr(value, "to_tune") else f"{value!r}"


# ----------------------------------------------------------------------------- the run's config

def searched_space(study: Study, base: dict, quiet: bool = False) -> dict:
    """The study's space less what is pinned: keys set on the command line, and defaults that
    lie outside their domain (the reproduction config must run as written; say so)."""
    space = {}
    for key, domain in study.space.items():
        if key in base.get("_pinned", ()):
            continue
        if key in base and not contains(domain, base[key]):
            if not quiet:
                print(f"[emosweep] {key}={base[key]!r} lies outside the searched {domain!r}; "
                      f"every trial uses {base[key]!r}", file=sys.stderr)
            continue
        space[key] = domain
    for key, values in (base.get("_search") or {}).items():  # --search: a switch searched for this run
        space[key] = choice(values)
    return space


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
    sets = parse_sets(study, opts.set)  # set on the command line: the same for every trial, no longer searched
    base.update(sets)
    pinned = set(sets)
    if opts.epochs:
        base["epochs"] = opts.epochs
        pinned.add("epochs")
    base["_pinned"] = sorted(pinned)
    base["_search"] = parse_searches(study, opts)  # switches searched for this run (--search)
    base["_over_arms"] = sorted(pinned | over_arms)
    base["seed"] = opts.seed
    if opts.workers_per_trial > 1:
        base.update(workers_per_trial=opts.workers_per_trial, cpus_per_worker=opts.cpus_per_trial,
                    gpus_per_worker=opts.gpus_per_trial if opts.gpus_per_trial is not None else int(has_gpu))
    base["data_dir"] = str(Path(opts.data_dir).expanduser().resolve()) if opts.data_dir else base.get("data_dir")
    arms = select_arms(study, opts)
    if study.prepare is not None:
        takes = prepare_flags(study)
        flags = {"smoke": opts.smoke, "arms": arms, "model": opts.model, "corpus": opts.corpus,
                 "media_root": opts.media_root, "max_seconds": opts.max_seconds, "max_file_mb": opts.max_file_mb,
                 **{f.replace("-", "_"): getattr(opts, f.replace("-", "_"), None) for f in study.extra_flags}}
        base = study.prepare(base, **{k: v for k, v in flags.items() if k in takes})
    base = plan_folds(study, base, opts, arms)
    if study.unavailable is not None:
        for arm in list(arms):
            why = study.unavailable({**base, **arms[arm]})
            if why:
                print(f"[emosweep] arm {arm} cannot run: {why}", file=sys.stderr)
                arms = {a: c for a, c in arms.items() if a != arm}
        if not arms:
            raise UserError(f"no arm of {study.name} can run on this data (see above)")
    return arms, base


def arm_config(base: dict, arm_knobs: dict) -> dict:
    """Defaults ← the arm's own values ← values set for this run (--set, --epochs, --smoke,
    the CPU subset), which beat the arm's."""
    forced = {k: base[k] for k in base.get("_over_arms", ()) if k in base}
    return {**base, **arm_knobs, **forced}


# ----------------------------------------------------------------------------- folds

def check_fold_flags(study: Study, opts) -> None:
    """The fold flags a study cannot use are refused before anything starts."""
    from workloads.data.folds import parse_folds

    folds = parse_folds(opts.folds)
    if folds and study.official_splits:
        raise UserError(f"--folds: {study.name} uses {study.official_splits}; its splits are fixed. "
                        f"Use --seeds N to repeat every configuration with other seeds")
    if getattr(opts, "drop_duplicates", False) and study.official_splits:
        raise UserError(f"--drop-duplicates: {study.name} uses {study.official_splits}; the split gate does not run "
                        f"on them")
    if opts.allow_leak and study.official_splits:
        raise UserError(f"--allow-leak: {study.name} uses {study.official_splits}; the split gate does not run on them")
    if opts.split_by and study.official_splits:
        raise UserError(f"--split-by: {study.name} uses {study.official_splits}; its splits are fixed")
    if opts.split_by and not folds:
        raise UserError("--split-by chooses how --folds makes its folds; give --folds K too")
    if opts.split_by == "speaker" and not study.speaker_folds:
        raise UserError(f"--split-by speaker: {study.name}'s labels are the speakers; its folds split items")
    if opts.seeds < 1:
        raise UserError(f"--seeds {opts.seeds}: at least 1")
    if not 0 <= opts.rope < 1:
        raise UserError(f"--rope {opts.rope}: an accuracy difference, from 0 up to 1")
    if opts.reference and opts.reference not in study.arms:
        raise UserError(f"--reference {opts.reference}: not an arm of {study.name} ({', '.join(study.arms)})")


def plan_folds(study: Study, base: dict, opts, arms: dict | None = None) -> dict:
    """After the study's prepare: how many folds, split how, and the split-integrity gate over
    every fold (or the one split) before any trial starts, over the parts the arms use. A leak
    is refused by name unless --allow-leak; --drop-duplicates first keeps one item of each
    group of identical audio. Sets n_folds, split_by, split_seed and the gate's report on base."""
    from workloads.data.folds import assignments, count_folds, gate, parse_folds, resolve_split_by, split_sizes

    base = dict(base)
    folds = parse_folds(opts.folds)
    base.update(folds=str(folds or 0), n_folds=0, split_seed=opts.seed, seeds=opts.seeds,
                split_by=study.split_by if not study.official_splits else "official")
    if study.official_splits or ("items_file" not in base and "items" not in base):
        if getattr(opts, "drop_duplicates", False):
            raise UserError(f"--drop-duplicates: {study.name} keeps no table of its items to drop them from")
        return base  # the corpus's own splits
    from workloads.data.study_items import drop_duplicates, study_items

    if getattr(opts, "drop_duplicates", False):
        base, dropped = drop_duplicates(base)
        shown = "; ".join(f"kept {kept}, dropped {', '.join(gone)}" for kept, gone in dropped[:5])
        print(f"[emosweep] --drop-duplicates: {sum(len(g) for _, g in dropped)} item(s) of identical audio dropped"
              + (f" ({shown}" + (f"; … {len(dropped) - 5} more groups" if len(dropped) > 5 else "") + ")"
                 if dropped else ""))
        base["dropped_duplicates"] = sum(len(g) for _, g in dropped)
    else:
        dropped = []
    items = study_items(base)
    if folds:
        base["split_by"], why = resolve_split_by(items, opts.split_by, study.speaker_folds, folds)
        base["n_folds"] = count_folds(items, folds, base["split_by"])
        print(f"[emosweep] {base['n_folds']} folds by {base['split_by']} ({why}), split seed {opts.seed}")
    elif study.split_by == "speaker" and not all(str(r.get("speaker") or "") for r in items.values()):
        base["split_by"] = "item"
    checks = assignments(items, base["n_folds"], base["split_by"], opts.seed)
    uses = {(arm.get("train_corpus", base.get("train_corpus")), arm.get("test_corpus", base.get("test_corpus")))
            for arm in (arms or {None: {}}).values()}
    per, leaks = gate(items, checks, base["split_by"], uses)
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
    if dropped:  # the data report names every group
        base["_gate"] += "\n\n--drop-duplicates:\n" + "\n".join(f"- kept {kept}, dropped {', '.join(gone)}"
                                                              for kept, gone in dropped)
    print(f"[emosweep] {base['_gate'].splitlines()[0]}")
    if leaks and not opts.allow_leak:
        shown = "\n  ".join(leaks[:10]) + (f"\n  … and {len(leaks) - 10} more" if len(leaks) > 10 else "")
        raise UserError(f"the split leaks between train, val and test; refusing to run:\n  {shown}\n"
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


def selection_note(base: dict, samples: int, metric: str) -> str:
    """One line on how each arm's configuration was chosen and what its numbers are over."""
    n_folds, seeds = int(base.get("n_folds") or 0), int(base.get("seeds") or 1)
    over = (f"{n_folds} folds by {base.get('split_by')}" if n_folds else
            f"the {'official' if base.get('split_by') == 'official' else 'seeded ' + str(base.get('split_by'))} split")
    over += f" × {seeds} seed{'s' if seeds > 1 else ''}"
    chosen = ("one configuration per arm (the study's defaults)" if samples == 1 else
              f"each arm's configuration chosen among {samples} by its mean {metric} (validation) over the runs; "
              f"test metrics are reported, never used to choose")
    spread = ("the 95% CI of the mean over the folds (seeds averaged within each)" if n_folds else
              "the test accuracy's 95% Wilson interval over its items (the other metrics': over the seeds)")
    return f"Over {over}: {chosen}. ± is {spread}; Δ is paired with the reference arm."
