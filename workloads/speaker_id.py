"""S5, speaker identification: logistic regression by SGD or by the sag solver, as scikit-learn
estimators run as Tune trials and logged to MLflow like every other trial, read against a floor.

Features, cached by the media pipeline: (a) `spectral`, the clip's mean spectral centroid,
zero-crossing rate and RMS (stage `spectral_stats`); (b) `mfcc`, the 13 mean MFCCs (the first
half of stage `mfcc_stats`). Both are standardized with the training split's statistics: the
report says so of (a), and SGD with a constant learning rate of 0.01 diverges on raw MFCC
means (whose first coefficient is in the hundreds): on real RAVDESS it scored chance. Estimators:
SGDClassifier (log loss, constant learning rate 0.01, regularization `alpha` searched) or
LogisticRegression(solver="sag") (`C` searched). The floor is a standardized logistic regression
on the clip's mean and standard deviation of the 13 MFCC frames (all of `mfcc_stats`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import classic_audio
from .data.audio import with_media_caps
from .core.seeding import seed_everything
from .core.errors import UserError

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "speaker_id"
STAGES = {"spectral_stats": {}, "mfcc_stats": {}}


def estimator_of(config: dict):
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed, iters = int(config["seed"]), int(config["max_iter"])
    if config["method"] == "sgd":
        model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, alpha=float(config["alpha"]),
                              max_iter=iters, random_state=seed)
    elif config["method"] == "sag":
        model = LogisticRegression(solver="sag", C=float(config["C"]), max_iter=iters, random_state=seed)
    else:
        raise ValueError(f"unknown speaker-ID method {config['method']!r}")
    return make_pipeline(StandardScaler(), model) if config["standardize"] else model


def run_name(config: dict) -> str:
    knob = {"sgd": f"alpha={config['alpha']:.0e}", "sag": f"C={config['C']:.3g}"}.get(config["method"], "")
    return f"{config['arm']} {knob}".strip()


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    from .core.sklearn_trial import fit_estimator, fit_floor

    seed_everything(int(config["seed"]))
    classes = list(config["classes"])
    tags = classic_audio.tags_of(config, WORKLOAD)
    if config["features"] == "spectral":
        data = classic_audio.load(config, "spectral_stats", stack=True)
    else:  # mfcc_stats: the means, then the deviations; the solvers read the means, the floor both
        stats = classic_audio.load(config, "mfcc_stats", stack=True)
        data = stats if config["method"] == "floor" else {s: (x[:, : x.shape[1] // 2], y) for s, (x, y) in stats.items()}
    info = classic_audio.info_of(data, classes)
    if config["method"] == "floor":
        fit_floor(config, data, classes, tracking, run_name(config), tags, info)
        return
    # whether the solver converged is logged with the trial (solver_iterations, solver_converged)
    fit_estimator(config, estimator_of(config), data, classes, tracking, run_name(config), tags, info)


def prepare(config: dict, *, corpus: list | None = None, media_root: str | None = None,
            max_seconds: float | None = None, max_file_mb: float | None = None) -> dict:
    config = with_media_caps(config, max_seconds, max_file_mb)
    if config.get("speaker_norm"):  # it would standardize away the very thing the labels name
        raise UserError("speaker_norm: speaker identification's labels are the speakers; it cannot normalize by them")
    return classic_audio.prepare_single(config, "speakers", STAGES, WORKLOAD, corpus, media_root)


describe = classic_audio.describe
