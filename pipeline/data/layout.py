"""Scanning and validating one MVTec AD category on disk.

``load_category`` checks everything a later stage relies on before any stage writes anything: every
defect image has its mask, each mask matches its image's size, every PNG is intact. The only problem it
tolerates is a non-binary mask, which it thresholds with a warning (some re-encoded copies of MVTec have
anti-aliased masks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.console import track, warn
from pipeline.data.categories import CategorySpec, get_category
from pipeline.data.images import ImageInfo, binarize, is_binary, probe, read_mask_raw
from pipeline.errors import DataError
from pipeline.io import read_json

SYNTHETIC_MARKER = "SYNTHETIC.json"
DEFAULT_ROOT = Path("datasets/mvtec")


@dataclass(frozen=True)
class Sample:
    """One image of the category; ``rel`` (e.g. ``test/broken_large/000.png``) is its stable id."""

    rel: str
    split: str  # "train" or "test", as MVTec stores it
    label: str  # "good" or the defect name
    image: Path
    mask: Path | None


@dataclass
class Category:
    spec: CategorySpec
    root: Path  # the category folder itself, e.g. datasets/mvtec/bottle
    samples: list[Sample]
    info: dict[str, ImageInfo]
    mask_threshold: int = 128
    nonbinary_masks: list[str] = field(default_factory=list)
    synthetic: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def provenance(self) -> dict[str, Any]:
        """Recorded in every output: were these numbers measured on real MVTec AD or a stand-in?"""
        if self.synthetic is not None:
            return {"kind": "synthetic", "root": str(self.root.resolve()), "generator": self.synthetic}
        return {"kind": "real", "root": str(self.root.resolve()), "dataset": "MVTec AD", "license": "CC BY-NC-SA 4.0"}

    def read_mask(self, sample: Sample) -> np.ndarray:
        """Boolean HxW mask; all False for good images."""
        if sample.mask is None:
            info = self.info[sample.rel]
            return np.zeros((info.height, info.width), dtype=bool)
        return binarize(read_mask_raw(sample.mask), self.mask_threshold)

    def by_label(self, split: str | None = None) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {}
        for s in self.samples:
            if split is None or s.split == split:
                out.setdefault(s.label, []).append(s)
        return out


def resolve_root(root: str | Path | None) -> Path:
    """``--root`` (or the config's data.root), else ``$MVTEC_ROOT``, else ``datasets/mvtec``."""
    if root:
        return Path(root)
    env = os.environ.get("MVTEC_ROOT")
    return Path(env) if env else DEFAULT_ROOT


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


def scan(cat: Path, spec: CategorySpec) -> list[Sample]:
    """List the samples of a category folder by the MVTec layout, without opening any file."""
    if not cat.is_dir():
        raise DataError(
            f"{cat}: no such category folder; run `pipe download {spec.name}`, pass --root / set MVTEC_ROOT "
            f"to the folder holding {spec.name}/, or run `pipe synth {spec.name}` for a synthetic stand-in"
        )
    train_good = cat / "train" / "good"
    if not train_good.is_dir():
        raise DataError(f"{train_good}: missing; an MVTec category holds train/good, test/<class>, ground_truth/<defect>")
    test = cat / "test"
    if not test.is_dir():
        raise DataError(f"{test}: missing; an MVTec category holds train/good, test/<class>, ground_truth/<defect>")
    samples = [Sample(f"train/good/{p.name}", "train", "good", p, None) for p in _pngs(train_good)]
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        label = folder.name
        if label != "good" and label not in spec.defects:
            raise DataError(
                f"{folder}: unknown defect class {label!r} for {spec.name} (expected one of: {', '.join(spec.defects)})"
            )
        for p in _pngs(folder):
            mask = None if label == "good" else cat / "ground_truth" / label / f"{p.stem}_mask.png"
            samples.append(Sample(f"test/{label}/{p.name}", "test", label, p, mask))
    if not samples:
        raise DataError(f"{cat}: no PNG images found under train/good or test/")
    return samples


def load_category(root: str | Path | None, name: str, mask_threshold: int = 128) -> Category:
    """Scan and validate ``<root>/<name>``; raise ``DataError`` naming the first bad file."""
    return validate_dir(resolve_root(root) / name, get_category(name), mask_threshold)


def validate_dir(cat_dir: Path, spec: CategorySpec, mask_threshold: int = 128) -> Category:
    """Validate a category folder (also a staging folder not yet named after its category)."""
    samples = scan(cat_dir, spec)
    problems: list[str] = []
    info: dict[str, ImageInfo] = {}
    nonbinary: list[str] = []
    for s in track(samples, f"validating {spec.name}"):
        try:
            info[s.rel] = probe(s.image)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if s.mask is None:
            continue
        if not s.mask.is_file():
            problems.append(f"{s.image}: defect image without its mask (expected {s.mask})")
            continue
        try:
            minfo = probe(s.mask)
        except DataError as exc:
            problems.append(str(exc))
            continue
        img = info[s.rel]
        if (minfo.width, minfo.height) != (img.width, img.height):
            problems.append(
                f"{s.mask}: mask is {minfo.width}x{minfo.height} but its image {s.image.name} is "
                f"{img.width}x{img.height}; masks must match their image pixel for pixel"
            )
            continue
        if not is_binary(read_mask_raw(s.mask)):
            nonbinary.append(str(s.mask))
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    for m in nonbinary:
        warn(f"{m}: mask is not binary (values other than 0/255); thresholding at {mask_threshold}")
    marker = cat_dir / SYNTHETIC_MARKER
    synthetic = read_json(marker) if marker.is_file() else None
    return Category(spec, cat_dir, samples, info, mask_threshold, nonbinary, synthetic)
