"""AdamW with a linear warm-up then cosine decay: the schedule the SAM and classification loops share."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def adamw(groups: Iterable[dict] | Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(groups), lr=lr, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  floor: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Factor ramps linearly from ~0 to 1 over ``warmup_steps``, then decays by a cosine to ``floor``."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
