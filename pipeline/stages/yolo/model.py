"""YOLO-World models from the weights registry: the pretrained checkpoint, or a seeded random init."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.weights import Resolved


def source(resolved: Resolved) -> str:
    """What ultralytics' trainer is given as ``model``: the checkpoint file, or the architecture YAML."""
    return str(resolved.path) if resolved.path else f"{resolved.spec.arch}.yaml"


def load(path_or_yaml: str | Path, seed: int = 0) -> torch.nn.Module:
    """A float32 ``WorldModel`` in eval mode from a checkpoint (``.pt``) or an architecture YAML (seeded)."""
    from ultralytics.nn.tasks import WorldModel, load_checkpoint

    if str(path_or_yaml).endswith(".pt"):
        model = load_checkpoint(str(path_or_yaml), device="cpu")[0]
    else:
        torch.manual_seed(seed)
        model = WorldModel(str(path_or_yaml), verbose=False)
    return model.float().eval()
