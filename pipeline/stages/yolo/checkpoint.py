"""What ultralytics' ``last.pt`` leaves out, so that ``--resume`` continues exactly where a killed run stopped.

``last.pt`` holds the EMA weights in float16, the optimizer state partly in float16 and no live model at all
(a resumed run starts its live model from the rounded EMA). It also drops every random state, the mosaic
buffer (mosaic draws its partner images from recently loaded ones), the gradients accumulated since the
last optimizer step and when that step was. ``PromptWorldTrainer`` writes those, full precision, to a
sidecar ``resume_state.<epoch>.pt`` beside each ``last.pt`` and puts them back on resume (about twice the
model's float32 size, more with pending gradients or SGD momentum; replaced each epoch, deleted when training
completes). Every write goes through a temporary file and a rename, so a kill leaves the previous complete
file, never half a new one. A missing or unreadable sidecar means a warning and ultralytics' inexact resume.

Exact equality with an uninterrupted run holds for one process with ``workers: 0`` (the cpu and tiny
profiles; ultralytics forces it on CPU anyway). With ``workers > 0`` the images are augmented in worker
processes whose random streams and mosaic buffers cannot be saved: a resumed run still continues the same
weights, optimizer, schedule and image order, but its augmentations differ from the uninterrupted run's.
Under multi-GPU DDP only ultralytics' own resume applies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

STATE = "resume_state"  # weights/resume_state.<epoch>.pt, matching last.pt of that epoch
FP32_IN_LAST = {"step", "exp_avg", "exp_avg_sq", "square_avg"}  # ultralytics' convert_optimizer_state_dict_to_fp16


def state_file(wdir: Path, epoch: int) -> Path:
    return Path(wdir) / f"{STATE}.{epoch}.pt"


def rounded_in_last(optimizer_state: dict[str, Any]) -> bool:
    """Whether ultralytics' ``last.pt`` rounds some of this optimizer state to float16 (it keeps Adam's moments
    and every step count in float32, but not e.g. SGD's momentum): only then does the sidecar need a copy."""
    return any(k not in FP32_IN_LAST and isinstance(v, torch.Tensor) and v.dtype == torch.float32
               for per_param in optimizer_state["state"].values() for k, v in per_param.items())


def restore_buffer(dataset: Any, indices: list[int]) -> None:
    """Refill the mosaic buffer in its saved order (loading an image is what appends it to the buffer)."""
    if not hasattr(dataset, "buffer") or not hasattr(dataset, "load_image"):
        return
    for i in dataset.buffer:
        dataset.ims[i], dataset.im_hw0[i], dataset.im_hw[i] = None, None, None
    dataset.buffer = []
    for i in indices:  # a saved buffer is shorter than its bound, so refilling evicts nothing
        dataset.load_image(i)


class PassSampler(Sampler[int]):
    """A shuffle whose order in pass ``p`` depends only on (seed, p), so a resumed run can start at any pass.

    ultralytics' ``RandomSampler`` draws each epoch's order from one generator whose position depends on how
    its iterators were consumed (lazily, across epoch boundaries, with an extra draw per pass); restoring that
    position would mean imitating torch internals. Here ``passes`` counts the passes started: the trainer
    sets it to the epoch whose batches come next (at the start of a run and when mosaic closes and the loader
    is rebuilt).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.passes = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.passes) % (1 << 63))
        self.passes += 1
        yield from torch.randperm(self.n, generator=g).tolist()


def strip_atomically(f: Path, updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """ultralytics' ``strip_optimizer`` (the final form of best.pt/last.pt), written through a temporary file."""
    from ultralytics.utils.torch_utils import strip_optimizer

    f = Path(f)
    tmp = f.with_name(f".{f.name}.strip.tmp")
    out = strip_optimizer(f, str(tmp), updates)
    if tmp.exists():
        os.replace(tmp, f)
    return out


def loop_done(ckpt: dict[str, Any], epochs: int) -> bool:
    """Whether ultralytics would have stopped after the checkpoint's epoch (last epoch or early stopping): a run
    killed between that save and the final strip has nothing left to train, only to finalise."""
    epoch = int(ckpt.get("epoch", -1))
    patience = (ckpt.get("train_args") or {}).get("patience") or 0
    best_epoch = (ckpt.get("stopper") or {}).get("best_epoch")
    return epoch + 1 >= epochs or bool(patience and best_epoch is not None and epoch + 1 - best_epoch >= patience)


def finalize(wdir: Path) -> None:
    """Do what ultralytics' ``final_eval`` writes (strip best.pt, then last.pt) for whichever is not stripped yet."""
    from ultralytics.utils.patches import torch_load

    last, best = Path(wdir) / "last.pt", Path(wdir) / "best.pt"
    ckpt = torch_load(last, map_location="cpu")
    if best.is_file() and torch_load(best, map_location="cpu").get("epoch", -1) != -1:
        strip_atomically(best, {"train_results": ckpt.get("train_results")})
    if ckpt.get("epoch", -1) != -1:
        strip_atomically(last)
    for f in Path(wdir).glob(f"{STATE}.*.pt"):
        f.unlink(missing_ok=True)
