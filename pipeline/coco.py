"""COCO's encodings of masks and boxes, and the one mask IoU and Dice every stage scores with.

- Masks: pycocotools' run-length encoding (RLE) and polygons, so that what ``pipe convert`` writes, what the
  SAM stage decodes and what ``COCOeval`` scores are read by one implementation.
- Boxes: COCO ``[x, y, w, h]`` and ``[x1, y1, x2, y2]`` through ``torchvision.ops.box_convert``, and their IoU
  through ``torchvision.ops.box_iou``. torch is imported inside those functions only: ``pipe convert`` imports
  this module and must not load torch.
- Overlap: IoU and Dice of boolean masks, numpy arrays or torch tensors alike. Two empty masks score 1
  (a correct rejection), not 0/0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pycocotools import mask as mask_utils

if TYPE_CHECKING:
    import torch

Rle = dict[str, Any]  # pycocotools' RLE: {"size": [h, w], "counts": bytes}
Masks = TypeVar("Masks", np.ndarray, "torch.Tensor")


# --- masks: RLE and polygons ------------------------------------------------------------------------------


def encode(mask: np.ndarray) -> Rle:
    """pycocotools' RLE of one (H, W) mask, whatever its dtype and memory order (COCO runs are column-major)."""
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def to_json(rle: Rle | dict[str, Any]) -> dict[str, Any]:
    """An RLE as COCO files hold it: ``counts`` as an ASCII string rather than bytes, ``size`` as plain ints.
    One already in that form (read back from a file) comes out equal."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def from_runs(runs: list[int], height: int, width: int) -> Rle:
    """Compressed RLE from uncompressed column-major run lengths (background first)."""
    return mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)


def from_polygons(polygons: list[list[float]], height: int, width: int) -> Rle:
    """One RLE for a list of COCO polygons (``[x1, y1, x2, y2, ...]`` each), rasterised as pycocotools does."""
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def from_segmentation(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> Rle:
    """An annotation's ``segmentation`` (a polygon list, or compressed RLE with string counts) as an RLE."""
    if isinstance(segmentation, list):
        return from_polygons(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def decode(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """What pycocotools makes of an annotation's ``segmentation``, as a full-size boolean mask."""
    return mask_utils.decode(from_segmentation(segmentation, height, width)).astype(bool)


def rle_iou(a: Rle, b: Rle) -> float:
    """IoU of two RLEs of the same size, computed on the runs (no decoding): pycocotools' own measure.

    For non-empty masks it equals :func:`iou` of the decoded masks; it exists because decoding full frames
    to compare them costs more than converting them."""
    return float(mask_utils.iou([a], [b], [0])[0][0])


def rle_box(rle: Rle) -> tuple[float, float, float, float]:
    """The ``[x, y, w, h]`` box of an RLE's pixels, as pycocotools computes it for annotations."""
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return x, y, w, h


# --- boxes ------------------------------------------------------------------------------------------------


def xywh_to_xyxy(boxes: Any) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes (a list, an array or a tensor; (N, 4) or (4,)) to an (N, 4) float32 array
    of ``[x1, y1, x2, y2]``, the prompt format SAM takes."""
    import torch
    from torchvision.ops import box_convert

    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    return box_convert(b, "xywh", "xyxy").numpy()


def xyxy_to_xywh(boxes: Any, decimals: int = 2) -> list[list[float]]:
    """``[x1, y1, x2, y2]`` boxes ((N, 4) or (4,), any float type, a tensor on any device) to COCO ``[x, y, w, h]``
    lists rounded to ``decimals`` (what a COCO results file holds: 0.01 px is far below any box's error).

    Widths are taken in float64, so a box's numbers do not depend on the precision the detector ran in."""
    import torch
    from torchvision.ops import box_convert

    b = (boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else torch.as_tensor(np.asarray(boxes)))
    xywh = box_convert(b.to(torch.float64).reshape(-1, 4), "xyxy", "xywh")
    return [[round(v, decimals) for v in row] for row in xywh.tolist()]


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of two sets of ``[x1, y1, x2, y2]`` boxes (``torchvision.ops.box_iou``), as
    float64. Two boxes without area (a union of 0, where torchvision divides 0 by 0) score 1 when they are the
    same box and 0 otherwise."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    ta = torch.as_tensor(np.asarray(a, dtype=np.float64)).reshape(-1, 4)
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64)).reshape(-1, 4)
    ious = tv_box_iou(ta, tb)
    same = (ta[:, None, :] == tb[None, :, :]).all(dim=2).to(ious.dtype)
    return torch.where(torch.isnan(ious), same, ious).numpy()


# --- overlap ----------------------------------------------------------------------------------------------


def _flat(masks: Masks) -> Masks:
    """A stack of masks (N, ...) as (N, pixels); an empty stack too (where ``reshape(N, -1)`` fails)."""
    return masks.reshape(len(masks), math.prod(masks.shape[1:]))


def _ratio(num: Masks, den: Masks) -> Masks:
    """``num / den`` with 1 where ``den`` is 0 (then ``num`` is too: nothing predicted, nothing there)."""
    empty = den == 0
    return num / (den + empty) + empty


def batch_iou(pred: Masks, truth: Masks) -> Masks:
    """IoU per mask of two stacks of boolean masks (N, ...), numpy arrays or torch tensors alike; 1 where
    both masks are empty. Floats of the default precision (float64 for numpy, float32 for torch)."""
    pred, truth = _flat(pred), _flat(truth)
    return _ratio((pred & truth).sum(1), (pred | truth).sum(1))


def batch_dice(pred: Masks, truth: Masks) -> Masks:
    """Dice (2|P∩T| / (|P|+|T|)) per mask of two stacks of boolean masks, as :func:`batch_iou`."""
    pred, truth = _flat(pred), _flat(truth)
    return _ratio(2 * (pred & truth).sum(1), pred.sum(1) + truth.sum(1))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape; 1.0 when both are empty."""
    return float(batch_iou(np.asarray(pred, bool)[None], np.asarray(truth, bool)[None])[0])


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 1.0 when both are empty."""
    return float(batch_dice(np.asarray(pred, bool)[None], np.asarray(truth, bool)[None])[0])
