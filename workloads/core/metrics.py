"""Classification metrics and the pictures people read instead of tables."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """Accuracy, unweighted accuracy (UAR), weighted and macro F1, per-class F1, the confusion
    matrix and the text report, over the classes 0..n-1 (a class never seen or never predicted
    scores 0, as scikit-learn's zero_division=0).

    Computed from the confusion matrix in NumPy, every epoch of every trial: scikit-learn's
    functions give the same numbers and the same report (tests/test_metrics.py holds them to
    it) but spend ~50 ms per call validating their inputs, 40% of a short trial, and seconds
    importing in every fresh worker."""
    n = len(class_names)
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    outside = np.setdiff1d(np.union1d(y_true, y_pred), np.arange(n))
    if outside.size:
        raise ValueError(f"labels {outside.tolist()} outside the {n} classes {list(class_names)}")
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    tp, support, predicted = np.diag(cm).astype(float), cm.sum(axis=1), cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    total = int(support.sum())
    acc = float(tp.sum() / total) if total else 0.0
    weighted = [float((v * support).sum() / total) if total else 0.0 for v in (precision, recall, f1)]
    return {
        "acc": acc,
        "macro_f1": float(f1.mean()) if n else 0.0,
        # unweighted accuracy (mean per-class recall), the speech-emotion literature's UA
        "uar": float(recall.mean()) if n else 0.0,
        "weighted_f1": weighted[2],
        "per_class_f1": {name: float(v) for name, v in zip(class_names, f1)},
        "confusion": cm.tolist(),
        "report": _report(list(class_names), precision, recall, f1, support, acc, weighted),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def _report(names: list, precision, recall, f1, support, acc: float, weighted: list, digits: int = 4) -> str:
    """scikit-learn's classification_report, character for character."""
    width = max([len(x) for x in names] + [len("weighted avg"), digits])
    head = "{:>{width}s} " + " {:>9}" * 4
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    total = int(support.sum())
    text = head.format("", "precision", "recall", "f1-score", "support", width=width) + "\n\n"
    for name, p, r, f, s in zip(names, precision, recall, f1, support):
        text += row.format(name, p, r, f, int(s), width=width, digits=digits)
    text += "\n"
    text += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n").format(
        "accuracy", "", "", acc, total, width=width, digits=digits)
    text += row.format("macro avg", precision.mean(), recall.mean(), f1.mean(), total, width=width, digits=digits)
    text += row.format("weighted avg", *weighted, total, width=width, digits=digits)
    return text


def _pyplot():
    """matplotlib, imported when a picture is drawn (a bare training box may lack it)."""
    import matplotlib

    matplotlib.use("Agg")  # trials run headless on Ray workers
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str, path: str) -> str:
    """Heatmap of counts, with row-normalised colour so rare classes stay readable."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    width, height = max(4.5, 1.0 + 0.8 * n), max(3.8, 1.2 + 0.7 * n)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    title = textwrap.fill(title, 48)
    ax.set_title(title, fontsize=9)
    # margins from the labels' lengths (inches at the 10-pt tick font), not tight_layout, which
    # draws the figure once more to measure it: a third of the picture's cost, in every trial
    longest = max((len(str(c)) for c in class_names), default=1)
    left, bottom = 0.55 + 0.085 * longest, 0.6 + 0.06 * longest  # the x labels at 45°
    top = 0.15 + 0.17 * (title.count("\n") + 1)
    fig.subplots_adjust(left=min(left / width, 0.45), bottom=min(bottom / height, 0.45),
                        right=0.97, top=1 - top / height)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
