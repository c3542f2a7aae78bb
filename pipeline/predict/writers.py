"""What ``pipe predict`` writes about each image: a JSON line, COCO results, an overlay, an MVTec-style mask, the
anomaly map.

A *record* is the loop's dict for one image (``source``, ``width``, ``height``, ``channels``, ``boxes``,
``masks``, ``label``, ``probs``, ``classifier``, ``anomaly``, ``timing_ms``); any model's part may be absent or
None when that model did not run. Every file is written through a temporary sibling and a rename, so an
interrupted run leaves no half-written image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.coco import decode, to_json
from pipeline.io import atomic_path
from pipeline.viz import PALETTE, draw_box, thickness, to_bgr

# --- predictions.jsonl ------------------------------------------------------------------------------------

# Decimals kept per key: 0.01 px is far below any box's error, 5 decimals below any score's meaning. Other
# floats (anomaly scores and thresholds, whose scale depends on the model) keep 6 significant digits.
DECIMALS = {"xyxy": 2, "bbox": 2, "timing_ms": 2, "score": 5, "probs": 5}


def _clean(value: Any, digits: int | None, rules: Mapping[str, int]) -> Any:
    """``value`` as plain JSON types, floats rounded; a non-finite float becomes null (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        # inside "anomaly", "score" is a distance, not a probability: the key rules stop there
        return {str(k): _clean(v, rules.get(k, digits), {} if k == "anomaly" else rules) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, digits, rules) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, digits) if digits is not None else float(f"{value:.6g}")
    if isinstance(value, bytes):  # an RLE's counts straight from pycocotools
        return value.decode("ascii")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def jsonl_line(record: Mapping[str, Any]) -> str:
    """One image's record as one line of compact JSON, ending in a newline.

    ASCII only, so no character inside a string (U+2028 in a file name) can split the line for a reader."""
    return json.dumps(_clean(dict(record), None, DECIMALS), separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False) + "\n"


# --- COCO -------------------------------------------------------------------------------------------------


