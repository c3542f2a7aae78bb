"""What both sides of ``bench/anomaly.py`` measure, and how: one module, so they are timed alike by construction.

Imported by pipe's side (``bench/anomaly.py --worker``) and by anomalib's (``bench/_anomalib_patchcore.py``, in
the bench-only environment): it needs only the standard library, NumPy and torch, never ``pipeline``. Each
side runs ``fit`` and ``score`` through :class:`Side`, which times them in wall and process CPU seconds
(after a CUDA synchronisation), tracks the peak resident set and CUDA memory, and writes the arrays and the
``<name>.json`` record the parent reads.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Side:
    """One side's run in FOLDER: ``baseline()`` once model and data are in place, then ``fit`` and ``score``
    under :meth:`timed`, then :meth:`write`."""

    def __init__(self, folder: Path, name: str, device: torch.device) -> None:
        self.folder, self.name, self.device = folder, name, device
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, tuple[float, float]] = {}
        self.rss: dict[str, float] = {}

    def baseline(self) -> None:
        """The memory level reached by imports, data and model: what the fit's peak is measured above."""
        self.rss["baseline"] = rss_mib()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Wall and process CPU seconds of ``phase`` (``fit`` or ``predict``), queued CUDA work included."""
        start, cpu = time.perf_counter(), time.process_time()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[phase] = (time.perf_counter() - start, time.process_time() - cpu)
        self.rss[f"after_{phase}"] = rss_mib()

    def score(self, images: torch.Tensor, batch: int,
              forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) and maps (N, H, W) of ``images``, ``batch`` at a time, timed as ``predict``."""
        scores, maps = [], []
        with self.timed("predict"), torch.inference_mode():
            for i in range(0, len(images), batch):
                s, m = forward(images[i:i + batch])
                scores.append(s.float().cpu().reshape(-1))
                maps.append(m.float().cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def write(self, scores: np.ndarray, maps: np.ndarray, memory_bank: torch.Tensor, **extra: Any) -> None:
        """``<name>_scores.npy``, ``<name>_maps.npy`` and ``<name>.json`` (timings, memory, ``extra``)."""
        np.save(self.folder / f"{self.name}_scores.npy", scores)
        np.save(self.folder / f"{self.name}_maps.npy", maps)
        (fit_s, fit_cpu_s), (predict_s, predict_cpu_s) = self.seconds["fit"], self.seconds["predict"]
        result = {
            "fit_s": fit_s, "predict_s": predict_s, "fit_cpu_s": fit_cpu_s, "predict_cpu_s": predict_cpu_s,
            "ms_per_image": 1000 * predict_s / len(scores),
            "rss_baseline_mib": self.rss["baseline"], "rss_after_fit_mib": self.rss["after_fit"],
            "rss_peak_mib": rss_mib(),
            "cuda_peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None,
            "memory_bank": list(memory_bank.shape), **extra,
        }
        (self.folder / f"{self.name}.json").write_text(json.dumps(result, indent=1))
