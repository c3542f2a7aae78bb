"""AdamW and a linear warm-up then cosine decay: the schedule the SAM loop uses, built from torch's own schedulers.

The schedule is ``SequentialLR(LinearLR, CosineAnnealingLR)``, as torchvision's classification reference
builds its warm-up: no hand-written learning-rate formula, and its ``state_dict`` round trip is torch's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def adamw(groups: Iterable[dict] | Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(groups), lr=lr, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  floor: float = 0.01) -> LRScheduler:
    """Stepped once per optimizer step: the learning rate ramps linearly from ``lr / (warmup_steps + 1)`` to ``lr``
    over ``warmup_steps``, then decays by a cosine to ``floor * lr`` at ``total_steps`` (where it ends).

    A warm-up keeps the first AdamW steps, taken with still-noisy moment estimates, small; the cosine floor keeps
    the last epochs learning a little. ``CosineAnnealingLR`` has one absolute floor for every parameter group,
    so with ``floor > 0`` the groups must share one base learning rate (a relative floor per group would need a
    hand-written formula again); the warm-up itself scales every group by the same factor.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    base = {group.get("initial_lr", group["lr"]) for group in optimizer.param_groups}
    if floor and len(base) > 1:
        raise ValueError(f"warmup_cosine: a floor of {floor} x lr needs one base learning rate for every parameter "
                         f"group (CosineAnnealingLR has one eta_min), got {sorted(base)}")
    decay = {"T_max": max(1, total_steps - warmup_steps), "eta_min": floor * base.pop()}
    if warmup_steps == 0:
        return CosineAnnealingLR(optimizer, **decay)
    ramp = LinearLR(optimizer, start_factor=1 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [ramp, CosineAnnealingLR(optimizer, **decay)], milestones=[warmup_steps])
