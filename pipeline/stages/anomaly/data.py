"""The images a good-only detector learns from and is measured on, split so no threshold sees a test image.

PatchCore's memory bank is built from MVTec's ``train/good`` only, less a seeded hold-out. Thresholds are
fitted on the hold-out (good) and the shared split's ``val`` images (good and defective), never on test
images. Two evaluations follow: on MVTec's whole ``test/`` folder (as published tables report), and on the
shared split's ``test`` images (the ones the supervised stages are measured on), each image scored once.
The category is read where the converted dataset records it was converted from (the data layer reads
MVTec's folders; the splits come from ``splits.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.convert.splits import load_splits
from pipeline.data.images import read_image, square
from pipeline.data.layout import Category, Sample, load_category
from pipeline.errors import DataError
from pipeline.workspace import Dataset


@dataclass(frozen=True)
class AnomalyData:
    category: Category
    fit: list[Sample]  # train/good in the memory bank
    holdout: list[Sample]  # train/good kept out of it, for the thresholds
    val: list[Sample]  # splits.json val: thresholds
    test: list[Sample]  # splits.json test: measured once
    whole_test: list[Sample]  # every MVTec test/ image: the published protocol
    kind: str  # real | synthetic

    @property
    def scored(self) -> list[Sample]:
        """Every image scored, each once: the hold-out and MVTec's whole test folder (val and test lie in it)."""
        return [*self.holdout, *self.whole_test]


def load(dataset: Dataset | Path, holdout: float, seed: int, mask_threshold: int = 128) -> AnomalyData:
    """The splits of ``dataset`` over the category it was converted from."""
    dataset = Dataset.of(dataset)
    splits = load_splits(dataset)
    source = dataset.recorded_source()
    if source is None or not source.is_dir():
        raise DataError(f"{source or dataset.report}: the category folder {dataset.root} was converted from is gone; "
                        f"the good-only stage reads its train/good images from there; run `pipe convert "
                        f"{splits['category']}` again")
    cat = load_category(source.parent, source.name, mask_threshold)
    by_rel = {s.rel: s for s in cat.samples}
    good = sorted(splits["train_good"])
    if len(good) < 2:
        raise DataError(f"{source}/train/good: {len(good)} image(s); a good-only detector needs at least 2 (one to "
                        f"learn from, one held out for its threshold)")
    order = np.random.default_rng([seed, 17]).permutation(len(good))
    n_out = min(len(good) - 1, max(1, round(holdout * len(good))))
    held = {good[i] for i in order[:n_out]}

    def pick(rels: list[str]) -> list[Sample]:
        missing = [r for r in rels if r not in by_rel]
        if missing:
            raise DataError(f"{source / missing[0]}: listed in {dataset.splits} but not in the category; run "
                            f"`pipe convert {splits['category']}` again")
        return [by_rel[r] for r in rels]

    return AnomalyData(cat, pick([r for r in good if r not in held]), pick(sorted(held)),
                       pick(sorted(splits["splits"]["val"])), pick(sorted(splits["splits"]["test"])),
                       pick(sorted(splits["labels"])), splits.get("data", "unknown"))


def images(samples: list[Sample], size: int) -> torch.Tensor:
    """RGB float images in [0, 1], resized to ``size`` squared: (N, 3, size, size). Greyscale is replicated."""
    out = np.empty((len(samples), size, size, 3), np.uint8)
    for i, s in enumerate(samples):
        out[i] = square(read_image(s.image), size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


def masks(cat: Category, samples: list[Sample], size: int) -> np.ndarray:
    """Ground-truth masks at ``size`` squared, bool (N, size, size); all False for good images."""
    out = np.zeros((len(samples), size, size), bool)
    for i, s in enumerate(samples):
        if s.mask is not None:
            m = cat.read_mask(s).astype(np.uint8)
            out[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return out


def labels(samples: list[Sample]) -> np.ndarray:
    """1 for a defective image, 0 for a good one."""
    return np.array([s.label != "good" for s in samples], dtype=np.int64)
