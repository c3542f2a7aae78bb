"""Connected components of defect masks: the one definition of an 'instance' every stage shares.

An instance is a connected component of the defect mask (optionally merged with components closer than
``merge_distance`` px, optionally dropped below ``min_area``). Components come from one contour trace of
the mask (labelling only where boxes overlap); each keeps its box crop and contours, so later work (the
dataset card's areas, ``pipe convert``'s encodings) never touches the full frame again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

CONNECTIVITY = 8  # diagonal neighbours belong to the same defect, as in MVTec's own region metrics


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


def components(mask: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """Label map (int32, 0 = background, k = the k-th component) and the components of a boolean mask, in
    raster order: :func:`split_instances` with nothing merged or dropped, plus where each pixel belongs."""
    comps = split_instances(mask)
    labels = np.zeros(mask.shape, np.int32)
    for k, c in enumerate(comps, 1):
        x, y, w, h = c.bbox
        labels[y:y + h, x:x + w][c.crop] = k
    return labels, comps


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
