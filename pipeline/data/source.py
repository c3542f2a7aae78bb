"""Which data a run uses: the real category when it is on disk, else (only if asked) the synthetic stand-in.

This is the embedded default of ``just all``: on a fresh machine it still runs end to end, and says
loudly that its numbers come from synthetic data.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.console import loud
from pipeline.data.layout import SYNTHETIC_MARKER, Category, load_category, resolve_root
from pipeline.data.synth import GENERATOR_VERSION, synthesize
from pipeline.io import read_json


def open_category(cfg: Config, fallback_synthetic: bool = False) -> Category:
    """Load the configured category; with ``fallback_synthetic``, generate and use the stand-in if it is absent."""
    root = resolve_root(cfg.data.root)
    if fallback_synthetic and not (root / cfg.category).is_dir():
        synthetic_root = Path(cfg.data.synthetic_root)
        marker = synthetic_root / cfg.category / SYNTHETIC_MARKER
        s = cfg.synth
        wanted = {"version": GENERATOR_VERSION, "size": s.size, "train_good": s.train_good,
                  "test_good": s.test_good, "test_per_defect": s.test_per_defect, "seed": s.seed}
        current = read_json(marker) if marker.is_file() else {}
        if {k: current.get(k) for k in wanted} != wanted:
            synthesize(cfg.category, synthetic_root, size=s.size, train_good=s.train_good, test_good=s.test_good,
                       test_per_defect=s.test_per_defect, seed=s.seed)
        loud(f"No MVTec AD data at {root / cfg.category}: using the SYNTHETIC stand-in at "
             f"{synthetic_root / cfg.category}. Its numbers say nothing about real defects.")
        root = synthetic_root
    return load_category(root, cfg.category, cfg.data.mask_threshold)
