"""S4: the Attention_BLSTM on 46 hand-made frame features, within and across corpora, as a
Ray Tune trainable, with a floor.

The driver (`prepare`) reads each corpus an arm needs (RAVDESS, ShEMO, EmoDB, or their
generated look-alikes), splits it by speaker, and caches its `frame46` features (157 frames ×
46 per 5-s clip) with the media pipeline. An arm trains on one corpus and tests on one: the
same corpus (its test split, every class), or another (that corpus's test split, on the
classes the two share, CLASS_MAP). Features are standardized with the training split's
statistics. The `floor` arms fit a standardized logistic regression on each clip's mean and
standard deviation of the same features, the simplest fair baseline on the same split.

Each BLSTM trial logs its best epoch as an MLflow pyfunc (audio bytes → class
probabilities), which `emosweep predict FILE --run-id RUN` uses.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from . import classic_audio
from .core.errors import UserError
from .core.loop import class_weights
from .core.sklearn_trial import fit_floor, mean_and_std
from .core.seeding import seed_everything
from .data.labels import CANONICAL as LABEL_MAP, shared_classes as labels_shared, spelled
from .data.audio import caps_line, media_caps, with_media_caps
from .data.study_items import prepare_corpus, stage_splits, study_items, write_items
from .data.synth import corpus_source
from .models.blstm import AttentionBLSTM

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "blstm_attention"
CORPORA = ("ravdess", "shemo", "emodb")
# Every corpus's label → one name per emotion (workloads/data/labels.py), so that two corpora can
# be compared on what they share.
CANONICAL = LABEL_MAP
CORPUS_CLASSES = {  # canonical classes, in each reader's order
    "ravdess": ["neutral", "calm", "happiness", "sadness", "anger", "fear", "disgust", "surprise"],
    "shemo": ["anger", "happiness", "neutral", "sadness", "surprise", "fear"],
    "emodb": ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"],
}


def shared_classes(train: str, test: str, classes: dict | None = None) -> list[str]:
    """The classes an arm trained on `train` and tested on `test` uses (in `train`'s order);
    `classes`: each corpus's canonical classes (default: the three the study knows)."""
    classes = classes or CORPUS_CLASSES
    return labels_shared(classes[train], classes[test])


CLASS_MAP = {(a, b): shared_classes(a, b) for a in CORPORA for b in CORPORA if a != b}
MIN_SHARED = 2  # a cross pair needs at least this many classes in common


def arm_classes(config: dict) -> list[str]:
    if config.get("classes"):  # the arm says (arms of named corpora always do)
        return str(config["classes"]).split(",")
    if config["train_corpus"] == config["test_corpus"]:
        return list(CORPUS_CLASSES[config["train_corpus"]])
    return shared_classes(config["train_corpus"], config["test_corpus"])


def corpus_arms(classes: dict) -> dict:
    """The arms of corpora given by name ({name: canonical classes}): each corpus on its own
    (NAME), its floor (NAME_floor), and train-on-A/test-on-B for every ordered pair that shares
    at least MIN_SHARED classes, each with its class map."""
    blstm = {"method": "blstm", "model_id": "Attention_BLSTM (from scratch)"}
    floor = {"method": "floor", "model_id": "logistic regression on clip mean + std", "searched": ()}
    from .data.layouts import cross_pairs

    arms = {}
    for c in classes:
        arms[c] = {"train_corpus": c, "test_corpus": c, **blstm, "classes": ",".join(classes[c])}
    for a, b, shared in cross_pairs(classes, MIN_SHARED):
        arms[f"{a}_to_{b}"] = {"train_corpus": a, "test_corpus": b, **blstm, "classes": ",".join(shared)}
    for c in classes:
        arms[f"{c}_floor"] = {"train_corpus": c, "test_corpus": c, **floor, "classes": ",".join(classes[c])}
    return arms


def given_corpora(config: dict, ravdess=None, shemo=None, emodb=None, corpus=None) -> dict:
    """{name: path} of every corpus the command line names: --corpus NAME=PATH, --data-dir, and
    the per-corpus flags."""
    from .data.layouts import named_corpora

    out = {c: p for c, p in (("ravdess", ravdess), ("shemo", shemo), ("emodb", emodb)) if p}
    for name, path in named_corpora(corpus, config.get("data_dir")).items():
        if name in out:
            raise UserError(f"{name} is given twice (--{name} and --corpus/--data-dir)")
        out[name] = path
    return out


def floor_of(arm: str, arms: dict) -> str | None:
    """The reference of an arm in the results table: its corpus's floor, trained and tested
    on the same data (a cross-corpus arm has none: no floor shares its test set and classes)."""
    config = arms.get(arm, {})
    if config.get("train_corpus") != config.get("test_corpus"):
        return None
    floor = f"{config['train_corpus']}_floor"
    return floor if floor in arms else None


# ----------------------------------------------------------------------------- data

def load_splits(config: dict) -> tuple[dict, list[str]]:
    """split → (features (N, T, F) float32, labels) for the arm, and its classes."""
    classes = arm_classes(config)
    return stage_splits(config, "frame46", classes, {"train": config["train_corpus"], "val": config["train_corpus"],
                                                     "test": config["test_corpus"]}, stack=True), classes


# ----------------------------------------------------------------------------- the trainable

def run_name(config: dict) -> str:
    if config["method"] == "floor":
        return f"{config['arm']} logistic regression C={config['floor_c']:g}"
    return f"{config['arm']} lr={config['lr']:.0e} h={config['hidden']} p={config['patience']}"


def tags_of(config: dict) -> dict:
    return {**classic_audio.tags_of(config, WORKLOAD), "train_corpus": config["train_corpus"],
            "test_corpus": config["test_corpus"]}


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    from .core.on_ray import configure_threads

    configure_threads()
    seed_everything(int(config["seed"]))
    data, classes = load_splits(config)
    info = classic_audio.info_of(data, classes)
    if config["method"] == "floor":
        features = {s: (mean_and_std(x), y) for s, (x, y) in data.items()}
        fit_floor(config, features, classes, tracking, run_name(config), tags_of(config), info)
        return
    data, mean, std = classic_audio.standardize(data)
    model = AttentionBLSTM(data["train"][0].shape[-1], len(classes), hidden=int(config["hidden"]),
                           dropout=float(config["dropout"]))
    weights = class_weights(data["train"][1], len(classes)) if config.get("class_weights") else None
    # A served model reads one file of an unknown speaker: it cannot normalize by that speaker,
    # so a speaker-normalized trial logs no model.
    export = ((lambda best, run: export_model(config, classes, mean, std, best, run))
              if config.get("log_model", True) and not config.get("speaker_norm") else None)
    classic_audio.network_trial(config, model, data, classes, tracking, run_name(config),
                                       tags_of(config), info, weights=weights, export=export, eval_batch_size=128)


def export_model(config: dict, classes: list, mean: np.ndarray, std: np.ndarray, best: dict, run) -> str | None:
    """The best epoch as a logged model (code + spec + safetensors): audio bytes in, class
    probabilities out."""
    from .serving import log_model

    spec = {"classes": classes, "mean": mean.tolist(), "std": std.tolist(), "hidden": int(config["hidden"]),
            "n_features": len(mean), "stage_params": config["stage_params"], "arm": config["arm"]}
    return log_model(run, spec, best)


# ----------------------------------------------------------------------------- driver side

def corpora_needed(arms: dict) -> list[str]:
    return list(dict.fromkeys(c for a in arms.values() for c in (a["train_corpus"], a["test_corpus"])))


def prepare(config: dict, *, arms: dict, ravdess: str | None = None, shemo: str | None = None,
            emodb: str | None = None, corpus: list | None = None, media_root: str | None = None,
            max_seconds: float | None = None, max_file_mb: float | None = None) -> dict:
    """Driver-side, once per sweep: each corpus the chosen arms (--arms) need, split by speaker,
    with its frame46 features in the cache. A corpus the command line names is read in
    whatever layout it has; the study's own three default to generated look-alikes."""
    import pandas as pd

    from .data.features import STAGES

    config = with_media_caps(config, max_seconds, max_file_mb)
    given = given_corpora(config, ravdess, shemo, emodb, corpus)
    config["stage_params"] = STAGES["frame46"].params({})
    tables, dirs, sources, prints = [], {}, {}, []
    for corpus_name in corpora_needed(arms):
        if corpus_name not in given and corpus_name not in CORPORA:
            raise UserError(f"arm corpus {corpus_name!r} is not given: --corpus {corpus_name}=PATH")
        root, sources[corpus_name] = corpus_source(config, corpus_name, given.get(corpus_name)
                                                   or config.get(f"{corpus_name}_dir"))
        table, dirs[corpus_name], config["cache_fs"], fingerprint = prepare_corpus(
            corpus_name, root, {"frame46": {}}, int(config["seed"]), by_speaker=True, media_root=media_root,
            report=config.setdefault("_corpus_report", {}), caps=media_caps(config))
        table["label"] = table["label"].map(spelled)
        tables.append(table)
        prints.append(f"{corpus_name}-{fingerprint}")
    config["_class_map"] = [[a["train_corpus"], a["test_corpus"], arm_classes(a)] for a in arms.values()
                            if a["train_corpus"] != a["test_corpus"]]  # a list: its values may be logged as one param
    config.update(stage_dirs=dirs, data_sources=sources,
                  dataset_fingerprint=hashlib.sha256("|".join(prints).encode()).hexdigest()[:12])
    return write_items(config, pd.concat(tables, ignore_index=True), f"blstm-{config['dataset_fingerprint']}")


def describe(config: dict) -> dict:
    """The data report: clips per class, split and corpus; the class map of the cross-corpus arms."""
    import pandas as pd

    rows = pd.DataFrame(list(study_items(config).values()))
    counts = rows.groupby(["corpus", "label", "split"]).size().unstack(fill_value=0).reindex(
        columns=["train", "val", "test"])
    pairs = "\n".join(f"| {a} → {b} | {', '.join(c)} |" for a, b, c in config.get("_class_map", []))
    profiles = config.get("_corpus_report", {})
    sources = "\n".join(f"- {c}: {s}" + (f"\n  {profiles[c]}" if c in profiles else "")
                        for c, s in config["data_sources"].items())
    text = (f"# Corpora as used\n\n{sources}\n\nSplits keep every speaker in one split.\n\n{caps_line(config)}\n"
            f"{counts.to_markdown()}\n\n"
            f"## Class map (cross-corpus arms train and test on the shared classes)\n\n| train → test | classes |\n"
            f"|---|---|\n{pairs}\n")
    return {"dataset_report.md": text}
