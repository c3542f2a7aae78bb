"""Writing the converted formats: ultralytics YOLO (boxes and polygons) and COCO instances.

Everything here writes into the temporary folder of ``pipeline.io.atomic_dir``, which moves into place
only once complete, so single files are written plainly rather than each through its own rename.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import write_json, write_text
from pipeline.workspace import CocoFormat, YoloFormat, flat_name


def link(src: str | Path, dst: str | Path, mode: str = "hardlink") -> str:
    """Place ``src`` at ``dst`` (in an existing folder) the cheapest way ``mode`` allows; return what was done.

    A hard link needs no new inode (50x faster than a symlink on a busy ext4 disk) and survives moving or
    copying the dataset; it falls back to a symlink across filesystems or without permission, then to a copy.
    ``no-symlink`` is for files that must stand on their own, e.g. ones carried to another machine.
    """
    order = {"hardlink": ["hardlink", "symlink", "copy"], "symlink": ["symlink", "hardlink", "copy"],
             "no-symlink": ["hardlink", "copy"], "copy": ["copy"]}[mode]
    error: OSError | None = None
    for how in order:
        try:
            if how == "symlink":
                os.symlink(os.path.abspath(src), dst)
            elif how == "hardlink":
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)
            return how
        except OSError as exc:
            error = exc
    assert error is not None
    # the last attempt's cause (a full disk, a read-only folder), with the file it concerns
    raise OSError(error.errno, error.strerror or str(error), str(dst)) from error


def yolo_labels(instances: list[dict[str, Any]], class_ids: dict[str, int], kind: str) -> str:
    """One line per instance: ``cls cx cy w h`` (det) or ``cls x1 y1 x2 y2 ...`` (seg), normalised."""
    lines = []
    for inst in instances:
        cls = class_ids[inst["class"]]
        if kind == "det":
            values = inst["yolo_box"]
        else:
            values = [v for point in inst["yolo_polygon"] for v in point]
        lines.append(" ".join([str(cls), *(f"{v:.6f}" for v in values)]))
    return "".join(line + "\n" for line in lines)


def yolo_data_yaml(root: Path, defects: tuple[str, ...]) -> str:
    """The ``data.yaml`` that ``yolo detect train data=...`` accepts as is (absolute path, named classes)."""
    data = {"path": str(Path(root).resolve()), "train": "images/train", "val": "images/val", "test": "images/test",
            "nc": len(defects), "names": dict(enumerate(defects))}
    return yaml.safe_dump(data, sort_keys=False)


def coco_document(category: str, defects: tuple[str, ...], images: list[dict[str, Any]],
                  annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": f"MVTec AD {category}, converted by pipe", "version": "1.0"},
        "licenses": [{"id": 1, "name": "CC BY-NC-SA 4.0", "url": "https://creativecommons.org/licenses/by-nc-sa/4.0/"}],
        "categories": [{"id": i + 1, "name": d, "supercategory": category} for i, d in enumerate(defects)],
        "images": images,
        "annotations": annotations,
    }


def write_yolo(root: Path, final_root: Path, split_members: dict[str, list[str]], sources: dict[str, Path],
               instances: dict[str, list[dict[str, Any]]], defects: tuple[str, ...], kind: str, link_mode: str) -> None:
    class_ids = {d: i for i, d in enumerate(defects)}
    for split, rels in split_members.items():
        images, labels = YoloFormat(root).images(split), YoloFormat(root).labels(split)
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for rel in rels:  # plain string paths: pathlib's parsing cost more than the writes on tmpfs
            name = flat_name(rel)
            link(sources[rel], os.path.join(images, name), link_mode)
            with open(os.path.join(labels, os.path.splitext(name)[0] + ".txt"), "w", encoding="utf-8") as fh:
                fh.write(yolo_labels(instances[rel], class_ids, kind))
    write_text(YoloFormat(root).data_yaml, yolo_data_yaml(final_root, defects))


def write_coco(root: Path, category: str, split_members: dict[str, list[str]], sources: dict[str, Path],
               sizes: dict[str, tuple[int, int]], instances: dict[str, list[dict[str, Any]]],
               defects: tuple[str, ...], link_mode: str) -> None:
    cat_ids = {d: i + 1 for i, d in enumerate(defects)}
    for split, rels in split_members.items():
        images, annotations = [], []
        folder = CocoFormat(root).images(split)
        folder.mkdir(parents=True, exist_ok=True)
        for image_id, rel in enumerate(rels, start=1):
            name = flat_name(rel)
            link(sources[rel], os.path.join(folder, name), link_mode)
            width, height = sizes[rel]
            images.append({"id": image_id, "file_name": name, "width": width, "height": height, "source": rel})
            for inst in instances[rel]:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[inst["class"]],
                    "bbox": inst["bbox"], "area": inst["area"], "segmentation": inst["segmentation"], "iscrowd": 0,
                })
        write_json(CocoFormat(root).annotations(split), coco_document(category, defects, images, annotations),
                   indent=None)
