"""S5, AudioMNIST: the report's MLPs on MFCC features, read against a plain scikit-learn MLP and
a floor.

Features come from one cached stage, `mfcc` (12 MFCC, 25 ms frames, 10 ms hop, 24 mel filters,
with first and second deltas: 36 × frames per clip):
  - `deltas`: the 36 × frames matrix, time-major, zero-padded to the longest clip of the corpus
    and flattened (the report's features (a));
  - `mean`: the mean of the 12 MFCC over time (the report's features (b)).
Inputs are standardized with the training split's statistics.

Arms: the report's four layouts (models/classic.py LAYOUTS) × activation (bipolar sigmoid,
ReLU) × features, each a PyTorch MLP with Xavier init trained by Adam until validation
loss has not improved for `patience` epochs (at most 100: the small mean-MFCC nets need many); `sklearn_mlp`, scikit-learn's MLPClassifier (one hidden layer of (in+out)/2,
ReLU, its defaults) on the same standardized MFCC + deltas, the reference the report's MLP must
beat; and `floor`, a standardized logistic regression on each clip's mean and standard deviation
of the 36 frame features.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import classic_audio
from .data.audio import with_media_caps
from .core.seeding import seed_everything
from .models.classic import LAYOUTS, MLP, hidden_sizes

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "audiomnist_mlp"
STAGE = "mfcc"
N_MFCC = 12
FEATURES = ("deltas", "mean")
ACTIVATION_NAMES = {"relu": "relu", "bipolar": "bipolar_sigmoid"}




def features(frames: dict, kind: str) -> dict:
    """split → (X, y) from split → (list of (36, frames) MFCC + delta arrays, y)."""
    if kind == "mean":
        return {s: (np.stack([m[:N_MFCC].mean(1) for m in xs]), y) for s, (xs, y) in frames.items()}
    if kind == "mean+std":
        from .core.sklearn_trial import mean_and_std

        return {s: (mean_and_std([m.T for m in xs]), y) for s, (xs, y) in frames.items()}
    if kind == "deltas":
        longest = max(m.shape[1] for xs, _ in frames.values() for m in xs)

        def flat(m):
            out = np.zeros((longest, m.shape[0]), np.float32)
            out[: m.shape[1]] = m.T
            return out.reshape(-1)
        return {s: (np.stack([flat(m) for m in xs]), y) for s, (xs, y) in frames.items()}
    raise ValueError(f"unknown AudioMNIST features {kind!r}; choose from deltas, mean, mean+std")


def run_name(config: dict) -> str:
    if config["method"] == "mlp":
        return f"{config['arm']} lr={config['lr']:.0e} bs={config['batch_size']}"
    return config["arm"]


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    from .core.on_ray import configure_threads
    from .core.sklearn_trial import fit_estimator, fit_floor

    configure_threads()
    seed_everything(int(config["seed"]))
    classes = list(config["classes"])
    data = features(classic_audio.load(config, STAGE), config["features"])
    info = {**classic_audio.info_of(data, classes), "n_inputs": data["train"][0].shape[1]}
    tags = classic_audio.tags_of(config, WORKLOAD)
    if config["method"] == "floor":
        fit_floor(config, data, classes, tracking, run_name(config), tags, info)
        return
    data, _, _ = classic_audio.standardize(data)
    n_in = data["train"][0].shape[1]
    info.update({f"hidden_{i + 1}": size for i, size in enumerate(hidden_sizes(config["layout"], n_in, len(classes)))})
    if config["method"] == "sklearn_mlp":
        from sklearn.neural_network import MLPClassifier

        estimator = MLPClassifier(hidden_layer_sizes=tuple(hidden_sizes("h1", n_in, len(classes))), activation="relu",
                                  random_state=int(config["seed"]), max_iter=int(config["sklearn_max_iter"]))
        fit_estimator(config, estimator, data, classes, tracking, run_name(config), tags, info)
        return
    model = MLP(n_in, len(classes), config["layout"], config["activation"], dropout=float(config["dropout"]))
    classic_audio.network_trial(config, model, data, classes, tracking, run_name(config), tags, info)


def prepare(config: dict, *, corpus: list | None = None, media_root: str | None = None,
            max_seconds: float | None = None, max_file_mb: float | None = None) -> dict:
    config = with_media_caps(config, max_seconds, max_file_mb)
    return classic_audio.prepare_single(config, "audiomnist", {STAGE: {}}, WORKLOAD, corpus, media_root)


describe = classic_audio.describe
