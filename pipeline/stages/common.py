"""What every stage shares: the dataset it reads, the record it writes, and the clock it keeps.

A stage's ``metrics.json`` must let a reader tell measured from meaningless numbers, so every stage
records the same provenance block (device and versions, data real or synthetic, config) through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump
from pipeline.convert.splits import load_splits
from pipeline.device import environment, select_device
from pipeline.errors import DataError
from pipeline.training import distributed


class Phases:
    """Wall time per named phase, rounded to milliseconds; ``total`` is their sum."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def record(self) -> dict[str, float]:
        return {**self.seconds, "total": round(sum(self.seconds.values()), 3)}


def require(path: Path, what: str, fix: str) -> Path:
    """Stop with one line naming the missing input and the command that makes it."""
    if not Path(path).exists():
        raise DataError(f"{path}: {what} not found; {fix}")
    return Path(path)


def dataset_record(dataset_dir: Path) -> dict[str, Any]:
    """Data provenance: real or synthetic, where, and a digest of the splits every stage shares."""
    splits = load_splits(dataset_dir)
    digest = hashlib.sha256((Path(dataset_dir) / "splits.json").read_bytes()).hexdigest()
    return {"provenance": splits.get("data", "unknown"), "dataset": str(Path(dataset_dir)),
            "splits_sha256": digest, "counts": splits["counts"], "seed": splits["seed"]}


def start(stage: str, cfg: Config, dataset_dir: Path) -> tuple[distributed.Dist, str, dict[str, Any]]:
    """Select the device, join the DDP group ``torchrun`` describes (if any), and record the stage's provenance
    (which fails first, on a missing converted dataset)."""
    selected = select_device(cfg.device)
    d = distributed.init(selected)
    device = distributed.device_for(d, selected)
    return d, device, stage_record(stage, cfg, device, dataset_dir)


def stage_record(stage: str, cfg: Config, device: str, dataset_dir: Path) -> dict[str, Any]:
    """The block every ``metrics.json`` starts with."""
    return {"stage": stage, "category": cfg.category, "device": device, "environment": environment(device),
            "data": dataset_record(dataset_dir), "config": dump(cfg)}
