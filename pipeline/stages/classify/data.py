"""Images and labels for classification: the shared splits, the in-memory cache, transforms v2, MixUp, folds.

The labelled images are MVTec's ``test/`` images, split by ``splits.json`` exactly as the detection and
segmentation stages split them; MVTec's ``train/good`` joins train when asked (the long tail). Images are
decoded and resized once into a uint8 cache shared by every attempt, fold and epoch; augmentation runs on
those small tensors. Greyscale images are replicated to three channels for the ImageNet backbones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import Dataset as TorchDataset, default_collate
from torchvision.transforms import v2

from pipeline.convert.splits import SPLITS, load_splits
from pipeline.data.images import read_image, square
from pipeline.errors import ConfigError, DataError
from pipeline.io import read_json
from pipeline.stages.common import require
from pipeline.workspace import Dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as every torchvision weights enum uses


@dataclass(frozen=True)
class Example:
    """One labelled training example: an image and its class index in the classifier's class list.

    Not the data layer's ``Sample`` (an MVTec file with its split, label name and mask): the index depends
    on which classes this run learns, and the image is the converted dataset's copy.
    """

    rel: str  # id relative to the category root, e.g. test/broken_large/000.png
    path: Path
    label: int


@dataclass(frozen=True)
class Labelled:
    classes: list[str]
    splits: dict[str, list[Example]]  # train / val / test of splits.json (train without train/good)
    train_good: list[Example]
    provenance: str  # real | synthetic

    @property
    def pool(self) -> list[Example]:
        """Every labelled image: what K-fold cross-validation partitions."""
        return sorted((s for split in self.splits.values() for s in split), key=lambda s: s.rel)


def load_labelled(dataset: Dataset | Path, classes: Sequence[str] | None = None,
                  with_train_good: bool = True) -> Labelled:
    """The shared splits, read from the converted dataset: the labelled images are the very files detection and
    segmentation use. MVTec's ``train/good`` (only when ``with_train_good``) comes from the dataset when it was
    converted into its train split, else from the category folder the dataset records as its source."""
    dataset = Dataset.of(dataset)
    splits = load_splits(dataset)
    report = read_json(require(dataset.report, "conversion report", f"run `pipe convert {splits['category']}`"))
    names = list(classes) if classes else list(splits["classes"])
    index = {c: i for i, c in enumerate(names)}
    fix = f"run `pipe convert {splits['category']}` again"

    def example(split: str, rel: str, label: str) -> Example:
        return Example(rel, require(dataset.coco.image(split, rel), "converted image", fix), index[label])

    labels = splits["labels"]
    labelled = {s: [example(s, r, labels[r]) for r in splits["splits"][s] if labels[r] in index] for s in SPLITS}
    good = with_train_good and "good" in index
    converted = bool(report.get("params", {}).get("add_train_good"))  # then train/good is in the dataset's train
    return Labelled(names, labelled, _train_good(dataset, splits["train_good"], index["good"], converted, fix)
                    if good else [], splits.get("data", "unknown"))


def _train_good(dataset: Dataset, rels: Sequence[str], label: int, converted: bool, fix: str) -> list[Example]:
    if converted:
        return [Example(r, require(dataset.coco.image("train", r), "converted image", fix), label) for r in rels]
    source = dataset.recorded_source()
    if source is None or not source.is_dir():
        raise DataError(f"{source or dataset.report}: the category folder {dataset.root} was converted from is "
                        f"gone, and MVTec's train/good images are read from it; {fix}")
    return [Example(r, source / r, label) for r in rels]


class ImageCache:
    """Decoded RGB images resized to a square side, as uint8 (3, S, S) tensors, kept for the whole run."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._store: dict[tuple[Path, int], torch.Tensor] = {}
        self.hits = self.misses = 0

    def get(self, path: Path, size: int) -> torch.Tensor:
        key = (path, size)
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self.misses += 1
        img = square(read_image(path), size)
        tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if self.enabled:
            self._store[key] = tensor
        return tensor


def transform(kind: str, size: int) -> v2.Transform:
    """``eval``: normalise only; ``basic``: flips, small shifts, colour jitter; ``strong``: much more."""
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if kind == "eval":
        return v2.Compose(tail)
    if kind == "basic":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                           v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.95, 1.05)),
                           v2.ColorJitter(brightness=0.1, contrast=0.1), *tail])
    if kind == "strong":
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                           v2.RandomVerticalFlip(), v2.RandomRotation(15), v2.TrivialAugmentWide(),
                           v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), *tail,
                           v2.RandomErasing(p=0.25)])
    raise ValueError(f"unknown transform {kind!r}")


class Images(TorchDataset):
    def __init__(self, samples: Sequence[Example], cache: ImageCache, size: int, kind: str) -> None:
        self.samples, self.cache, self.size, self.tf = list(samples), cache, size, transform(kind, size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        return self.tf(self.cache.get(s.path, self.size)), s.label


class MixUpCollate:
    """``default_collate``, then torchvision's ``MixUp`` on the whole batch, as torchvision's classification reference
    mixes: the labels come out as soft rows (batch, classes). A class rather than a lambda so loader worker
    processes can pickle it.
    """

    def __init__(self, alpha: float, classes: int) -> None:
        self.mixup = v2.MixUp(alpha=alpha, num_classes=classes)

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixup(*default_collate(batch))


def train_collate(mixup: float, classes: int) -> Callable[[list[Any]], Any] | None:
    """The train loader's collate function: MixUp with Beta(``mixup``, ``mixup``) when positive, else the default."""
    return MixUpCollate(mixup, classes) if mixup > 0 else None


@dataclass(frozen=True)
class Fold:
    name: str  # "split" (the shared splits.json) or "fold-<i>"
    train: list[Example]
    val: list[Example]
    test: list[Example]


def shared_split(data: Labelled, add_train_good: bool) -> Fold:
    return Fold("split", data.splits["train"] + (data.train_good if add_train_good else []),
                data.splits["val"], data.splits["test"])


def stratified_folds(data: Labelled, k: int, seed: int, add_train_good: bool) -> list[Fold]:
    """K stratified folds over the labelled pool: fold i tests on part i, selects on part i+1, trains on the rest.

    Every labelled image is tested exactly once; model selection never sees the test part.
    """
    pool = data.pool
    labels = np.array([s.label for s in pool])
    counts = np.bincount(labels, minlength=len(data.classes))
    if k > counts.min():
        worst = data.classes[int(counts.argmin())]
        raise ConfigError(f"classify.folds: {k} stratified folds need at least {k} labelled images per class; "
                          f"{worst!r} has {int(counts.min())} (lower --folds)")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    parts = [test for _, test in skf.split(np.zeros(len(pool)), labels)]
    folds = []
    for i in range(k):
        val_i = (i + 1) % k
        train = [pool[j] for p, part in enumerate(parts) if p not in (i, val_i) for j in part]
        folds.append(Fold(f"fold-{i}", train + (data.train_good if add_train_good else []),
                          [pool[j] for j in parts[val_i]], [pool[j] for j in parts[i]]))
    return folds
