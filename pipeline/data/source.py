"""Which data a run uses: the real category when it is on disk, else (only if asked) the synthetic stand-in.

This is the embedded default of ``just all``: on a fresh machine it still runs end to end, and says
loudly that its numbers come from synthetic data.

The data layer takes plain values (``DataSource``), not the pipeline's ``Config``: it sits below the
configuration and the stages, so it imports neither and can be used (and tested) without them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.console import LOUD
from pipeline.data.layout import SYNTHETIC_MARKER, Category, load_category, resolve_root
from pipeline.data.synth import GENERATOR_VERSION, synthesize
from pipeline.io import read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthSpec:
    """What the synthetic stand-in is generated with; a stand-in made with other values is regenerated.
    (No defaults here: they live in configs/default.yaml, the one defaults file.)"""

    size: int
    train_good: int
    test_good: int
    test_per_defect: int
    seed: int


@dataclass(frozen=True)
class DataSource:
    """Where a category's images live and how to read them: everything ``open_category`` needs."""

    category: str
    root: str | Path | None  # MVTec AD root; None: $MVTEC_ROOT, else datasets/mvtec (``resolve_root``)
    synthetic_root: str | Path
    mask_threshold: int
    synth: SynthSpec


def open_category(source: DataSource, fallback_synthetic: bool = False) -> Category:
    """Load the category; with ``fallback_synthetic``, generate and use the stand-in if it is absent."""
    root = resolve_root(source.root)
    name = source.category
    if fallback_synthetic and not (root / name).is_dir():
        synthetic_root = Path(source.synthetic_root)
        marker = synthetic_root / name / SYNTHETIC_MARKER
        wanted = {"version": GENERATOR_VERSION, **asdict(source.synth)}
        current = read_json(marker) if marker.is_file() else {}
        if {k: current.get(k) for k in wanted} != wanted:
            synthesize(name, synthetic_root, **asdict(source.synth))
        log.warning(f"No MVTec AD data at {root / name}: using the SYNTHETIC stand-in at "
                    f"{synthetic_root / name}. Its numbers say nothing about real defects.", extra=LOUD)
        root = synthetic_root
    return load_category(root, name, source.mask_threshold)
