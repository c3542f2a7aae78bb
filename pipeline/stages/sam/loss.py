"""SAM's training loss: focal + Dice on the mask logits, MSE between the IoU head and the true IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.coco import batch_iou


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice on the probabilities, smoothed by ``eps``: differentiable, unlike the scores in ``pipeline.coco``."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction with the target, per instance (no gradient: it is the IoU head's label)."""
    return batch_iou(logits > 0, target > 0.5)


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, w_focal: float, w_dice: float,
             w_iou: float, gamma: float = 2.0, alpha: float = 0.25) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum over instances (logits and target: (N, 1, h, w); iou_pred: (N, 1))."""
    logits, iou_pred = logits.float(), iou_pred.float()
    focal = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")
    dice = dice_loss(logits, target)
    with torch.no_grad():
        true_iou = mask_iou(logits, target)
    iou = F.mse_loss(iou_pred[:, 0], true_iou)
    total = w_focal * focal + w_dice * dice + w_iou * iou
    parts = {"focal": focal, "dice": dice, "iou_mse": iou, "iou": true_iou.mean()}
    return total, {k: float(v.detach()) for k, v in parts.items()}
