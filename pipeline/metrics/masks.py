"""Mask overlap scores. An empty prediction of an empty truth scores 1 (a correct rejection), not 0/0."""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)
