"""SAM's view of the converted COCO instances: images, masks and boxes per split, in SAM's input frame.

Each image is resized so its long side matches the encoder (segment-anything's ``ResizeLongestSide``) and
padded by ``Sam.preprocess``. Targets are the instance masks in the decoder's low-resolution frame (a
quarter of the padded input), which is where the loss is computed. Augmentation is by flip *views*: a
view is encoded once and cached, so augmenting costs nothing per epoch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.coco import decode, xywh_to_xyxy
from pipeline.data.images import read_image
from pipeline.errors import DataError
from pipeline.io import read_json
from pipeline.stages.common import require
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.predictor import Predictor, to_input_boxes, to_input_image
from pipeline.workspace import Dataset

VIEWS = ((False, False), (True, False), (False, True), (True, True))  # (h-flip, v-flip) per view index


@dataclass
class Item:
    name: str  # COCO file_name
    image_id: int
    path: Path
    height: int
    width: int
    masks: np.ndarray  # (N, H, W) bool, one per instance
    boxes: np.ndarray  # (N, 4) xyxy in pixels
    categories: list[int]  # COCO category id per instance
    digest: str  # sha256 of the image file: the cache key's image part
    source: str = ""  # the MVTec image it was converted from (``test/crack/000.png``), as the COCO file records it
    cache: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)  # view -> prepared tensors

    @property
    def label(self) -> str:
        """The image's class as ``pipe convert`` named it (``test_broken_large_000.png`` -> ``broken_large``)."""
        return self.name.split("_", 1)[1].rsplit("_", 1)[0]


def _check(ann: dict[str, Any], image: dict[str, Any], path: Path) -> None:
    x, y, w, h = ann["bbox"]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > image["width"] or y + h > image["height"]:
        raise DataError(f"{path}: annotation {ann['id']} box {ann['bbox']} lies outside its image {image['id']} "
                        f"({image['width']}x{image['height']}); re-run `pipe convert`")


def load_split(dataset: Dataset | Path, split: str) -> tuple[list[Item], dict[int, str]]:
    """Items of ``split`` (every image, with or without instances) and the COCO category names by id."""
    coco = Dataset.of(dataset).coco
    fix = f"run `pipe convert {Dataset.of(dataset).root.name}` first"
    ann_path = require(coco.annotations(split), "COCO annotations", fix)
    doc = read_json(ann_path)
    by_image: dict[int, list[dict[str, Any]]] = {}
    images = {im["id"]: im for im in doc["images"]}
    for ann in doc["annotations"]:
        if ann["image_id"] not in images:
            raise DataError(f"{ann_path}: annotation {ann['id']} refers to missing image {ann['image_id']}")
        _check(ann, images[ann["image_id"]], ann_path)
        by_image.setdefault(ann["image_id"], []).append(ann)
    items = []
    for image_id, im in sorted(images.items()):
        path = require(coco.images(split) / im["file_name"], "COCO image", fix)
        anns = sorted(by_image.get(image_id, []), key=lambda a: a["id"])
        h, w = im["height"], im["width"]
        masks = np.stack([decode(a["segmentation"], h, w) for a in anns]) if anns else np.zeros((0, h, w), bool)
        boxes = xywh_to_xyxy([a["bbox"] for a in anns])
        items.append(Item(im["file_name"], image_id, path, h, w, masks, boxes, [a["category_id"] for a in anns],
                          hashlib.sha256(path.read_bytes()).hexdigest(), im.get("source") or ""))
    return items, {c["id"]: c["name"] for c in doc["categories"]}


def flip(item: Item, view: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (RGB), masks and boxes of ``item`` under flip view ``view``."""
    img = read_image(item.path)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    masks, boxes = item.masks, item.boxes.copy()
    h_flip, v_flip = VIEWS[view]
    if h_flip:
        img, masks = img[:, ::-1], masks[:, :, ::-1]
        boxes[:, [0, 2]] = item.width - boxes[:, [2, 0]]
    if v_flip:
        img, masks = img[::-1], masks[:, ::-1]
        boxes[:, [1, 3]] = item.height - boxes[:, [3, 1]]
    return np.ascontiguousarray(img), np.ascontiguousarray(masks), boxes


def prepare(item: Item, view: int, img_size: int, with_image: bool = False) -> dict[str, Any]:
    """Boxes in input pixels, low-res targets (N, 1, S/4, S/4) and, if asked, the input image (3, h, w).

    Everything but the image is kept on the item: the image is needed only when it is encoded. Image and boxes
    go through the predictor's transforms, so training sees what prediction sees.
    """
    if view in item.cache and not with_image:
        return item.cache[view]
    img, masks, boxes = flip(item, view)
    image = to_input_image(img, img_size)
    input_size = tuple(image.shape[-2:])
    if view not in item.cache:
        target = torch.as_tensor(masks, dtype=torch.float32)[:, None]
        if len(target):
            target = F.interpolate(target, size=input_size, mode="bilinear", align_corners=False)
            target = F.pad(target, (0, img_size - input_size[1], 0, img_size - input_size[0]))
            target = (F.interpolate(target, size=(img_size // 4, img_size // 4), mode="area") > 0.5).float()
        else:
            target = torch.zeros((0, 1, img_size // 4, img_size // 4))
        item.cache[view] = {
            "input_size": input_size, "scale": input_size[0] / item.height, "masks": masks, "target": target,
            "boxes": to_input_boxes(boxes, (item.height, item.width), img_size)}
    return {**item.cache[view], "image": image} if with_image else item.cache[view]


def embedding(predictor: Predictor, cache: EmbeddingCache, item: Item, view: int) -> torch.Tensor:
    """The embedding (1, C, E, E) of ``item`` under flip ``view``: from the cache, else encoded now (and cached).

    The one way an item's embedding reaches the predictor, in training and evaluation alike."""
    return cache.get(item.digest, view, lambda: predictor.embed(prepare(item, view, predictor.img_size, True)["image"]),
                     str(predictor.device))
