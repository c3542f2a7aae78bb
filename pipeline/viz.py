"""Drawing shared by every stage's overlays: one palette, one way to draw a box with its label."""

from __future__ import annotations

import cv2
import numpy as np

PALETTE = [(60, 60, 255), (60, 200, 60), (255, 120, 40), (0, 210, 255), (200, 60, 200), (255, 255, 60)]
TRUTH = (80, 255, 80)  # ground truth is always drawn in green


def to_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()


def thickness(image: np.ndarray) -> int:
    return max(1, round(max(image.shape[:2]) / 300))


def draw_box(img: np.ndarray, xywh: list[float], colour: tuple[int, int, int], label: str | None = None) -> None:
    """A COCO ``[x, y, w, h]`` box, drawn in place, with an optional label above it."""
    t = thickness(img)
    x, y, w, h = (int(round(v)) for v in xywh)
    cv2.rectangle(img, (x, y), (x + max(w, 1) - 1, y + max(h, 1) - 1), colour, t)
    if label:
        cv2.putText(img, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, colour, t)
