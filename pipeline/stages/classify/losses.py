"""Classification losses with the long-tail corrections, all on soft targets (label smoothing and MixUp,
which the train loader's collate function applies: ``data.MixUpCollate``).

One formula covers every recipe: for logits ``z``, soft targets ``t``, class weights ``w`` and focusing
parameter ``gamma``,

    loss_i = -sum_c w_c t_ic (1 - p_ic)^gamma log p_ic,   p_i = softmax(z_i + log_prior)

normalised by ``sum_i sum_c w_c t_ic`` (for hard labels exactly ``F.cross_entropy(weight=w)``'s mean).
``gamma = 0`` is cross-entropy, ``gamma > 0`` focal loss (Lin et al. 2017). The long-tail switches change
``w`` or ``log_prior`` only:

- ``effective_number``: ``w_c ∝ (1 - beta) / (1 - beta^n_c)`` (Cui et al. 2019), normalised to mean 1;
- ``balanced_softmax``: ``log_prior = log(n_c / N)`` added to the logits during training only (Ren et
  al. 2020); at inference the raw logits are used, which removes the training prior from the prediction;
- ``balanced_sampling`` changes the sampler, not the loss (``training.sampling.class_balanced_weights``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_counts(labels: Sequence[int], classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=classes)


def effective_number_weights(counts: np.ndarray, beta: float) -> torch.Tensor:
    """Inverse effective number of samples per class, mean 1 (a class absent from train counts as one image)."""
    n = np.maximum(counts, 1).astype(np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def log_prior(counts: np.ndarray) -> torch.Tensor:
    n = np.maximum(counts, 1).astype(np.float64)
    return torch.tensor(np.log(n / n.sum()), dtype=torch.float32)


def soft_targets(labels: torch.Tensor, classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Target rows: one-hot for class indices, as given for rows already soft (MixUp's), then ``smoothing`` spread
    evenly over all classes (as ``F.cross_entropy`` does). Smoothing is affine, so smoothing MixUp's rows equals
    mixing smoothed ones: the order of the two does not matter."""
    t = labels.float() if labels.is_floating_point() else F.one_hot(labels, classes).float()
    return t * (1 - smoothing) + smoothing / classes if smoothing else t


class SoftTargetLoss(nn.Module):
    def __init__(self, gamma: float = 0.0, weight: torch.Tensor | None = None,
                 prior: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)
        self.register_buffer("prior", prior)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if self.prior is not None:
            z = z + self.prior
        logp = z.log_softmax(-1)
        w = self.weight if self.weight is not None else torch.ones(z.shape[-1], device=z.device)
        term = targets * w * logp
        if self.gamma:
            term = term * (1 - logp.exp()).pow(self.gamma)
        return -term.sum() / (targets * w).sum().clamp_min(1e-12)


def build_loss(kind: str, gamma: float, longtail: str, train_labels: Sequence[int], classes: int,
               beta: float) -> SoftTargetLoss:
    """The training objective of one attempt, with its long-tail correction computed from the train labels."""
    counts = class_counts(train_labels, classes)
    weight = effective_number_weights(counts, beta) if longtail == "effective_number" else None
    prior = log_prior(counts) if longtail == "balanced_softmax" else None
    return SoftTargetLoss(gamma if kind == "focal" else 0.0, weight, prior)
