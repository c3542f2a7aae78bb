"""What every stage shares: the dataset it reads, the record it writes, the clock it keeps, and the check
that ``--resume`` continues only what was started with the same settings and data.

A stage's ``metrics.json`` must let a reader tell measured from meaningless numbers, so every stage
records the same provenance through here: device and versions, data real or synthetic, config, and the
``provenance`` block (data kind, weights, whether the numbers are meaningful, caveats) the report merges.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump
from pipeline.convert.splits import load_splits
from pipeline.device import environment, select_device
from pipeline.errors import DataError
from pipeline.fetch import file_digest
from pipeline.provenance import provenance
from pipeline.training import distributed
from pipeline.training.resume import RECORD, guard, trained_with
from pipeline.registry import sections
from pipeline.workspace import Dataset


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


def dataset_record(dataset: Dataset | Path) -> dict[str, Any]:
    """Data provenance: real or synthetic, where, and a digest of the splits every stage shares."""
    dataset = Dataset.of(dataset)
    splits = load_splits(dataset)
    digest = hashlib.sha256(dataset.splits.read_bytes()).hexdigest()
    return {"provenance": splits.get("data", "unknown"), "dataset": str(dataset.root),
            "splits_sha256": digest, "counts": splits["counts"], "seed": splits["seed"]}


def start(stage: str, cfg: Config, dataset: Dataset | Path) -> tuple[distributed.Dist, str, dict[str, Any]]:
    """Select the device, join the DDP group ``torchrun`` describes (if any), and record the stage's provenance
    (which fails first, on a missing converted dataset)."""
    selected = select_device(cfg.device)
    d = distributed.init(selected)
    device = distributed.device_for(d, selected)
    return d, device, stage_record(stage, cfg, device, dataset)


def stage_record(stage: str, cfg: Config, device: str, dataset: Dataset | Path,
                 weights: Iterable[Mapping[str, Any]] = (), caveats: Iterable[str] = ()) -> dict[str, Any]:
    """The block every ``metrics.json`` starts with, its ``provenance`` block included (see ``attest``)."""
    record = {"stage": stage, "category": cfg.category, "device": device, "environment": environment(device),
              "data": dataset_record(dataset), "config": dump(cfg)}
    return attest(record, weights, caveats)


def attest(record: Mapping[str, Any], weights: Iterable[Mapping[str, Any]] = (),
           caveats: Iterable[str] = ()) -> dict[str, Any]:
    """``record`` with its ``provenance`` block: the recorded data kind, ``weights`` (each weights record, with at
    least ``name`` and ``pretrained``) and the stage's own ``caveats``; synthetic data and untrained weights add
    theirs (``pipeline.provenance``). A stage that resolves its weights after ``stage_record`` attests again
    with them before writing ``metrics.json``; the report only merges these blocks."""
    return {**record, "provenance": provenance(record["data"]["provenance"], weights, caveats)}


def training_data(dataset: Dataset | Path, files: Sequence[Path], images: Iterable[tuple[str, str]]) -> dict[str, str]:
    """What a run learns from, by content: the sha256 of the named dataset files (splits, annotations) and one
    digest over every (image name, image sha256) pair. Paths are left out, so a moved dataset still resumes;
    a re-converted one with other contents does not."""
    root = Dataset.of(dataset).root
    record = {str(Path(f).relative_to(root)): file_digest(f) for f in files}
    h = hashlib.sha256()
    for name, digest in sorted(images):
        h.update(f"{name}\0{digest}\n".encode())
    record["images_sha256"] = h.hexdigest()
    return record


def _without(config: dict[str, Any], dotted: str) -> dict[str, Any]:
    """``config`` less one dotted key (a copy; the dumped config is shared with ``metrics.json``)."""
    head, _, rest = dotted.partition(".")
    if head not in config:
        return config
    if not rest:
        return {k: v for k, v in config.items() if k != head}
    return {**config, head: _without(dict(config[head]), rest)} if isinstance(config[head], Mapping) else config


def guard_resume(stage: str, cfg: Config, out: Path, main: bool, resume: bool, data: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None, ignore: Sequence[str] = ()) -> None:
    """Before a training stage touches ``out``: record what it trains with, or on ``--resume`` refuse (one line
    naming the differing keys) to continue a run that was trained with other settings or data.

    The stage's config sections (its registry entry) less ``ignore`` (dotted keys that only say where
    things are kept), plus ``extra`` (what the config names but does not contain, e.g. recipe files), are
    compared. The ``main`` process (rank 0) writes the record; under DDP the other ranks check a resumed run's
    record too, so every process stops, not only the one that writes.
    """
    config = trained_with(dump(cfg), sections(stage))
    for key in ignore:
        config = _without(config, key)
    config.update(extra or {})
    if main or (resume and (Path(out) / RECORD).is_file()):
        guard(Path(out), config, data, resume)
