"""Overlays of the converted labels, so a person can look before training on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.data.images import read_image
from pipeline.viz import PALETTE, draw_box, thickness, to_bgr


def draw(image: np.ndarray, instances: list[dict[str, Any]], defects: tuple[str, ...]) -> np.ndarray:
    """Boxes (thin) and YOLO-seg polygons (filled, translucent) per class, with the class name."""
    img = to_bgr(image)
    h, w = img.shape[:2]
    overlay = img.copy()
    thick = thickness(img)
    for inst in instances:
        colour = PALETTE[defects.index(inst["class"]) % len(PALETTE)]
        poly = np.round(np.asarray(inst["yolo_polygon"]) * (w, h)).astype(np.int32)
        cv2.fillPoly(overlay, [poly], colour)
        cv2.polylines(img, [poly], True, colour, thick)
        draw_box(img, inst["bbox"], colour, inst["class"])
    return cv2.addWeighted(overlay, 0.35, img, 0.65, 0)


def write_previews(out: Path, per_class: int, sources: dict[str, Path], labels: dict[str, str],
                   instances: dict[str, list[dict[str, Any]]], defects: tuple[str, ...]) -> list[Path]:
    written = []
    for defect in defects:
        for rel in sorted(r for r, label in labels.items() if label == defect)[:per_class]:
            path = out / defect / rel.replace("/", "_")
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), draw(read_image(sources[rel]), instances[rel], defects))
            written.append(path)
    return written
