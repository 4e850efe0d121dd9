"""A scikit-learn estimator as a trial: fitted once, scored on every split, reported to Tune
and logged to MLflow like every other trial (params, metrics, confusion matrix, report).

The floors of the hand-made-feature studies and S5's classic baselines run through here, so
their rows sit in the same results table and MLflow experiment as the networks they are
read against.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING

from .on_ray import current_session
from .session import LocalSession
from .metrics import classification_metrics, plot_confusion

if TYPE_CHECKING:
    from .tracking import TrackingContext


def fit_estimator(config: dict, estimator, data: dict, class_names: list, tracking: TrackingContext | None,
                  run_name: str, tags: dict, info: dict | None = None, session: LocalSession | None = None,
                  item_ids: dict | None = None) -> dict | None:
    """`data`: split → (X, y) for train, val and test; `item_ids`: split → its items' ids, in
    order, for the per-item predictions. Returns what a trainable returns, like the epoch
    loop's callers: {"best": the reported metrics} in a plain process (a session handed in),
    None under Tune (a dict returned to Tune would be read as a result)."""
    import numpy as np
    import pandas as pd

    from .predictions import frame as predictions_frame, write as write_predictions

    plain = session is not None
    session = current_session(session)
    t = time.perf_counter()
    estimator.fit(*data["train"])
    train_s = time.perf_counter() - t
    scores, frames = {}, []
    for split, (X, y) in data.items():
        predicted = estimator.predict(X)
        scores[split] = classification_metrics(list(y), list(predicted), class_names)
        if split in ("val", "test"):
            probs = estimator.predict_proba(X) if hasattr(estimator, "predict_proba") else None
            if probs is not None and len(getattr(estimator, "classes_", [])) != len(class_names):
                full = np.zeros((len(y), len(class_names)), dtype=np.float32)  # a class absent from training
                full[:, np.asarray(estimator.classes_, dtype=int)] = probs
                probs = full
            frames.append(predictions_frame(split, y, predicted, probs, class_names, (item_ids or {}).get(split)))
    predictions = pd.concat(frames, ignore_index=True)
    test, val = scores["test"], scores["val"]

    steps = getattr(estimator, "named_steps", {"model": estimator}).values()
    n_params = int(sum(np.size(step.coef_) + np.size(getattr(step, "intercept_", 0)) for step in steps
                       if hasattr(step, "coef_"))
                   + sum(sum(np.size(a) for a in step.coefs_ + step.intercepts_) for step in steps
                         if hasattr(step, "coefs_")))  # an MLPClassifier's layers
    solver = [step for step in steps if hasattr(step, "n_iter_")]  # an iterative solver: did it converge?
    iterations = {"solver_iterations": int(np.max(solver[-1].n_iter_)),
                  "solver_converged": int(np.max(solver[-1].n_iter_) < getattr(solver[-1], "max_iter", np.inf))
                  } if solver else {}
    metrics = {"epoch": 1, "fitted_once": 1, **iterations,
               "train_acc": scores["train"]["acc"], "val_acc": val["acc"], "val_macro_f1": val["macro_f1"],
               "best_val_acc": val["acc"], "best_epoch": 1, "test_acc": test["acc"], "test_macro_f1": test["macro_f1"],
               "test_weighted_f1": test["weighted_f1"], "test_uar": test["uar"],
               **{f"test_f1_{c}": v for c, v in test["per_class_f1"].items()},
               "trainable_params": n_params, "total_params": n_params, "time_train_s": train_s,
               **{f"n_{split}": len(y) for split, (_, y) in data.items()},
               **{k: v for k, v in (info or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    if tracking is not None:
        from .tracking import RUN_ID_KEY, TrialRun

        art_dir = tempfile.mkdtemp(prefix="emosweep-artifacts-")
        run = TrialRun(tracking, session.trial_id, run_name, {**config, **(info or {})}, tags, art_dir)
        run.add_artifact(write_predictions(predictions, art_dir))
        title = f"{run_name}: test, acc {test['acc']:.3f}"
        run.add_artifact(plot_confusion(test["confusion"], class_names, title,
                                        os.path.join(art_dir, "confusion_matrix.png")))
        for name, text in (("classification_report.txt", test["report"]),
                           ("test_metrics.json", json.dumps({"confusion": test["confusion"],
                                                             "class_names": list(class_names)}, indent=2))):
            with open(os.path.join(art_dir, name), "w") as f:
                f.write(text)
            run.add_artifact(os.path.join(art_dir, name))
        if not run.sync_until([metrics], float(config.get("tracking_patience_s", 120))):
            metrics["mlflow_unlogged_epochs"] = 1
        if not run.pending_artifacts:
            shutil.rmtree(art_dir, ignore_errors=True)
        if run.run_id:
            metrics[RUN_ID_KEY] = run.run_id  # the driver closes the run by it, without a search
    with tempfile.TemporaryDirectory() as ckpt_dir:  # the checkpoint holds the predictions alone
        write_predictions(predictions, ckpt_dir)
        session.report(metrics, ckpt_dir)
    return {"best": metrics} if plain else None


def fit_floor(config: dict, data: dict, class_names: list, tracking: TrackingContext | None, run_name: str,
              tags: dict, info: dict | None = None, session: LocalSession | None = None,
              item_ids: dict | None = None) -> dict | None:
    """The hand-made-feature studies' floor: a standardized logistic regression (C =
    config["floor_c"]) on `data` (split → (X, y); each clip's mean and standard deviation of
    the study's frame features), the simplest fair baseline on the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = make_pipeline(StandardScaler(), LogisticRegression(C=float(config.get("floor_c", 1.0)), max_iter=2000,
                                                                   random_state=int(config["seed"])))
    return fit_estimator(config, estimator, data, class_names, tracking, run_name, tags, info, session, item_ids)


def mean_and_std(frames):
    """The floor's features: each clip's mean and standard deviation over time of its frame
    features; frames: a list of (time, features) arrays."""
    import numpy as np

    return np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in frames])
