"""COCO average precision through pycocotools, the reference implementation, for boxes and masks.

Used as the cross-check beside ultralytics' own mAP (two implementations that should agree) and as the
mask AP of the SAM stage. Detections are COCO results: ``image_id``, ``category_id``, ``score`` and
``bbox`` (``[x, y, w, h]``) or ``segmentation`` (RLE).

Ground truth evaluated more than once (the SAM stage scores three prompting modes against one test split) is
loaded once with :func:`load_truth` and the ``COCO`` object passed to each :func:`coco_ap`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycocotools.coco import COCO


def load_truth(gt: str | Path | dict[str, Any]) -> COCO:
    """COCO ground truth (a file, or a document as a dict), indexed once, to evaluate against any number of times.

    A dict is copied: ``COCOeval`` normalises the annotations it evaluates in place (polygons become RLE, an
    ``ignore`` flag is set), idempotently, so a reused ``COCO`` object gives the same AP each time, but the
    caller's document must stay as it was.
    """
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(gt)
            coco.createIndex()
        else:
            coco = COCO(str(gt))
    return coco


def coco_ap(gt: str | Path | dict[str, Any] | COCO, detections: list[dict[str, Any]],
            iou_type: str = "bbox") -> dict[str, Any]:
    """mAP50-95, mAP50 and AP50 per category name; zeros (not an error) when there are no detections.

    ``gt``: a ``COCO`` object from :func:`load_truth` (used as is), or what it loads."""
    from pycocotools.cocoeval import COCOeval

    coco = load_truth(gt) if isinstance(gt, (str, Path, dict)) else gt
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    if not detections or not coco.getAnnIds():
        present = {a["category_id"] for a in coco.dataset["annotations"]}
        return {"map": 0.0, "map50": 0.0, "detections": len(detections),
                "ap50_per_class": {n: (0.0 if i in present else None) for i, n in names.items()}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou, recall, category, area, max_dets]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        p = p[p > -1]
        per_class[names[cat_id]] = float(p.mean()) if p.size else None  # no ground truth of this class
    return {"map": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0),
            "ap50_per_class": per_class, "detections": len(detections)}

