"""Instances from a mask, and their YOLO and COCO encodings, each checked by rasterising it back.

An instance is a connected component of the defect mask (optionally merged with components closer than
``merge_distance`` px, optionally dropped below ``min_area``). Components come from one contour trace of
the mask (labelling only where boxes overlap), and all later work happens on each instance's box crop and
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
from functools import cached_property
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pipeline.data.masks import CONNECTIVITY


@dataclass(frozen=True)
class ConvertParams:
    merge_distance: int = 0
    min_area: int = 0
    simplify: float = 1.0
    coco_min_iou: float = 0.99
    yolo_seg_min_iou: float = 0.95


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@dataclass(frozen=True)
class Component:
    """One instance: its tight box (x, y, w, h), its pixels cropped to that box, and its contours.

    ``outer`` and ``holes`` are (N, 2) int arrays in crop coordinates, as ``cv2.findContours`` traces them.
    """

    bbox: tuple[int, int, int, int]
    crop: np.ndarray
    outer: list[np.ndarray]
    holes: list[np.ndarray]

    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))


def split_instances(mask: np.ndarray, merge_distance: int = 0, min_area: int = 0) -> list[Component]:
    """Each instance of a boolean mask of at least ``min_area`` px, in raster order of its first pixel."""
    m8 = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).astype(np.uint8)
    comps = _merged(m8, merge_distance) if merge_distance > 0 else _traced(m8)
    return [c for c in comps if c.area >= max(1, min_area)]


def _traced(m8: np.ndarray) -> list[Component]:
    """Components from one contour trace of the frame, without labelling it.

    With ``RETR_CCOMP`` every top-level contour is the outer border of one 8-connected component and its
    children are that component's holes (a component inside a hole is top-level again). A component's
    box holds nothing else unless another component's box overlaps it: only then are pixels labelled,
    once per mask. Tracing costs a tenth of labelling on MVTec masks.
    """
    contours, hier = cv2.findContours(m8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hier = hier[0]
    # an outer contour starts at its component's first pixel in raster order: sort by it (a stable, readable order)
    tops = sorted(np.flatnonzero(hier[:, 3] < 0), key=lambda i: (contours[i][0, 0, 1], contours[i][0, 0, 0]))
    boxes = np.array([cv2.boundingRect(contours[i]) for i in tops])
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    if len(tops) > 1024:  # the pairwise test would cost more than labelling
        crowded = np.ones(len(tops), bool)
    else:
        overlap = ((x0[:, None] < x1[None]) & (x0[None] < x1[:, None]) & (y0[:, None] < y1[None])
                   & (y0[None] < y1[:, None]))
        np.fill_diagonal(overlap, False)
        crowded = overlap.any(axis=1)
    labels = cv2.connectedComponents(m8, connectivity=CONNECTIVITY)[1] if crowded.any() else None
    out = []
    for k, i in enumerate(tops):
        x, y, w, h = (int(v) for v in boxes[k])
        if crowded[k]:
            px, py = contours[i][0, 0]
            crop = labels[y:y + h, x:x + w] == labels[py, px]
        else:
            crop = m8[y:y + h, x:x + w].astype(bool)
        holes, child = [], hier[i][2]
        while child >= 0:
            holes.append(contours[child].reshape(-1, 2) - (x, y))
            child = hier[child][0]
        out.append(Component((x, y, w, h), crop, [contours[i].reshape(-1, 2) - (x, y)], holes))
    return out


def _merged(m8: np.ndarray, merge_distance: int) -> list[Component]:
    """Groups of components closer than ``merge_distance`` px: labelled on the dilated mask."""
    rx, ry, rw, rh = cv2.boundingRect(m8)
    if rw == 0:
        return []
    pad = merge_distance
    rx0, ry0 = max(0, rx - pad), max(0, ry - pad)
    rx1, ry1 = min(m8.shape[1], rx + rw + pad), min(m8.shape[0], ry + rh + pad)
    region = m8[ry0:ry1, rx0:rx1]
    k = 2 * merge_distance + 1
    grouping = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grouping, connectivity=CONNECTIVITY)
    out = []
    for i in range(1, n):
        x, y, w, h = (int(v) for v in stats[i, :4])
        crop = (labels[y:y + h, x:x + w] == i) & region[y:y + h, x:x + w].astype(bool)
        ys, xs = np.nonzero(crop)  # the dilated group's box is larger than its pixels
        crop = crop[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        box = (x + rx0 + int(xs.min()), y + ry0 + int(ys.min()), crop.shape[1], crop.shape[0])
        out.append(Component(box, crop, *_contours(crop)))
    return out


def _contours(crop: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outer contours and holes of a crop, as (N, 2) int arrays in crop pixel coordinates."""
    cs, hier = cv2.findContours(crop.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer, holes = [], []
    for c, h in zip(cs, hier[0]):
        (holes if h[3] >= 0 else outer).append(c.reshape(-1, 2))
    return outer, holes


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
            score = iou(_fill([approx], comp.crop.shape), comp.crop)
            if score >= min_iou:
                return approx, score
            exact = iou(_fill([ring], comp.crop.shape), comp.crop)
            return (approx, score) if score >= exact else (ring, exact)
    return ring, iou(_fill([ring], comp.crop.shape), comp.crop)


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
    rle = {"size": [height, width], "counts": _strip_rle(comp.crop, comp.bbox, height, width)}
    return rle, "rle", coco_fidelity(rle, comp.crop, comp.bbox, height, width)


def _polygon_may_pass(comp: Component, min_iou: float) -> bool:
    perimeter = sum(cv2.arcLength(c.reshape(-1, 1, 2).astype(np.int32), True) for c in comp.outer)
    return 1.0 - POLYGON_LOSS_PER_PERIMETER * perimeter / comp.area >= min_iou


def _strip_rle(crop: np.ndarray, bbox: tuple[int, int, int, int], height: int, width: int) -> str:
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
    return mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)["counts"].decode("ascii")

def decode_coco(segmentation: Any, height: int, width: int) -> np.ndarray:
    """What pycocotools makes of an annotation, as a full-size boolean mask."""
    return mask_utils.decode(_rle(segmentation, height, width)).astype(bool)


def _rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def coco_fidelity(segmentation: Any, crop: np.ndarray, bbox: tuple[int, int, int, int], height: int, width: int) -> float:
    """IoU between the instance and its COCO annotation as pycocotools reads it, without decoding the frame.

    pycocotools' run-length IoU compares the annotation with pycocotools' own encoding of the instance: on
    the box alone for a polygon whose full-frame rasterisation (``toBbox``) stays inside the box, on the
    full frame for RLE and for anything spilling out.
    """
    x, y, w, h = bbox
    rle = _rle(segmentation, height, width)
    if isinstance(segmentation, list):
        bx, by, bw, bh = (int(round(v)) for v in mask_utils.toBbox(rle))
        if bx >= x and by >= y and bx + bw <= x + w and by + bh <= y + h:  # nothing outside: compare on the box
            shifted = [(np.asarray(p).reshape(-1, 2) - (x, y)).ravel().tolist() for p in segmentation]
            on_box = mask_utils.merge(mask_utils.frPyObjects(shifted, h, w))
            return float(mask_utils.iou([on_box], [mask_utils.encode(np.asfortranarray(crop.view(np.uint8)))], [0])[0][0])
    frame = np.zeros((height, width), np.uint8, order="F")
    frame[y:y + h, x:x + w] = crop
    return float(mask_utils.iou([rle], [mask_utils.encode(frame)], [0])[0][0])


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
