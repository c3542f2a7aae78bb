"""Torchvision backbones with a new head, stages for gradual unfreezing, and ensembles: a registry of builders.

Every backbone is built by ``torchvision.models.get_model`` without downloading anything; its ImageNet
weights come from the project's weights registry (``weights/`` first, then the official URL, then a loud
random initialisation when allowed), so the provenance of every number is recorded.

``stages`` lists the backbone's parameter-name prefixes from the top (closest to the head) down; gradual
unfreezing opens them in that order. Parameters matching no prefix belong to the last (lowest) stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from pipeline.errors import ConfigError
from pipeline.stages.classify.attempts import Attempt, Head, ViTScale
from pipeline.weights import Resolved, resolve


@dataclass(frozen=True)
class Backbone:
    weights: str  # pipeline.weights registry name (its enum names the torchvision ImageNet weights)
    head: str  # dotted path of the final layer that the new head replaces
    stages: tuple[tuple[str, ...], ...]


def _resnet() -> tuple[tuple[str, ...], ...]:
    return (("layer4",), ("layer3",), ("layer2",), ("layer1",), ("conv1", "bn1"))


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("resnet18", "fc", _resnet()),
    "resnet34": Backbone("resnet34", "fc", _resnet()),
    "resnet50": Backbone("resnet50", "fc", _resnet()),
    "efficientnet_b0": Backbone("efficientnet_b0", "classifier.1",
                                tuple((f"features.{i}",) for i in range(8, -1, -1))),
    "vit_b_16": Backbone("vit_b_16", "heads.head",
                         (("encoder.ln", "encoder.layers.encoder_layer_11"),
                          *((f"encoder.layers.encoder_layer_{i}",) for i in range(10, -1, -1)),
                          ("conv_proj", "class_token", "encoder.pos_embedding"))),
}


def make_head(spec: Head, in_features: int, classes: int) -> nn.Module:
    if spec.kind == "linear":
        return nn.Linear(in_features, classes)
    return nn.Sequential(nn.Linear(in_features, spec.hidden), nn.BatchNorm1d(spec.hidden), nn.ReLU(inplace=True),
                         nn.Dropout(spec.dropout), nn.Linear(spec.hidden, classes))


def _pretrained_state(name: str, weights: Resolved, imgsz: int) -> dict[str, torch.Tensor]:
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    if name == "vit_b_16" and imgsz != 224:  # the checkpoint's position embeddings are for 14x14 patches
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(imgsz, 16, state)
    return state


class Member(nn.Module):
    """One backbone with its new head; knows which of its parameters are head and which stage."""

    def __init__(self, name: str, weights: Resolved, head: Head, classes: int, imgsz: int,
                 vit: ViTScale | None = None) -> None:
        super().__init__()
        spec = BACKBONES[name]
        if name == "vit_b_16" and vit is not None:  # the same family at another scale: no ImageNet weights exist
            if weights.path is not None:
                raise ConfigError(f"vit: a scaled ViT cannot load {weights.path} (ViT-B/16's weights)")
            self.net: nn.Module = VisionTransformer(imgsz, **vit.model_dump())
        else:
            kwargs: dict[str, Any] = {"image_size": imgsz} if name == "vit_b_16" else {}
            self.net = torchvision.models.get_model(name, weights=None, **kwargs)
        if weights.path is not None:
            self.net.load_state_dict(_pretrained_state(name, weights, imgsz))
        parent, _, attr = spec.head.rpartition(".")
        holder = self.net.get_submodule(parent) if parent else self.net
        old = getattr(holder, attr)
        setattr(holder, attr, make_head(head, old.in_features, classes))
        self.name, self.head_path, self.stages = name, spec.head, spec.stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def stage_of(self, param: str) -> int:
        """-1 for the head, else the index of the backbone stage (0 is the top)."""
        if param == self.head_path or param.startswith(self.head_path + "."):
            return -1
        for i, prefixes in enumerate(self.stages):
            if any(param == p or param.startswith(p + ".") for p in prefixes):
                return i
        return len(self.stages) - 1

    def open_stages(self, k: int) -> None:
        """Train the head and the top ``k`` backbone stages; freeze the rest (BatchNorm statistics too)."""
        for name, p in self.net.named_parameters():
            p.requires_grad_(self.stage_of(name) < k)
        for name, module in self.net.named_modules():
            if name and not any(p.requires_grad for p in module.parameters()) and len(list(module.parameters())):
                module.eval()


class Classifier(nn.Module):
    """One or more members; ``forward`` gives every member's logits (M, B, C), ``probs`` their mean softmax."""

    def __init__(self, members: list[Member]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])

    @staticmethod
    def probs(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1).mean(0)

    @property
    def depth(self) -> int:
        return max(len(m.stages) for m in self.members)

    def open_stages(self, k: int) -> None:
        self.train()
        for m in self.members:
            m.open_stages(k)

    def param_groups(self, lr_backbone: float, lr_head: float) -> list[dict[str, Any]]:
        head, backbone = [], []
        for m in self.members:
            for name, p in m.net.named_parameters():
                (head if m.stage_of(name) == -1 else backbone).append(p)
        return [{"params": backbone, "lr": lr_backbone, "name": "backbone"},
                {"params": head, "lr": lr_head, "name": "head"}]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        for m in self.members:
            for name, p in m.net.named_parameters():
                if m.stage_of(name) == -1:
                    yield p


def resolve_backbones(names: list[str], weights_dir: Path, allow_random_init: bool) -> dict[str, Resolved]:
    """Each backbone's ImageNet weights, looked up once per run (recorded as provenance)."""
    return {n: resolve(BACKBONES[n].weights, weights_dir, allow_random_init) for n in dict.fromkeys(names)}


def build(attempt: Attempt, classes: int, weights: dict[str, Resolved]) -> Classifier:
    return Classifier([Member(n, weights[n], attempt.head, classes, attempt.imgsz, attempt.vit)
                       for n in attempt.backbones])


def provenance(weights: Resolved) -> dict[str, Any]:
    return {**weights.provenance, "enum": weights.spec.enum}
