"""Scanning and validating one MVTec AD category on disk.

``load_category`` checks everything a later stage relies on before any stage writes anything: every
defect image has its mask, each mask matches its image's size and marks some defect, every PNG is intact,
every defect folder holds images. What it tolerates is how a mask is stored: a {0, 1} mask is read as such
(with a note) and any other non-binary mask is thresholded with a warning (some re-encoded copies of MVTec
have anti-aliased masks). A defect must never silently become background.

Each mask is decoded once, here: the binarised masks stay on the ``Category`` (``Category.masks``), and
the rest of the command (the dataset card, the conversion) reads them from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.console import track
from pipeline.data.categories import CategorySpec, get_category, resolve_root
from pipeline.data.images import ImageInfo, PackedMask, binarize, is_binary, is_zero_one, probe, read_mask_raw
from pipeline.errors import DataError
from pipeline.io import read_json

log = logging.getLogger(__name__)

SYNTHETIC_MARKER = "SYNTHETIC.json"


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
    zero_one_masks: list[str] = field(default_factory=list)  # stored as {0, 1}, read with 1 as the defect
    synthetic: dict[str, Any] | None = None
    masks: dict[str, PackedMask] = field(default_factory=dict, repr=False)  # rel -> binarised, from validation

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
        return self.packed_mask(sample).unpack()

    def packed_mask(self, sample: Sample) -> PackedMask:
        """A defect image's binarised mask as validation decoded it (decoded now only if it was not kept)."""
        packed = self.masks.get(sample.rel)
        if packed is None:
            if sample.mask is None:
                raise ValueError(f"{sample.rel}: a good image has no mask")
            packed = PackedMask.pack(binarize(read_mask_raw(sample.mask), self.mask_threshold))
        return packed

    def by_label(self, split: str | None = None) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {}
        for s in self.samples:
            if split is None or s.split == split:
                out.setdefault(s.label, []).append(s)
        return out


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
        pngs = _pngs(folder)
        if not pngs and label != "good":
            raise DataError(f"{folder}: defect folder holds no PNG images; re-extract the category, or remove the "
                            "empty folder if the class is deliberately left out")
        for p in pngs:
            mask = None if label == "good" else cat / "ground_truth" / label / f"{p.stem}_mask.png"
            samples.append(Sample(f"test/{label}/{p.name}", "test", label, p, mask))
    if not samples:
        raise DataError(f"{cat}: no PNG images found under train/good or test/")
    if not any(s.mask is not None for s in samples):
        raise DataError(f"{test}: no defect images (no test/<defect>/ folder with PNGs); every stage needs defects "
                        f"to learn and measure: re-extract the category (expected some of: {', '.join(spec.defects)})")
    return samples


def load_category(root: str | Path | None, name: str, mask_threshold: int = 128) -> Category:
    """Scan and validate ``<root>/<name>``; raise ``DataError`` naming the first bad file."""
    return validate_dir(resolve_root(root) / name, get_category(name), mask_threshold)


def validate_dir(cat_dir: Path, spec: CategorySpec, mask_threshold: int = 128) -> Category:
    """Validate a category folder (also a staging folder not yet named after its category)."""
    samples = scan(cat_dir, spec)
    problems: list[str] = []
    infos: dict[str, ImageInfo] = {}
    nonbinary: list[str] = []
    zero_one: list[str] = []
    masks: dict[str, PackedMask] = {}
    for s in track(samples, f"validating {spec.name}"):
        try:
            infos[s.rel] = probe(s.image)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if s.mask is not None:
            checked = _check_mask(s.image, s.mask, infos[s.rel], mask_threshold, nonbinary, zero_one)
            if isinstance(checked, str):
                problems.append(checked)
            else:
                masks[s.rel] = PackedMask.pack(checked)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    if zero_one:
        log.info(f"{spec.name}: {len(zero_one)} mask(s) stored as 0/1 instead of 0/255 (e.g. {zero_one[0]}); "
                 "read with 1 as the defect")
    for m in nonbinary:
        log.warning(f"{m}: mask is not binary (values other than 0/255); thresholding at {mask_threshold}")
    marker = cat_dir / SYNTHETIC_MARKER
    synthetic = read_json(marker) if marker.is_file() else None
    return Category(spec, cat_dir, samples, infos, mask_threshold, nonbinary_masks=nonbinary,
                    zero_one_masks=zero_one, synthetic=synthetic, masks=masks)


def _check_mask(image: Path, mask: Path, img: ImageInfo, threshold: int,
                nonbinary: list[str], zero_one: list[str]) -> str | np.ndarray:
    """The problem with a defect image's mask, or the binarised mask; notes how the mask is stored in
    ``nonbinary``/``zero_one``.

    A mask that marks nothing once binarised is a problem, not a warning: the image would silently
    become a defect image with no defect, and every stage would learn and measure the wrong thing.
    """
    if not mask.is_file():
        return f"{image}: defect image without its mask (expected {mask})"
    try:
        minfo = probe(mask)
        if (minfo.width, minfo.height) != (img.width, img.height):
            return (f"{mask}: mask is {minfo.width}x{minfo.height} but its image {image.name} is "
                    f"{img.width}x{img.height}; masks must match their image pixel for pixel")
        raw = read_mask_raw(mask)
    except DataError as exc:
        return str(exc)
    if is_zero_one(raw):
        zero_one.append(str(mask))
    elif not is_binary(raw):
        nonbinary.append(str(mask))
    binary = binarize(raw, threshold)
    if binary.any():
        return binary
    why = "all zero" if not raw.any() else f"every value below data.mask_threshold={threshold}, maximum {int(raw.max())}"
    return (f"{mask}: mask of defect image {image.name} marks no defect ({why}); fix the mask, "
            "or move the image to test/good if it shows no defect")
