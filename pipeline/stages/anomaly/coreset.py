"""Greedy k-center coreset selection, PatchCore's memory-bank subsampling (Roth et al., CVPR 2022, Sec. 3.2).

Each step adds the point farthest from everything chosen so far (Sener & Savarese's k-center greedy), which
minimises, within a factor of two, the largest distance from any point to its nearest chosen one -- the
coverage a nearest-neighbour anomaly score depends on. As the paper does, distances are measured after a
sparse random projection (Li, Hastie & Church, "Very sparse random projections", KDD 2006) to
``projection_dim`` dimensions, which preserves them approximately (Johnson-Lindenstrauss) and makes each step
cheaper; the indices returned select the original features.

Memory stays linear in the number of points: the projection is applied in row chunks, and a step is one
matrix-vector product against precomputed squared norms (no ``N x N`` matrix, no ``N x d`` difference
tensor). Everything runs on the features' device; the projection and the starting point come from a CPU
generator seeded with ``seed``, so a seed gives the same indices on every device (up to floating-point ties).
The selection order is kept: a smaller ratio with the same seed selects a prefix of a larger one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["coreset_size", "greedy_coreset", "sparse_projection"]


def coreset_size(n: int, ratio: float) -> int:
    """How many of ``n`` points a coreset of ``ratio`` keeps: ``ratio * n`` rounded half up, at least 1, at most
    ``n``."""
    if not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio {ratio} is not in (0, 1]")
    if n < 1:
        raise ValueError("no features to subsample")
    return min(n, max(1, math.floor(ratio * n + 0.5)))


def sparse_projection(in_dim: int, out_dim: int, seed: int) -> Tensor:
    """A (in_dim, out_dim) very sparse random projection matrix (float32, CPU), seeded.

    Entries are ``+-sqrt(1 / (density * out_dim))`` with probability ``density / 2`` each and 0 otherwise, with
    ``density = 1 / sqrt(in_dim)`` (scikit-learn's and anomalib's ``density="auto"``): squared distances are
    preserved in expectation. Stored dense, as anomalib does, since matrix products on sparse tensors are not
    supported on every device.
    """
    g = torch.Generator().manual_seed(seed)
    density = 1 / math.sqrt(in_dim)
    keep = torch.rand(in_dim, out_dim, generator=g) < density
    sign = torch.where(torch.rand(in_dim, out_dim, generator=g) < 0.5, -1.0, 1.0)
    return keep * sign * math.sqrt(1 / (density * out_dim))


def _project(features: Tensor, seed: int, projection_dim: int, chunk: int) -> Tensor:
    """``features`` in float32, projected to ``projection_dim`` when that is smaller than their own dimension."""
    n, d = features.shape
    if d <= projection_dim:
        return features.float()
    matrix = sparse_projection(d, projection_dim, seed).to(features.device)
    out = torch.empty(n, projection_dim, device=features.device)
    for start in range(0, n, chunk):
        out[start:start + chunk] = features[start:start + chunk].float() @ matrix
    return out


@torch.no_grad()
def greedy_coreset(features: Tensor, ratio: float, seed: int, projection_dim: int = 128,
                   chunk: int = 65536) -> Tensor:
    """Indices (int64, on ``features``' device, in selection order) of a greedy k-center coreset of ``features``.

    ``features`` is (N, D); ``coreset_size(N, ratio)`` distinct indices come back, all of ``arange(N)`` for
    ratio 1.0. ``projection_dim`` <= 0 or >= D measures distances on the features themselves. ``chunk`` bounds
    the rows projected at once.
    """
    if features.ndim != 2:
        raise ValueError(f"expected (N, D) features, got shape {tuple(features.shape)}")
    n = features.shape[0]
    k = coreset_size(n, ratio)
    device = features.device
    if k == n:
        return torch.arange(n, device=device)
    x = _project(features, seed, projection_dim if projection_dim > 0 else features.shape[1], max(1, chunk))
    sq = x.pow(2).sum(1)
    # the start: a seeded random point, as anomalib's KCenterGreedy does (the reference's approximate sampler
    # starts from random points too)
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(n, (1,), generator=g).to(device)
    chosen = torch.empty(k, dtype=torch.long, device=device)
    nearest = torch.full((n,), math.inf, device=device)  # squared distance to the nearest chosen point
    for i in range(k):  # no host sync in the loop: the index stays a device tensor
        chosen[i] = idx[0]
        centre = x[idx]  # (1, d)
        dist = (sq + centre.pow(2).sum() - 2 * (x @ centre[0])).clamp_min_(0)
        torch.minimum(nearest, dist, out=nearest)
        nearest[idx] = -1.0  # never again (min keeps it below every distance), even among exact duplicates
        idx = nearest.argmax().reshape(1)
    return chosen
