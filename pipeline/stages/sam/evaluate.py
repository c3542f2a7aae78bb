"""Scoring SAM on the test split, at full image resolution, for each way of prompting it.

- ``gt_boxes``: every true instance prompted with its exact box (SAM's segmentation quality alone).
- ``detector_boxes``: the YOLO stage's boxes (score >= ``detector_conf``) as prompts, the end-to-end
  result: a missed defect scores IoU 0 for its instance; a spurious box adds false mask to its image.

Per instance: IoU and Dice of its mask with the best-overlapping prediction. Per image: the union of the
predicted masks against the union of the true ones (an image with neither scores 1), summarised in ``per_image``
and kept for each image in ``per_image_scores`` (keyed by the MVTec path the COCO image records as ``source``,
else its file name), so the report can set them beside the good-only detector's on the same images. Mask AP
comes from pycocotools on the predicted masks as COCO results, against ground truth the caller loaded once.

Masks come from the one ``Predictor`` of the run, each image's (cached) embedding set once and prompted with
all its boxes: the path ``pipe predict`` takes too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from pycocotools.coco import COCO

from pipeline.coco import dice, encode, iou, to_json, xywh_to_xyxy
from pipeline.data.images import read_image
from pipeline.io import read_json
from pipeline.metrics.coco import coco_ap
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import Item, embedding
from pipeline.stages.sam.predictor import Predictor
from pipeline.viz import PALETTE, TRUTH, thickness, to_bgr


def segment(predictor: Predictor, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution masks (N, H, W) and predicted IoUs (N,) for boxes in pixels of the predictor's current image."""
    masks, scores, _ = predictor.predict(boxes=boxes_xyxy)
    return masks[:, 0].cpu().numpy(), scores[:, 0].cpu().numpy()


class Scored(NamedTuple):
    metrics: dict[str, Any]
    masks: dict[str, Any]  # image name -> (masks (N, H, W) bool, COCO category ids)
    results: list[dict[str, Any]]  # the masks as COCO results (RLE, category, score): what the stage writes


def _summary(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 5) if values else None


def score(predictor: Predictor, items: list[Item], cache: EmbeddingCache, names: dict[int, str], gt: COCO,
          prompts: dict[int, list[dict[str, Any]]] | None = None) -> Scored:
    """Metrics for one prompting mode (ground-truth boxes when ``prompts`` is None), the masks per image, and the
    masks as COCO results (the detector's score, else SAM's predicted IoU).

    ``gt`` is the test split's COCO ground truth (``metrics.coco.load_truth``), shared by every mode."""
    inst_iou, inst_dice = defaultdict(list), defaultdict(list)
    img_iou, img_dice = defaultdict(list), defaultdict(list)
    results, masks_out, by_image = [], {}, {}
    missed = 0
    for item in items:
        if prompts is None:
            boxes, cats, scores = item.boxes, item.categories, None
        else:
            dets = prompts.get(item.image_id, [])
            boxes = xywh_to_xyxy([d["bbox"] for d in dets])
            cats, scores = [d["category_id"] for d in dets], [d["score"] for d in dets]
        if prompts is None and not len(boxes):
            continue  # nothing to prompt: ground-truth prompting only scores images with defects
        predictor.set_embedding(embedding(predictor, cache, item, 0), (item.height, item.width))
        masks, iou_pred = segment(predictor, boxes)
        masks_out[item.name] = (masks, cats)
        for k, truth in enumerate(item.masks):
            cls = names[item.categories[k]]
            if prompts is None:
                pred = masks[k]
            else:
                overlaps = [iou(m, truth) for m in masks]
                pred = masks[int(np.argmax(overlaps))] if overlaps else np.zeros_like(truth)
                missed += not overlaps or max(overlaps) == 0
            inst_iou[cls].append(iou(pred, truth))
            inst_dice[cls].append(dice(pred, truth))
        union_pred = masks.any(0) if len(masks) else np.zeros((item.height, item.width), bool)
        union_true = item.masks.any(0) if len(item.masks) else np.zeros_like(union_pred)
        scored = {"iou": iou(union_pred, union_true), "dice": dice(union_pred, union_true)}
        img_iou[item.label].append(scored["iou"])
        img_dice[item.label].append(scored["dice"])
        by_image[item.source or item.name] = {k: round(v, 6) for k, v in scored.items()}
        for k, m in enumerate(masks):
            results.append({"image_id": item.image_id, "category_id": int(cats[k]), "segmentation": to_json(encode(m)),
                            "score": float(scores[k] if scores is not None else iou_pred[k])})
    all_iou = [v for vs in inst_iou.values() for v in vs]
    all_dice = [v for vs in inst_dice.values() for v in vs]
    metrics = {
        "instances": len(all_iou), "mean_iou": _summary(all_iou), "mean_dice": _summary(all_dice),
        "per_class": {c: {"iou": _summary(inst_iou[c]), "dice": _summary(inst_dice[c]), "instances": len(inst_iou[c])}
                      for c in sorted(names.values())},
        "per_image": {"images": sum(len(v) for v in img_iou.values()),
                      "mean_iou": _summary([v for vs in img_iou.values() for v in vs]),
                      "mean_dice": _summary([v for vs in img_dice.values() for v in vs]),
                      "per_label": {k: {"iou": _summary(img_iou[k]), "dice": _summary(img_dice[k]),
                                        "images": len(img_iou[k])} for k in sorted(img_iou)}},
        "per_image_scores": by_image,
        "mask_ap": coco_ap(gt, results, "segm"),
    }
    if prompts is not None:
        metrics["missed_instances"] = int(missed)
        metrics["boxes"] = sum(len(v) for v in prompts.values())
    return Scored(metrics, masks_out, results)


def detector_prompts(path: Path, conf: float) -> dict[int, list[dict[str, Any]]]:
    """The YOLO stage's test detections at or above ``conf``, per COCO image id."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in read_json(path):
        if d["score"] >= conf:
            out[d["image_id"]].append(d)
    return dict(out)


def write_overlays(out: Path, items: list[Item], masks: dict[str, Any], names: dict[int, str], limit: int) -> list[Path]:
    """True outlines in green, predicted masks filled in their class colour."""
    written = []
    order = list(names)
    for item in [it for it in items if it.name in masks][:limit]:
        img = to_bgr(read_image(item.path))
        fill = img.copy()
        pred, cats = masks[item.name]
        for m, c in zip(pred, cats):
            fill[m] = PALETTE[order.index(c) % len(PALETTE)]
        img = cv2.addWeighted(fill, 0.45, img, 0.55, 0)
        for truth in item.masks:
            contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(img, contours, -1, TRUTH, thickness(img))
        path = out / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        written.append(path)
    return written
