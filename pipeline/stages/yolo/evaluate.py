"""Scoring a YOLO-World model on the held-out test split: ultralytics' mAP, COCO detections, overlays.

The same function scores the zero-shot baseline and the fine-tuned model, so the two numbers differ only
by the weights. mAP comes from ultralytics' validator (what its trainer optimises) and, independently,
from pycocotools on the detections file the SAM stage reads; the metrics carry both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.coco import xyxy_to_xywh
from pipeline.data.images import read_image
from pipeline.io import read_json
from pipeline.metrics.coco import coco_ap
from pipeline.stages.yolo import offline
from pipeline.viz import PALETTE, TRUTH, draw_box, to_bgr


def _ultra_device(device: str) -> str:
    return device.replace("cuda:", "") if device.startswith("cuda") else device


def validate(model: torch.nn.Module, data_yaml: Path, names: list[str], imgsz: int, batch: int, conf: float,
             iou: float, device: str, split: str = "test") -> dict[str, Any]:
    """mAP50, mAP50-95, precision, recall, AP50 per class and the PR curve on ``split`` (default: test)."""
    offline.no_downloads()  # its dataset check would fetch a font
    from ultralytics.models.yolo.detect import DetectionValidator

    with tempfile.TemporaryDirectory(prefix="pipe-val-") as tmp:  # ultralytics insists on a save_dir
        validator = DetectionValidator(save_dir=Path(tmp), args=dict(
            data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, conf=conf, iou=iou,
            device=_ultra_device(device), plots=False, verbose=False, save_json=False, workers=0))
        validator(model=model)
    box = validator.metrics.box
    ap50 = dict.fromkeys(names)  # None: no test instance of that class
    for k, cls in enumerate(validator.metrics.ap_class_index):
        ap50[names[int(cls)]] = round(float(box.ap50[k]), 5)
    recall = np.asarray(box.px)
    precision = np.asarray(box.prec_values)
    mean_pr = precision.mean(0) if precision.size else np.zeros_like(recall)
    idx = np.linspace(0, len(recall) - 1, 101).astype(int)
    return {
        "map50": round(float(box.map50), 5), "map50_95": round(float(box.map), 5),
        "precision": round(float(box.mp), 5), "recall": round(float(box.mr), 5), "ap50_per_class": ap50,
        "pr_curve": {"recall": np.round(recall[idx], 4).tolist(), "precision": np.round(mean_pr[idx], 4).tolist()},
        "images": len(validator.dataloader.dataset), "instances": int(sum(validator.metrics.nt_per_class)),
    }


def detection_predictor(imgsz: int, conf: float, iou: float, device: str, max_det: int = 100) -> Any:
    """ultralytics' ``DetectionPredictor`` as the evaluation runs it (nothing saved, quiet), for any model."""
    offline.no_downloads()
    from ultralytics.models.yolo.detect import DetectionPredictor

    return DetectionPredictor(overrides=dict(conf=conf, iou=iou, imgsz=imgsz, device=_ultra_device(device),
                                             verbose=False, save=False, project=tempfile.gettempdir(),
                                             max_det=max_det))


def boxes_of(result: Any) -> list[dict[str, Any]]:
    """One ultralytics result as the detections pipe writes: COCO ``xywh`` pixels (0.01 px), class index, score
    (5 digits). The evaluation's detections file and ``pipe predict`` both come from here, so SAM is prompted
    with the same numbers either way."""
    b = result.boxes
    return [{"bbox": xywh, "class": int(c), "score": round(float(s), 5)}
            for xywh, c, s in zip(xyxy_to_xywh(b.xyxy), b.cls.cpu().numpy(), b.conf.cpu().numpy())]


def predict(model: torch.nn.Module, images: list[Path], imgsz: int, conf: float, iou: float,
            device: str) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Boxes per image name (``xywh`` pixels, class index, score) and the mean inference latency in ms."""
    predictor = detection_predictor(imgsz, conf, iou, device)
    results = predictor(source=[str(p) for p in images], model=model, stream=False) if images else []
    boxes = {Path(path).name: boxes_of(r) for path, r in zip(images, results)}
    latency = float(np.mean([r.speed["inference"] for r in results])) if results else 0.0
    return boxes, latency


def coco_detections(boxes: dict[str, list[dict[str, Any]]], coco_gt: dict[str, Any],
                    names: list[str]) -> list[dict[str, Any]]:
    """COCO results keyed by the converted COCO file's image and category ids (what pycocotools and SAM read)."""
    image_ids = {im["file_name"]: im["id"] for im in coco_gt["images"]}
    cat_ids = {c["name"]: c["id"] for c in coco_gt["categories"]}
    out = []
    for name, dets in sorted(boxes.items()):
        for d in dets:
            out.append({"image_id": image_ids[name], "category_id": cat_ids[names[d["class"]]],
                        "bbox": d["bbox"], "score": d["score"]})
    return out


def score_detections(boxes: dict[str, list[dict[str, Any]]], coco_gt_path: Path,
                     names: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The COCO detections and their pycocotools box AP against the converted test annotations."""
    gt = read_json(coco_gt_path)
    dets = coco_detections(boxes, gt, names)
    return dets, coco_ap(gt, dets, "bbox")


def write_overlays(out: Path, boxes: dict[str, list[dict[str, Any]]], images: dict[str, Path],
                   truth: dict[str, list[dict[str, Any]]], names: list[str], conf: float, limit: int) -> list[Path]:
    """True boxes in green, predictions at or above ``conf`` in their class colour with the score."""
    written = []
    defective = [n for n in sorted(images) if truth.get(n)]
    chosen = (defective + [n for n in sorted(images) if n not in defective])[:limit]
    for name in chosen:
        img = to_bgr(read_image(images[name]))
        for t in truth.get(name, []):
            draw_box(img, t["bbox"], TRUTH)
        for d in boxes.get(name, []):
            if d["score"] >= conf:
                draw_box(img, d["bbox"], PALETTE[d["class"] % len(PALETTE)], f"{names[d['class']]} {d['score']:.2f}")
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        written.append(path)
    return written


def truth_boxes(coco_gt_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Ground-truth boxes per image file name, from the converted COCO annotations."""
    gt = read_json(coco_gt_path)
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        out.setdefault(names[ann["image_id"]], []).append({"bbox": ann["bbox"], "category_id": ann["category_id"]})
    return out
