"""Side-by-side figures for the pixel-level comparison, drawn from the files the stages wrote.

One figure per example defective test image, four panels: the image with its true defect outlined; PatchCore's
heat map with the region at its pixel threshold outlined; SAM's masks from the detector's boxes; SAM's masks
from the true boxes. Each panel's title carries the IoU and Dice its stage recorded for that image (the figures
measure nothing: they are drawn at display size, the numbers come from full resolution). A method that left
nothing to draw gets a grey panel saying so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline import plots
from pipeline.coco import decode
from pipeline.data.images import read_image, to_rgb, unsquare
from pipeline.report.compare import SAM_MODES, Masks, PixelComparison
from pipeline.viz import TRUTH, thickness
from pipeline.workspace import CocoFormat, flat_name

DISPLAY = 384  # the long side of a panel, in pixels
FLAGGED = (255, 255, 255)  # PatchCore's thresholded region, outlined in white
FILL = (255, 60, 200)  # SAM's masks, filled in magenta (RGB)
BLANK = 225  # the grey of a panel with nothing to draw
TITLES = {"patchcore": "PatchCore heat map (white: ≥ threshold)", "sam_detector": "SAM from the detector's boxes",
          "sam_true_boxes": "SAM from the true boxes"}


@dataclass(frozen=True)
class PanelSources:
    """What the figures draw, each from the file its stage wrote (empty where it left none)."""

    coco: CocoFormat  # the converted dataset: its test images
    annotations: Mapping[str, Any] | None  # its COCO test annotations: each image's size, MVTec path, true masks
    maps: Mapping[str, np.ndarray] = field(default_factory=dict)  # PatchCore's test maps at imgsz, by rel
    pixel_threshold: float | None = None
    sam: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)  # SAM_MODES key -> COCO results


def load_maps(path: Path) -> dict[str, np.ndarray]:
    """PatchCore's saved test maps by MVTec path (``AnomalyFiles.test_maps``); empty when the file is missing."""
    if not Path(path).is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {str(r): m.astype(np.float32) for r, m in zip(z["rels"], z["maps"])}


def _by_image(records: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault(r["image_id"], []).append(r)
    return out


def _union(records: Sequence[Mapping[str, Any]], height: int, width: int, size: tuple[int, int]) -> np.ndarray:
    """The union of COCO segmentations, decoded at full size and shrunk to ``size`` (width, height) for display."""
    full = np.zeros((height, width), bool)
    for r in records:
        full |= decode(r["segmentation"], height, width)
    return cv2.resize(full.view(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0


def _outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(image, contours, -1, colour, thickness(image))


def _heat(base: np.ndarray, values: np.ndarray, threshold: float, top: float) -> np.ndarray:
    """The map in JET colours over the image, its region at ``threshold`` outlined."""
    scaled = np.clip(values / top * 255, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return _outline(cv2.addWeighted(base, 0.5, heat, 0.5, 0), values.astype(np.float64) >= threshold, FLAGGED)


def _fill(base: np.ndarray, mask: np.ndarray) -> np.ndarray:
    filled = base.copy()
    filled[mask] = FILL
    return cv2.addWeighted(filled, 0.5, base, 0.5, 0)


def _title(method: Masks | None, key: str, rel: str) -> str:
    name = TITLES[key]
    if method is None or method.absent:
        return f"{name}\n– (not run)"
    score = (method.scores or {}).get(rel)
    return f"{name}\nIoU {score['iou']:.2f}, Dice {score['dice']:.2f}" if score else f"{name}\n– (not scored)"


def _scale(maps: Mapping[str, np.ndarray], threshold: float | None) -> float:
    """The top of the heat maps' colour scale, shared by every figure: the 99th percentile of all maps, raised to
    the threshold so the flagged region is never all one colour."""
    if not maps:
        return 1.0
    top = float(np.percentile(np.stack(list(maps.values())), 99))
    return max(top, threshold or 0.0) or 1.0


def side_by_side(result: PixelComparison, sources: PanelSources, folder: Path, limit: int = 4) -> list[Path]:
    """One figure per example defective image (``PixelComparison.examples``), written to ``folder``; images the
    converted dataset no longer holds are skipped."""
    if sources.annotations is None:
        return []
    images = {im["source"]: im for im in sources.annotations.get("images", []) if im.get("source")}
    truth = _by_image(sources.annotations.get("annotations", []))
    sam = {k: _by_image(v) for k, v in sources.sam.items()}
    methods = {r.masks.key: r.masks for r in result.rows}
    top = _scale(sources.maps, sources.pixel_threshold)
    written = []
    for rel in result.examples(limit):
        im, path = images.get(rel), sources.coco.image("test", rel)
        if im is None or not path.is_file():
            continue
        h, w = im["height"], im["width"]
        k = min(1.0, DISPLAY / max(h, w))
        size = (max(1, round(w * k)), max(1, round(h * k)))
        base = cv2.resize(to_rgb(read_image(path)), size, interpolation=cv2.INTER_AREA)
        true = _union(truth.get(im["id"], []), h, w, size)
        panels = [(_outline(base.copy(), true, TRUTH), "image\ntrue defect (green)")]
        values = sources.maps.get(rel)
        heat = (_heat(base.copy(), unsquare(values, size[1], size[0]), sources.pixel_threshold, top)
                if values is not None and sources.pixel_threshold is not None else np.full_like(base, BLANK))
        panels.append((_outline(heat, true, TRUTH), _title(methods.get("patchcore"), "patchcore", rel)))
        for key in SAM_MODES:
            masks = (_fill(base.copy(), _union(sam[key].get(im["id"], []), h, w, size)) if key in sam
                     else np.full_like(base, BLANK))
            panels.append((_outline(masks, true, TRUTH), _title(methods.get(key), key, rel)))
        out = folder / f"pixels_{Path(flat_name(rel)).with_suffix('.png').name}"
        written.append(plots.panels([p for p, _ in panels], [t for _, t in panels], rel, out))
    return written
