"""Classification metrics from labels and predictions (scikit-learn), in the shape every report reads.

Balanced accuracy is the mean recall over the classes present in ``y_true``: on a long-tailed test set
plain accuracy rewards predicting the majority class, balanced accuracy does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    labels = list(range(len(names)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a tiny split are expected, and reported as support 0
        p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        balanced = balanced_accuracy_score(y_true, y_pred) if len(y_true) else None
        macro_f1 = f1_score(y_true, y_pred, labels=[c for c in labels if (y_true == c).any()], average="macro",
                            zero_division=0) if len(y_true) else None
    return {
        "images": int(len(y_true)),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 5) if len(y_true) else None,
        "balanced_accuracy": None if balanced is None else round(float(balanced), 5),
        "macro_f1": None if macro_f1 is None else round(float(macro_f1), 5),
        "per_class": {name: {"precision": round(float(p[i]), 5), "recall": round(float(r[i]), 5),
                             "f1": round(float(f[i]), 5), "support": int(n[i])} for i, name in enumerate(names)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "confusion_axes": "rows: true class, columns: predicted class, in `classes` order",
    }


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation over folds (None where a fold had no value)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(v.mean()), 5), "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 5),
            "n": int(len(v))}
