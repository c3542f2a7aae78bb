"""The stage's view of the converted ``yolo-det`` dataset: image lists, prompt-named classes, embeddings.

The converted dataset stays as ``pipe convert`` wrote it. The stage writes its own ``data.yaml`` whose class
names are the configured prompts joined by ``/`` (ultralytics' synonym separator: training samples one
phrase per class per image) and whose splits are image lists, so ultralytics keeps its text-embedding
cache in the stage's folder and not in the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pipeline.errors import DataError
from pipeline.io import write_text
from pipeline.stages.common import require
from pipeline.stages.yolo.prompts import TextEmbeddings
from pipeline.workspace import Dataset, YoloFiles

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DetData:
    data_yaml: Path
    names: list[str]  # defect classes, in class-id order
    images: dict[str, list[Path]]  # split -> image paths in the converted dataset
    coco_test: Path


def _check_labels(label_dir: Path, nc: int) -> None:
    for path in sorted(label_dir.glob("*.txt")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5 or not parts[0].isdigit() or int(parts[0]) >= nc:
                raise DataError(f"{path}:{n}: expected 'class cx cy w h' with class < {nc}, got {line!r}; "
                                f"re-run `pipe convert`")


def prepare(dataset: Dataset | Path, out: Path, prompts: dict[str, list[str]], embeddings: TextEmbeddings) -> DetData:
    """Check the converted dataset against the configured classes and write the stage's data files."""
    dataset = Dataset.of(dataset)
    category = dataset.root.name
    fix = f"run `pipe convert {category}` first"
    det = dataset.yolo_det
    converted = yaml.safe_load(require(det.data_yaml, "converted YOLO dataset", fix).read_text(encoding="utf-8"))
    names = [str(converted["names"][i]) for i in sorted(converted["names"])]
    if names != list(prompts):
        raise DataError(f"{det.data_yaml}: classes {names} differ from the configured {list(prompts)}; "
                        f"re-run `pipe convert {category}`")
    coco_test = require(dataset.coco.annotations("test"), "COCO test annotations", fix)
    files = YoloFiles(Path(out))
    data = files.data
    images: dict[str, list[Path]] = {}
    for split in SPLITS:
        folder = require(det.images(split), f"{split} images", fix)
        images[split] = sorted(p.absolute() for p in folder.iterdir() if p.suffix.lower() == ".png")
        if not images[split]:
            raise DataError(f"{folder}: no images in the {split} split; re-run `pipe convert {category}` with "
                            f"more data or other convert.split ratios")
        _check_labels(det.labels(split), len(names))
        write_text(files.image_list(split), "".join(f"{p}\n" for p in images[split]))
    doc = {"path": str(data.absolute()), **{s: files.image_list(s).name for s in SPLITS}, "nc": len(names),
           "names": {i: "/".join(prompts[n]) for i, n in enumerate(names)}}
    write_text(files.data_yaml, yaml.safe_dump(doc, sort_keys=False))
    embeddings.save_ultralytics_cache(data)
    torch.save({"names": names, "feats": embeddings.classes(prompts)}, files.class_embeddings)
    return DetData(files.data_yaml, names, images, coco_test)
