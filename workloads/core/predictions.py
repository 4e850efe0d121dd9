"""A trial's per-item predictions: for the best epoch's validation and test splits, each item's
uid, true label, predicted class and class probabilities. They are what McNemar's test on one
split, ensembles, error analysis and an EmoBox submission need; accuracies alone are not.

A trial keeps them in its checkpoint (`predictions.parquet`, so a resumed trial still has them)
and logs them to its MLflow run; the sweep gathers every trial's into
`results.predictions.parquet`. Only pandas (and pyarrow, its Parquet engine) are needed, so a
bare GPU box running --local writes them too."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

FILE = "predictions.parquet"


def frame(split: str, y_true, y_pred, y_prob, class_names, item_ids=None) -> pd.DataFrame:
    """One split's predictions. Labels and predictions are class names; `p_<class>` columns
    hold the probabilities (float32) where the model gives them. Without item ids an item is
    named by its split and position (the evaluation order is fixed: no shuffling)."""
    names = [str(c) for c in class_names]
    n = len(y_true)
    if item_ids is not None and len(item_ids) != n:
        raise ValueError(f"{split}: {len(item_ids)} item ids for {n} predictions")
    out = pd.DataFrame({
        "uid": [str(u) for u in item_ids] if item_ids is not None else [f"{split}:{i}" for i in range(n)],
        "split": split,
        "label": [names[int(y)] for y in y_true],
        "pred": [names[int(y)] for y in y_pred],
    })
    if y_prob is not None and len(y_prob):
        probs = np.asarray(y_prob, dtype=np.float32).reshape(n, -1)
        for i, name in enumerate(names[:probs.shape[1]]):
            out[f"p_{name}"] = probs[:, i]
    return out


def write(predictions: pd.DataFrame, directory: str) -> str:
    path = os.path.join(directory, FILE)
    predictions.to_parquet(path, index=False)
    return path


def read(directory: str) -> pd.DataFrame | None:
    path = os.path.join(directory, FILE)
    return pd.read_parquet(path) if os.path.exists(path) else None


def with_corpus(predictions: pd.DataFrame, default: str | None = None, items: dict | None = None) -> pd.DataFrame:
    """The corpus of each item: the study's items table's (`items`: uid → row, where a row
    names its corpus), else `default` (the study's one corpus)."""
    named = predictions["uid"].map(lambda u: (items.get(u) or {}).get("corpus") if items else None)
    return predictions.assign(corpus=named.where(named.notna() & (named != ""), default or ""))