def _xywh(box: Mapping[str, Any]) -> list[float]:
    """A box's COCO ``[x, y, w, h]``: its own ``bbox``, else from ``xyxy``."""
    if box.get("bbox") is not None:
        return [round(float(v), 2) for v in box["bbox"]]
    x1, y1, x2, y2 = (float(v) for v in box["xyxy"])
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def _masks_by_box(record: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """The record's masks keyed by the box they were prompted with (their position when they do not say)."""
    return {int(m.get("box", i)): m for i, m in enumerate(record.get("masks") or [])}


def coco_results(records: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                 category_ids: Mapping[str, int]) -> list[dict[str, Any]]:
    """Detections in COCO's results format, one entry per box (detectron2's ``coco_instances_results``):
    ``image_id``, ``category_id``, ``bbox`` (xywh), ``score``, and ``segmentation`` (the box's mask as RLE) when
    the segmenter ran. ``COCO.loadRes`` reads it for both ``bbox`` and ``segm`` evaluation against any ground
    truth holding these image ids; the score is the detector's, which ranks both."""
    if len(records) != len(image_ids):
        raise ValueError(f"{len(records)} records but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for record, image_id in zip(records, image_ids):
        masks = _masks_by_box(record)
        for i, box in enumerate(record.get("boxes") or []):
            entry: dict[str, Any] = {"image_id": int(image_id), "category_id": int(category_ids[box["class"]]),
                                     "bbox": _xywh(box), "score": round(float(box["score"]), 5)}
            if i in masks:
                entry["segmentation"] = to_json(masks[i]["rle"])
            results.append(entry)
    return results


def coco_images(records: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                categories: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``images`` (id, file name = source path, size) and ``categories`` of a COCO file for these images:
    with annotations added (labelled by hand, say), a ground truth the results can be scored against."""
    if len(records) != len(image_ids):
        raise ValueError(f"{len(records)} records but {len(image_ids)} image ids")
    images = [{"id": int(i), "file_name": str(r["source"]), "width": int(r["width"]), "height": int(r["height"])}
              for r, i in zip(records, image_ids)]
    return {"images": images, "categories": [dict(c) for c in categories]}


# --- masks ------------------------------------------------------------------------------------------------


def union_mask(record: Mapping[str, Any]) -> np.ndarray:
    """(H, W) bool: every mask of the record together (all False when the segmenter found nothing or did not
    run): the image's defect area, as one MVTec ground-truth mask holds all of an image's defects."""
    height, width = int(record["height"]), int(record["width"])
    union = np.zeros((height, width), dtype=bool)
    for mask in record.get("masks") or []:
        union |= decode(to_json(mask["rle"]), height, width)
    return union


def mask_name(name: str) -> str:
    """MVTec's ground-truth name for an image's mask: ``000.png`` -> ``000_mask.png`` (always a PNG)."""
    return f"{Path(name).stem}_mask.png"


def _write_png(path: Path, image: np.ndarray) -> Path:
    """A PNG written atomically (encoded in memory: the temporary file's name has no suffix for OpenCV)."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {image.dtype} array of shape {image.shape} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """``mask`` (H, W; bool or numbers, non-zero = defect) as MVTec stores ground truth: a single-channel 8-bit
    PNG of 0 and 255 at the image's size, so MVTec's evaluation scripts read it unchanged."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: a mask must be (H, W), not {mask.shape}")
    return _write_png(path, np.where(mask > 0, np.uint8(255), np.uint8(0)))


# --- anomaly maps -----------------------------------------------------------------------------------------


def map_name(name: str) -> str:
    """The file of an image's anomaly map: ``000.png`` -> ``000.npy``."""
    return f"{Path(name).stem}.npy"


def write_map(path: Path, anomaly_map: np.ndarray) -> Path:
    """The anomaly map (H, W) at the image's size as float16 ``.npy`` (``np.load`` reads it): half the bytes of
    float32, and ample to redraw or re-threshold a heat map. float16 tops out at 65504; a larger value (no
    PatchCore distance comes near) is stored as inf."""
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2:
        raise ValueError(f"{path}: an anomaly map must be (H, W), not {anomaly_map.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, anomaly_map.astype(np.float16))
    return Path(path)


# --- overlays ---------------------------------------------------------------------------------------------


def _colour(class_id: Any) -> tuple[int, int, int]:
    return PALETTE[int(class_id or 0) % len(PALETTE)]


def _fill(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """A mask drawn in place: half-transparent fill, so the defect stays visible, and its outline."""
    if not mask.any():
        return
    canvas[mask] = (canvas[mask] * 0.5 + np.array(colour) * 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, max(1, thickness(canvas) // 2))


def _caption(record: Mapping[str, Any]) -> str:
    """The image's verdicts for the top line: the classifier's label and probability, the anomaly score."""
    parts = []
    if record.get("label") is not None:
        prob = (record.get("probs") or {}).get(record["label"])
        parts.append(f"{record['label']} {prob:.2f}" if prob is not None else str(record["label"]))
    anomaly = record.get("anomaly")
    if anomaly and anomaly.get("score") is not None:
        verdict = "anomalous" if anomaly.get("anomalous") else "normal"
        threshold = anomaly.get("threshold")
        limit = f" (threshold {threshold:.3g})" if threshold is not None else ""
        parts.append(f"{verdict} {anomaly['score']:.3g}{limit}")
    return " | ".join(parts)


def _write_caption(canvas: np.ndarray, text: str) -> None:
    """White text on a dark band across the top, readable on any image."""
    if not text:
        return
    t = thickness(canvas)
    scale = 0.45 * t
    (_, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, t)
    band = min(canvas.shape[0], h + base + 6)
    canvas[:band] = (canvas[:band] * 0.4).astype(np.uint8)
    cv2.putText(canvas, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), t, cv2.LINE_AA)


def _heat(image: np.ndarray, anomaly_map: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """The anomaly map in JET over the image. Scaled so the record's pixel threshold sits mid-scale (above it:
    yellow to red, below: blue to green); without a threshold, by the map's maximum."""
    height, width = image.shape[:2]
    heat = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    threshold = (record.get("anomaly") or {}).get("pixel_threshold")
    top = 2.0 * float(threshold) if threshold is not None and threshold > 0 else float(heat.max())
    scaled = np.clip(heat / (top if top > 0 else 1.0) * 255, 0, 255).astype(np.uint8)
    panel = cv2.addWeighted(image, 0.5, cv2.applyColorMap(scaled, cv2.COLORMAP_JET), 0.5, 0)
    if threshold is not None:  # in float64, as the record's region (``AnomalyModel.region``) and the stage compare
        region = (heat.astype(np.float64) >= float(threshold)).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(panel, contours, -1, (255, 255, 255), max(1, thickness(panel) // 2))
    return panel


def write_overlay(path: Path, image: np.ndarray, record: Mapping[str, Any],
                  anomaly_map: np.ndarray | None = None) -> Path:
    """A PNG of what the models found: masks filled half-transparently, boxes with "class score" in their
    class's colour, the image's label and anomaly verdict on top; with ``anomaly_map`` (H, W), the heat map
    beside the image (twice the width)."""
    original = to_bgr(image)
    canvas = original.copy()
    height, width = canvas.shape[:2]
    boxes = record.get("boxes") or []
    for i, mask in _masks_by_box(record).items():
        colour = _colour(boxes[i].get("class_id") if i < len(boxes) else 0)
        _fill(canvas, decode(to_json(mask["rle"]), height, width), colour)
    for box in boxes:
        draw_box(canvas, _xywh(box), _colour(box.get("class_id")), f"{box.get('class', '?')} {box['score']:.2f}")
    if anomaly_map is not None:
        canvas = np.hstack([canvas, _heat(original, anomaly_map, record)])
    _write_caption(canvas, _caption(record))
    return _write_png(path, canvas)
