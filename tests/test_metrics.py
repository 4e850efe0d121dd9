"""The epoch metrics are NumPy; scikit-learn is the reference they must match, number for
number and the report character for character."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, recall_score

from workloads.core.metrics import classification_metrics


def reference(y_true, y_pred, names):
    labels = list(range(len(names)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "uar": float(recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class_f1": {n: float(v) for n, v in zip(names, per_class)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "report": classification_report(y_true, y_pred, labels=labels, target_names=names, digits=4,
                                        zero_division=0),
    }


@pytest.mark.parametrize("seed", range(6))
def test_same_as_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    names = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"][:rng.integers(2, 9)]
    n = int(rng.integers(1, 300))
    y_true = rng.integers(0, len(names), n)
    # mostly right, some classes never predicted or never present: the zero-division corners
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, max(1, len(names) - 2), n))
    if seed % 2:
        y_true = np.minimum(y_true, len(names) - 2)  # the last class has no support
    ours, theirs = classification_metrics(y_true.tolist(), y_pred.tolist(), names), reference(y_true, y_pred, names)
    assert ours["report"] == theirs["report"]
    assert ours["confusion"] == theirs["confusion"]
    for key in ("acc", "macro_f1", "uar", "weighted_f1"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert ours["per_class_f1"] == pytest.approx(theirs["per_class_f1"], abs=1e-12)


def test_long_class_names_and_a_label_outside_the_classes():
    names = ["a", "a much longer class name"]
    ours = classification_metrics([0, 1, 1], [0, 0, 1], names)
    assert ours["report"] == reference([0, 1, 1], [0, 0, 1], names)["report"]
    with pytest.raises(ValueError, match=r"labels \[2\] outside the 2 classes"):
        classification_metrics([0, 2], [0, 1], names)
