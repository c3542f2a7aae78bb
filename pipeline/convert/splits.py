"""The one re-split every stage shares.

MVTec AD puts every defect image in ``test/``, so supervised training needs its own train/val/test over
those images. The split is stratified by class and seeded; ``splits.json`` records it by source path
(relative to the category root), and every stage reads that file, so all evaluate on the same held-out
images. MVTec's ``train/good`` is listed separately: each stage decides whether to add it to train.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.layout import Category
from pipeline.errors import DataError
from pipeline.io import read_json
from pipeline.workspace import Dataset

SPLITS = ("train", "val", "test")


def stratified_split(labels: Mapping[str, str], ratios: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Assign each id (sorted within each class, then shuffled by ``seed``) to train/val/test.

    Per class of n images: val and test get round(n * ratio) each (at least one when n >= 3), train the rest.
    """
    total = sum(ratios[s] for s in SPLITS)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    by_class: dict[str, list[str]] = {}
    for rel, label in labels.items():
        by_class.setdefault(label, []).append(rel)
    for k, label in enumerate(sorted(by_class)):
        ids = sorted(by_class[label])
        order = np.random.default_rng([seed, k]).permutation(len(ids))
        n = len(ids)
        n_val = round(n * ratios["val"] / total)
        n_test = round(n * ratios["test"] / total)
        if n >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test)
        shuffled = [ids[i] for i in order]
        out["val"] += shuffled[:n_val]
        out["test"] += shuffled[n_val:n_val + n_test]
        out["train"] += shuffled[n_val + n_test:]
    return {s: sorted(v) for s, v in out.items()}


def make_splits(cat: Category, ratios: Mapping[str, float], seed: int) -> dict[str, Any]:
    labelled = {s.rel: s.label for s in cat.samples if s.split == "test"}
    splits = stratified_split(labelled, ratios, seed)
    counts = {sp: {c: sum(1 for r in rels if labelled[r] == c) for c in cat.spec.classes} for sp, rels in splits.items()}
    return {
        "category": cat.name,
        "data": cat.provenance["kind"],
        "seed": seed,
        "ratios": dict(ratios),
        "classes": list(cat.spec.classes),
        "splits": splits,
        "labels": dict(sorted(labelled.items())),
        "train_good": sorted(s.rel for s in cat.samples if s.split == "train"),
        "counts": counts,
    }


def load_splits(dataset: Dataset | Path) -> dict[str, Any]:
    """Read ``splits.json`` from a converted dataset; every stage goes through here."""
    path = Dataset.of(dataset).splits
    if not path.is_file():
        raise DataError(f"{path}: not found; run `pipe convert <category>` first")
    return read_json(path)
