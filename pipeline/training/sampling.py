"""Which training examples each process sees per epoch: one sampler for the SAM and classification loops.

Both loops shard an epoch across DDP processes the way ``torch.utils.data.DistributedSampler`` does: a
permutation seeded by ``seed + epoch`` (``set_epoch``), padded by repeating its head so every rank takes the
same number of steps (a rank that stepped fewer times would hang the others' gradient all-reduce), then every
``world``-th index from ``rank``. ``ShardedSampler`` *is* that sampler, with rank and world size given
explicitly so a plain run (world size 1) needs no process group, plus one option the classification loop's
class-balanced sampling needs: weighted draws with replacement (``WeightedRandomSampler``) instead of a
permutation, sharded the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, WeightedRandomSampler


class ShardedSampler(DistributedSampler):
    """This process's share of one epoch of ``size`` examples: a seeded shuffle, or weighted draws if ``weights``.

    Every process builds the same epoch (same seed, same ``set_epoch``), so the shards are disjoint positions of
    one sequence and together cover it; call ``set_epoch`` before each epoch for a new order.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1,
                 weights: Sequence[float] | torch.Tensor | None = None) -> None:
        # weighted: the parent shards positions 0..size-1 in order, and __iter__ maps them onto the drawn sequence
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=weights is None, seed=seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and len(self.weights) != size:
            raise ValueError(f"ShardedSampler: {len(self.weights)} weights for {size} examples")

    def __iter__(self) -> Iterator[int]:
        positions = super().__iter__()
        if self.weights is None:
            return positions
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = list(WeightedRandomSampler(self.weights, len(self.weights), replacement=True, generator=g))
        return (drawn[i] for i in positions)


def class_balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-example draw weights 1 / (size of its class): every class gets the same total weight, so the same share
    of the draws however rare it is in the data."""
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    return 1.0 / torch.bincount(labels_t).double()[labels_t]
