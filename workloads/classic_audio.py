"""What the hand-made-feature studies share: S5's three (AudioMNIST MLP, GTZAN CNN, speaker
identification) and, for training and standardizing, S4's BLSTM.

Driver side, once per sweep (`prepare_single`): one corpus, given with --data-dir or generated
as a look-alike, read in its native layout, split at random per class from the seed (test 20%,
the reports' split; validation 10% of the whole, taken from the reports' 80% training part to
pick the best epoch), with the study's feature stages computed into the cache by the media
pipeline. Every file that cannot be used is counted in the printed summary and in the data
report, never lost silently.

Trial side: `network_trial` trains a PyTorch classifier on in-memory arrays with the shared epoch
loop; `fit_estimator`/`fit_floor` (core/sklearn_trial.py) run scikit-learn estimators as trials.
Every study's arms carry `report_test_acc`, the report's own number, shown beside the result.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .core.errors import UserError
from .data.audio import caps_line, media_caps
from .data.study_items import prepare_corpus, stage_splits, study_items, write_items

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

SPLIT = (0.7, 0.1, 0.2)  # train / val / test: the reports' 80/20, with a tenth held for choosing the epoch


def prepare_single(config: dict, corpus: str, stages: dict, study: str, given: list | None = None,
                   media_root: str | None = None, **generator_options) -> dict:
    """Driver side: the study's corpus (--data-dir or one --corpus NAME=PATH: its folder in
    the corpus's own layout, or a manifest whose labels are kept as written), split and
    featurized; sets config's stage_dirs, cache_fs, classes, data_source, dataset_fingerprint
    and the items file."""
    config = dict(config)
    from .data.synth import corpus_source

    if given:
        from .data.layouts import named_corpora

        named = named_corpora(given, config.get("data_dir"))
        if len(named) > 1:
            raise UserError(f"{study} reads one corpus; got {', '.join(named)}")
        config["data_dir"] = next(iter(named.values()))
    root, config["data_source"] = corpus_source(config, corpus, config.get("data_dir"), **generator_options)
    table, dirs, config["cache_fs"], fingerprint = prepare_corpus(corpus, root, stages, int(config["seed"]),
                                                                  by_speaker=False, fractions=SPLIT,
                                                                  media_root=media_root, emotions=False,
                                                                  report=config.setdefault("_corpus_report", {}),
                                                                  caps=media_caps(config))
    table["label"] = table["label"].astype(str)
    config.update(stage_dirs={corpus: dirs}, classes=sorted(table["label"].unique()), corpus=corpus,
                  dataset_fingerprint=fingerprint)
    return write_items(config, table, f"{study}-{fingerprint}")


def load(config: dict, stage: str, stack: bool = False) -> dict:
    """split → (arrays: a list, or stacked; labels) of one stage of the study's corpus."""
    corpus = config["corpus"]
    return stage_splits(config, stage, list(config["classes"]), {s: corpus for s in ("train", "val", "test")},
                        stack=stack)


def standardize(data: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every split scaled per feature (last axis) by the training split's mean and standard
    deviation; with those statistics (a served model applies them too)."""
    train = data["train"][0].reshape(-1, data["train"][0].shape[-1])
    mean, std = train.mean(0), train.std(0) + 1e-6
    return {s: (((x - mean) / std).astype(np.float32), y) for s, (x, y) in data.items()}, mean, std


def tags_of(config: dict, workload: str) -> dict:
    return {"workload": workload, "arm": config["arm"], "method": config["method"],
            "dataset_fingerprint": config["dataset_fingerprint"]}


def info_of(data: dict, classes: list) -> dict:
    return {"classes": ",".join(classes), "n_classes": len(classes), "chance": 1 / len(classes),
            "train_clips": len(data["train"][1]), "val_clips": len(data["val"][1]), "test_clips": len(data["test"][1])}


def network_trial(config: dict, model, data: dict, classes: list, tracking: TrackingContext | None,
                  run_name: str, tags: dict, info: dict, weights=None, export=None,
                  eval_batch_size: int = 256) -> None:
    """A PyTorch classifier on in-memory arrays (split → (X, y)), trained by the shared epoch
    loop with Adam (lr, batch_size, epochs, patience from config); `weights`: class weights of
    the loss; `export`: TrainSetup.export (the best epoch as a logged model)."""
    import torch

    from .core.loop import TrainSetup, array_loaders, classification_step, fit

    loaders = array_loaders(data, int(config["seed"]), int(config["batch_size"]), eval_batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    patience = config.get("patience")
    setup = TrainSetup(model=model, optimizer=optimizer, loaders=loaders, step=classification_step(weights),
                       class_names=classes, epochs=int(config["epochs"]), grad_clip=config.get("grad_clip"),
                       info=info, tags=tags, patience=int(patience) if patience else None, export=export)
    fit(config, setup, tracking, run_name)


def describe(config: dict) -> dict:
    """The data report: where the corpus came from and clips per class and split."""
    import pandas as pd

    rows = pd.DataFrame(list(study_items(config).values()))
    counts = rows.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=["train", "val", "test"],
                                                                                  fill_value=0)
    profile = config.get("_corpus_report", {}).get(config["corpus"])
    return {"dataset_report.md": f"# Corpus as used\n\n- {config['corpus']}: {config['data_source']}\n"
                                 + (f"  {profile}\n" if profile else "") + "\n"
                                 f"Random split per class, seed {config['seed']}: {SPLIT[0]:.0%} train, "
                                 f"{SPLIT[1]:.0%} validation, {SPLIT[2]:.0%} test.\n\n{caps_line(config)}\n"
                                 f"{counts.to_markdown()}\n"}
