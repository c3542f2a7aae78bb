"""The YOLO and COCO encodings of a mask's instances, each checked by rasterising it back.

Instances are ``pipeline.data.masks``' components; all work here happens on each instance's box crop and
on run lengths, never on the full frame: conversion costs about 1.4x decoding the masks.

- YOLO box: the tight pixel box, normalised; exact by construction (checked anyway).
- YOLO-seg polygon: the outer contour with each hole joined by a zero-width bridge, so that
  ``cv2.fillPoly`` (which ultralytics uses to rasterise polygons) reproduces holes; simplified with
  ``simplify`` px tolerance, falling back to the exact contour when that misses the bound.
- COCO: a polygon when the component has no hole and the polygon rasterises back (pycocotools) with
  IoU >= ``coco_min_iou``; otherwise compressed RLE, which is exact. Thin shapes, whose pixel-centre
  polygon is bound to miss, go to RLE without being rasterised first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline import coco
from pipeline.data.masks import Component, split_instances


@dataclass(frozen=True)
class ConvertParams:
    merge_distance: int = 0
    min_area: int = 0
    simplify: float = 1.0
    coco_min_iou: float = 0.99
    yolo_seg_min_iou: float = 0.95


def _bridge(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring: walk the outer contour, and at the point nearest each hole, go in, round it, and come back."""
    ring = outer
    for hole in holes:
        d = ((ring[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        hole_loop = np.concatenate([hole[j:], hole[:j + 1]])
        ring = np.concatenate([ring[:i + 1], hole_loop, ring[i:]])
    return ring


def _fill(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [p.reshape(-1, 1, 2).astype(np.int32) for p in polys], 1)
    return canvas.astype(bool)


def yolo_polygon(comp: Component, simplify: float, min_iou: float) -> tuple[np.ndarray, float]:
    """The instance as one polygon (crop coordinates) and its IoU with the crop when filled back.

    The simplified polygon is kept when it meets ``min_iou`` (then the exact one is never filled), or when
    it does at least as well as the exact contour.
    """
    outer = max(comp.outer, key=len)
    # a component is one connected piece: one outer contour; holes inside it get bridged
    ring = _bridge(outer, comp.holes) if comp.holes else outer
    if simplify > 0 and len(ring) > 4:
        approx = cv2.approxPolyDP(ring.reshape(-1, 1, 2).astype(np.int32), simplify, True).reshape(-1, 2)
        if len(approx) >= 3:
            score = coco.iou(_fill([approx], comp.crop.shape), comp.crop)
            if score >= min_iou:
                return approx, score
            exact = coco.iou(_fill([ring], comp.crop.shape), comp.crop)
            return (approx, score) if score >= exact else (ring, exact)
    return ring, coco.iou(_fill([ring], comp.crop.shape), comp.crop)


# A polygon through pixel centres leaves out about half of every boundary pixel: its IoU is close to
# 1 - 0.45 * perimeter / area on MVTec masks. Shapes that miss the bound even at 1 - 0.35 * perimeter / area
# go straight to RLE instead of being rasterised first.
POLYGON_LOSS_PER_PERIMETER = 0.35


def coco_segmentation(comp: Component, height: int, width: int, min_iou: float) -> tuple[Any, str, float]:
    """A COCO ``segmentation`` (a polygon list where it is faithful, else compressed RLE), its encoding and
    its IoU with the instance as pycocotools reads it back."""
    x, y, w, h = comp.bbox
    if not comp.holes and _polygon_may_pass(comp, min_iou):
        polys = [(c + (x + 0.5, y + 0.5)).ravel().tolist() for c in comp.outer if len(c) >= 3]
        if polys:
            score = coco_fidelity(polys, comp.crop, comp.bbox, height, width)
            if score >= min_iou:
                return polys, "polygon", score
    rle = _strip_rle(comp.crop, comp.bbox, height, width)
    return rle, "rle", coco_fidelity(rle, comp.crop, comp.bbox, height, width)


def _polygon_may_pass(comp: Component, min_iou: float) -> bool:
    perimeter = sum(cv2.arcLength(c.reshape(-1, 1, 2).astype(np.int32), True) for c in comp.outer)
    return 1.0 - POLYGON_LOSS_PER_PERIMETER * perimeter / comp.area >= min_iou


def _strip_rle(crop: np.ndarray, bbox: tuple[int, int, int, int], height: int, width: int) -> dict[str, Any]:
    """Compressed full-image RLE built from the instance's column strip (COCO RLE runs column-major).

    Columns left and right of the strip are all background, so they only lengthen the first and last
    background runs; this avoids encoding (and later decoding) the whole frame for every instance.
    """
    x, y, w, h = bbox
    strip = np.zeros((height, w), np.uint8)
    strip[y:y + h] = crop
    flat = strip.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += x * height
    tail = (width - x - w) * height
    if tail:
        if len(runs) % 2:  # odd count: the last run is background
            runs[-1] += tail
        else:
            runs.append(tail)
    return coco.to_json(coco.from_runs(runs, height, width))


def coco_fidelity(segmentation: Any, crop: np.ndarray, bbox: tuple[int, int, int, int], height: int, width: int) -> float:
    """IoU between the instance and its COCO annotation as pycocotools reads it, without decoding the frame.

    pycocotools' run-length IoU compares the annotation with pycocotools' own encoding of the instance: on
    the box alone for a polygon whose full-frame rasterisation (``toBbox``) stays inside the box, on the
    full frame for RLE and for anything spilling out.
    """
    x, y, w, h = bbox
    rle = coco.from_segmentation(segmentation, height, width)
    if isinstance(segmentation, list):
        bx, by, bw, bh = (int(round(v)) for v in coco.rle_box(rle))
        if bx >= x and by >= y and bx + bw <= x + w and by + bh <= y + h:  # nothing outside: compare on the box
            shifted = [(np.asarray(p).reshape(-1, 2) - (x, y)).ravel().tolist() for p in segmentation]
            return coco.rle_iou(coco.from_polygons(shifted, h, w), coco.encode(crop))
    frame = np.zeros((height, width), np.uint8, order="F")
    frame[y:y + h, x:x + w] = crop
    return coco.rle_iou(rle, coco.encode(frame))


def convert_mask(mask: np.ndarray, params: ConvertParams) -> list[dict[str, Any]]:
    """Every instance of one image's mask, with its encodings and measured fidelity."""
    height, width = mask.shape
    out = []
    for comp in split_instances(mask, params.merge_distance, params.min_area):
        x, y, w, h = comp.bbox
        poly, seg_iou = yolo_polygon(comp, params.simplify, params.yolo_seg_min_iou)
        segmentation, encoding, coco_iou = coco_segmentation(comp, height, width, params.coco_min_iou)
        # YOLO box: normalised centre/size, then back to pixels as a reader would
        cx, cy, bw, bh = (x + w / 2) / width, (y + h / 2) / height, w / width, h / height
        back = (round((cx - bw / 2) * width), round((cy - bh / 2) * height), round(bw * width), round(bh * height))
        out.append({
            "bbox": [x, y, w, h],
            "area": comp.area,
            "yolo_box": [cx, cy, bw, bh],
            "yolo_box_exact": back == (x, y, w, h),
            "yolo_polygon": ((poly + (x, y)) / (width, height)).tolist(),
            "yolo_seg_iou": float(seg_iou),
            "segmentation": segmentation,
            "coco_encoding": encoding,
            "coco_iou": float(coco_iou),
        })
    return out
