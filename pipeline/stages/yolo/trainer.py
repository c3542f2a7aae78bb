"""Ultralytics' own YOLO-World trainer, taught to take its class embeddings from a file instead of CLIP.

``WorldTrainer`` needs CLIP twice: to embed the training texts (it reads a cache first, which the stage
writes) and, at the start of training, to set the validation classes on the EMA model (no cache). The
subclass replaces only that second hook. It must live at module level and read everything from files
beside ``data.yaml``: under ``--device 0,1`` ultralytics re-imports this class in each DDP process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.world import train as world_train

CLASS_EMBEDDINGS = "class_embeddings.pt"  # {"names": [...], "feats": (1, nc, 512)}, written beside data.yaml


def set_prompts(model: torch.nn.Module, feats: torch.Tensor, names: list[str]) -> torch.nn.Module:
    """What ``WorldModel.set_classes`` does, from precomputed embeddings: no CLIP call."""
    model.txt_feats = feats.to(next(model.parameters()).device).float()
    model.model[-1].nc = feats.shape[1]
    model.names = dict(enumerate(names))
    return model


def _set_validation_classes(trainer: Any) -> None:
    data = Path(trainer.args.data)
    saved = torch.load(data.parent / CLASS_EMBEDDINGS, map_location="cpu", weights_only=True)
    set_prompts(trainer.ema.ema, saved["feats"], saved["names"])


class PromptWorldTrainer(world_train.WorldTrainer):
    """``WorldTrainer`` whose EMA model gets the stage's class embeddings (prompt ensembles) for validation."""

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True):
        model = super().get_model(cfg, weights, verbose)
        hooks = self.callbacks["on_pretrain_routine_end"]
        hooks[:] = [h for h in hooks if h is not world_train.on_pretrain_routine_end]
        if _set_validation_classes not in hooks:
            hooks.append(_set_validation_classes)
        return model
