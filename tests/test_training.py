"""`pipeline.training`: the warm-up + cosine schedule and the sharded (optionally weighted) sampler the loops share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from pipeline.training.optim import adamw, warmup_cosine
from pipeline.training.sampling import ShardedSampler, class_balanced_weights


def _lrs(warmup: int, total: int, steps: int, lr: float = 1e-3, floor: float = 0.01) -> list[float]:
    """The learning rate each optimizer step uses (index 0: the first step)."""
    opt = adamw([torch.nn.Parameter(torch.zeros(2))], lr, 0.0)
    sched = warmup_cosine(opt, warmup, total, floor)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        assert sched.get_last_lr()[0] == pytest.approx(seen[-1])
        opt.step()
        sched.step()
    return seen


def _epoch(sampler: ShardedSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_warmup_ramps_linearly_then_cosine_ends_at_the_floor():
    lr, warmup, total = 1e-3, 4, 14
    seen = _lrs(warmup, total, total + 1, lr)
    assert seen[:warmup] == pytest.approx([lr * (s + 1) / (warmup + 1) for s in range(warmup)])  # lr/5 ... 4lr/5
    assert seen[warmup] == pytest.approx(lr)  # the peak, right after the warm-up
    for step in range(warmup, total + 1):  # then half a cosine from lr down to floor * lr
        progress = (step - warmup) / (total - warmup)
        assert seen[step] == pytest.approx(lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))), rel=1e-9)
    assert seen[total] == pytest.approx(0.01 * lr)
    assert all(a > b for a, b in zip(seen[warmup:total], seen[warmup + 1:total + 1]))


def test_without_warmup_the_first_step_is_at_full_rate():
    seen = _lrs(0, 5, 6, 2e-4, floor=0.1)
    assert seen[0] == pytest.approx(2e-4) and seen[5] == pytest.approx(2e-5)


def test_warmup_longer_than_the_run_only_ramps():
    seen = _lrs(8, 4, 5)
    assert seen == pytest.approx([1e-3 * (s + 1) / 9 for s in range(5)])


def test_groups_with_different_rates_warm_up_alike_and_a_floor_needs_one_rate():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = adamw([{"params": [a], "lr": 1e-4}, {"params": [b], "lr": 1e-3}], 1e-3, 0.0)
    sched = warmup_cosine(opt, 3, 6, floor=0.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25e-4, 0.25e-3])
    for _ in range(6):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="one base learning rate"):
        warmup_cosine(adamw([{"params": [a], "lr": 1e-4}, {"params": [b], "lr": 1e-3}], 1e-3, 0.0), 3, 6, floor=0.01)


@pytest.mark.parametrize("warmup", [0, 3])
def test_schedule_resumes_from_its_state_dict(warmup):
    """A run resumed from (optimizer, scheduler) state dicts at any step continues exactly as an unbroken one."""
    total, cut = 10, 5
    unbroken = _lrs(warmup, total, total + 1)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = adamw([p], 1e-3, 0.0)
    sched = warmup_cosine(opt, warmup, total)
    for _ in range(cut):
        opt.step()
        sched.step()
    saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt2 = adamw([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0)
    sched2 = warmup_cosine(opt2, warmup, total)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    resumed = []
    for _ in range(cut, total + 1):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == pytest.approx(unbroken[cut:], rel=1e-12)


def test_sampler_is_distributed_sampler_semantics_without_a_process_group():
    for n, world in ((10, 1), (10, 3), (7, 4), (2, 3)):
        for epoch in (0, 3):
            for rank in range(world):
                ours = ShardedSampler(n, seed=5, rank=rank, world=world)
                ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
                ref.set_epoch(epoch)
                assert _epoch(ours, epoch) == list(ref) and len(ours) == math.ceil(n / world)
    shards = [list(ShardedSampler(10, 0, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4] and set(sum(shards, [])) == set(range(10))  # padded, all covered
    first, second = _epoch(ShardedSampler(10, 0), 0), _epoch(ShardedSampler(10, 0), 1)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second  # each epoch its own permutation


def test_weighted_sampler_draws_by_weight_and_shards_one_sequence():
    labels = [0] * 90 + [1] * 9 + [2]
    w = class_balanced_weights(labels)
    assert torch.allclose(w[[0, 90, 99]], torch.tensor([1 / 90, 1 / 9, 1.0], dtype=torch.double))
    whole = ShardedSampler(len(labels), seed=3, weights=w)
    drawn = _epoch(whole, 2)
    shards = [_epoch(ShardedSampler(len(labels), seed=3, rank=r, world=3, weights=w), 2) for r in range(3)]
    padded = drawn + drawn[:2]  # 100 draws padded to 102 = 3 x 34
    assert [padded[r::3] for r in range(3)] == shards  # every rank takes its share of the same draws
    assert _epoch(whole, 3) != drawn  # new draws each epoch
    many = np.array(labels)[[i for e in range(20) for i in _epoch(whole, e)]]
    assert np.allclose(np.bincount(many) / len(many), 1 / 3, atol=0.03)  # vs 0.90 / 0.09 / 0.01 in the data
    with pytest.raises(ValueError, match="3 weights for 4 examples"):
        ShardedSampler(4, 0, weights=[1.0, 1.0, 1.0])
