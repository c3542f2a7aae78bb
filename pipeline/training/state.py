"""Seeds, mixed precision and checkpoints: what makes a run repeatable, fast and resumable."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import atomic_path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); full precision elsewhere."""
    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save(path: Path, state: Any) -> Path:
    """``torch.save`` through a temporary sibling and a rename: a crash never leaves half a checkpoint.

    The archive is written through an open file, not to the temporary path: given a path, ``torch.save``
    names the zip archive's inner folder after it, and the random temporary name would make two saves of
    the same weights differ in bytes (and in sha256). Through a file object the folder is always
    ``archive``, so equal state gives equal files.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)
    return Path(path)


def rng_state() -> dict[str, Any]:
    """Every global random stream training and augmentation draw from (CUDA only where already in use)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what ``rng_state`` saved; CUDA streams only on a machine with the same number of GPUs."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
