"""S5, GTZAN: the report's small CNN on 128×128 log-mel images of 30-s music clips, read against
a floor.

Features come from the cached `logmel` stage (128 mel bands, power in dB, resized to 128×128),
standardized with the training split's mean and standard deviation. The real archive holds one
corrupt file (jazz.00054.wav); the pipeline reports it with its reason and the study runs on
the rest. The look-alike keeps that file, corrupt, in the same place.

Arms: `cnn`, the report's network (models/classic.py GenreCNN, 1,230,538 Keras parameters),
Adam lr 1e-4, batch 32, 30 epochs; `floor`, a standardized logistic regression on each clip's
mean and standard deviation over time of the 128 mel bands.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import classic_audio
from .data.audio import with_media_caps
from .core.seeding import seed_everything
from .models.classic import GenreCNN, keras_parameter_count

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "gtzan_cnn"
STAGE = "logmel"


def run_name(config: dict) -> str:
    return f"cnn lr={config['lr']:.0e} bs={config['batch_size']}" if config["method"] == "cnn" else config["arm"]


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    from .core.on_ray import configure_threads
    from .core.sklearn_trial import fit_floor, mean_and_std

    configure_threads()
    seed_everything(int(config["seed"]))
    classes = list(config["classes"])
    images = classic_audio.load(config, STAGE, stack=True)  # (N, mels, time)
    info = classic_audio.info_of(images, classes)
    tags = classic_audio.tags_of(config, WORKLOAD)
    if config["method"] == "floor":
        stats = {s: (mean_and_std(list(x.transpose(0, 2, 1))), y) for s, (x, y) in images.items()}
        fit_floor(config, stats, classes, tracking, run_name(config), tags, info)
        return
    mean, std = images["train"][0].mean(), images["train"][0].std() + 1e-6
    data = {s: (((x - mean) / std)[:, None].astype(np.float32), y) for s, (x, y) in images.items()}
    model = GenreCNN(len(classes), size=data["train"][0].shape[-1])
    info["keras_params"] = keras_parameter_count(model)
    classic_audio.network_trial(config, model, data, classes, tracking, run_name(config), tags, info)


def prepare(config: dict, *, corpus: list | None = None, media_root: str | None = None,
            max_seconds: float | None = None, max_file_mb: float | None = None) -> dict:
    config = with_media_caps(config, max_seconds, max_file_mb)
    # the look-alike carries the real archive's one corrupt file
    return classic_audio.prepare_single(config, "gtzan", {STAGE: {}}, WORKLOAD, corpus, media_root, corrupt_file=True)


describe = classic_audio.describe
