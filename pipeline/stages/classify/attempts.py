"""Attempt recipes: ``configs/classify/<name>.yaml`` layered over ``configs/classify/base.yaml``, validated once.

An attempt is everything that distinguishes one recipe from another (backbones, head, schedule, loss,
augmentation, long-tail method). The ``classify`` section of the main config may override epochs, image
size, batch and long-tail method for every attempt at once (profiles use that to shrink a run); a changed
epoch count scales the recipe's epoch-counted schedule (stage-one length, unfreezing interval, restart
period, plateau patience) with it, so a 4-epoch run of attempt A still unfreezes its backbone.

Each attempt has a fine-tuning variant (its own keys) and a from-scratch one: its ``scratch`` block (defaults in
``base.yaml``, an attempt file may add its own) merged over it, then the run-wide overrides, taken from the
``classify`` section merged with *its* ``scratch`` block. The from-scratch variant keeps the attempt's identity
(backbones, head, scheduler, loss, augmentation, MixUp, long-tail method); a scratch block may not change
``backbones`` or ``name``, but may scale ViT-B/16 down within its family (``vit``), which the attempts table
shows. ``classify.recipe`` picks the variant (``pipeline.training.recipes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import CONFIG_DIR, LONGTAIL, ClassifyConfig, Section, check_scratch, merge, read_yaml, validate
from pipeline.errors import ConfigError

BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "vit_b_16")
IDENTITY = ("backbones", "name", "id", "source")  # what a from-scratch variant keeps: it is the same attempt
ATTEMPT_DIR = CONFIG_DIR / "classify"


class Head(Section):
    kind: Literal["linear", "mlp"]
    hidden: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class Scheduler(Section):
    kind: Literal["cosine", "plateau", "warm_restarts"]
    eta_min: float = Field(ge=0)
    factor: float = Field(gt=0, lt=1)
    patience: int = Field(ge=0)
    t0: int = Field(ge=1)
    t_mult: int = Field(ge=1)


class Loss(Section):
    kind: Literal["ce", "focal"]
    label_smoothing: float = Field(ge=0, lt=1)
    focal_gamma: float = Field(ge=0)


class ViTScale(Section):
    """A smaller Vision Transformer of ViT-B/16's family (torchvision's ``VisionTransformer``): ImageNet weights
    exist only for ViT-B/16, so only a from-scratch variant may scale it down (86 M parameters do not learn from
    a few hundred images on two cores)."""

    patch_size: int = Field(ge=2)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    hidden_dim: int = Field(ge=8)
    mlp_dim: int = Field(ge=8)

    def label(self) -> str:
        return f"ViT/{self.patch_size} ({self.num_layers} layers, width {self.hidden_dim})"


class Attempt(Section):
    id: str
    name: str
    source: str
    backbones: list[str] = Field(min_length=1)
    head: Head
    epochs: int = Field(ge=1)
    batch: int = Field(ge=2)
    imgsz: int = Field(ge=16)
    lr_backbone: float = Field(gt=0)
    lr_head: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    freeze_epochs: int = Field(ge=0)
    unfreeze_every: int = Field(ge=0)
    scheduler: Scheduler
    loss: Loss
    augment: Literal["basic", "strong"]
    mixup: float = Field(ge=0)
    longtail: LONGTAIL
    effective_beta: float = Field(ge=0, lt=1)
    vit: ViTScale | None = None  # vit_b_16 at another scale (null: ViT-B/16 as published)
    scratch: dict[str, Any] = Field(default_factory=dict)  # the keys the from-scratch variant changes
    recipe: Literal["finetune", "scratch"] = "finetune"  # which variant this is (set by ``load_attempt``)

    @field_validator("backbones")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in BACKBONES:
                raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
        return v

    @model_validator(mode="after")
    def _vit_size(self) -> Attempt:
        if self.vit is not None and "vit_b_16" not in self.backbones:
            raise ValueError("vit: scales vit_b_16, which this attempt does not use")
        patch = self.vit.patch_size if self.vit else 16
        if "vit_b_16" in self.backbones and self.imgsz % patch:
            raise ValueError(f"imgsz {self.imgsz}: vit_b_16 needs a multiple of its patch size {patch}")
        if self.vit is not None and self.vit.hidden_dim % self.vit.num_heads:
            raise ValueError(f"vit: hidden_dim {self.vit.hidden_dim} is not divisible by num_heads "
                             f"{self.vit.num_heads}")
        return self

    def backbone_label(self) -> str:
        """The backbones as the attempts table names them (a scaled ViT by its size)."""
        return " + ".join(self.vit.label() if b == "vit_b_16" and self.vit else b for b in self.backbones)

    def hyperparameters(self) -> dict[str, Any]:
        """What the attempts table and the summary compare, flattened."""
        return {"recipe": self.recipe, "backbone": self.backbone_label(), "head": self.head.kind,
                "epochs": self.epochs,
                "batch": self.batch, "imgsz": self.imgsz, "lr_backbone": self.lr_backbone, "lr_head": self.lr_head,
                "optimizer": "AdamW", "weight_decay": self.weight_decay,
                "two_stage": self.freeze_epochs > 0, "gradual_unfreeze": self.unfreeze_every > 0,
                "scheduler": self.scheduler.kind, "loss": self.loss.kind,
                "label_smoothing": self.loss.label_smoothing, "augment": self.augment, "mixup": self.mixup,
                "longtail": self.longtail}


def _attempt_file(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = ATTEMPT_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in ATTEMPT_DIR.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"{path}: no attempt {name!r} (known: {', '.join(known)}; or give a YAML path)")
    return path


def load_attempt(name: str, c: ClassifyConfig, longtail: str | None = None, scratch: bool = False) -> Attempt:
    """One attempt with the run-wide overrides applied; ``longtail`` (the comparison) wins over both. ``scratch``:
    its from-scratch variant (its scratch block, then the run-wide overrides of ``c`` merged with its own)."""
    from pipeline.training.recipes import with_scratch

    base = ATTEMPT_DIR / "base.yaml"
    path = _attempt_file(name)
    layers: list[tuple[str, dict[str, Any]]] = [(str(base), read_yaml(base)), (str(path), read_yaml(path))]
    recipe = merge(layers[0][1], layers[1][1])
    if scratch:
        block = recipe.get("scratch")
        recipe = merge(recipe, block) if isinstance(block, dict) else recipe
        c = with_scratch(c)
    overrides = {k: v for k, v in {"epochs": c.epochs, "imgsz": c.imgsz, "batch": c.batch,
                                   "longtail": longtail or c.longtail}.items() if v is not None}
    if c.epochs is not None and isinstance(recipe.get("epochs"), int) and recipe["epochs"] != c.epochs:
        overrides.update(_rescaled(recipe, c.epochs / recipe["epochs"]))
    if overrides:
        layers.append(("classify section of the config", overrides))
    merged = {**merge(recipe, overrides), "id": Path(name).stem, "source": str(path),
              "recipe": "scratch" if scratch else "finetune"}
    attempt = validate(Attempt, merged, layers)
    if not scratch and attempt.vit is not None:
        source = next((n for n, layer in reversed(layers) if layer.get("vit") is not None), str(path))
        raise ConfigError(f"{source}: vit: a scaled ViT has no ImageNet weights to fine-tune; set it in the "
                          "attempt's scratch block")
    if not scratch:  # the from-scratch variant must validate too, before any training
        for key in IDENTITY:
            if key in attempt.scratch:
                source = next((n for n, layer in reversed(layers) if key in (layer.get("scratch") or {})), str(path))
                raise ConfigError(f"{source}: scratch.{key}: an attempt's from-scratch variant keeps its {key} (it is "
                                  "the same attempt from a random initialisation); write another attempt file instead")
        check_scratch(attempt, layers, ())
    return attempt


def _rescaled(recipe: dict[str, Any], ratio: float) -> dict[str, Any]:
    """A shorter (or longer) run keeps the recipe's shape: its epoch-counted schedule scales with it."""
    def scale(v: Any, floor: int) -> Any:
        return max(floor, round(v * ratio)) if isinstance(v, int) and v > 0 else v

    sched = recipe.get("scheduler") or {}
    return {"freeze_epochs": scale(recipe.get("freeze_epochs"), 1), "unfreeze_every": scale(recipe.get("unfreeze_every"), 1),
            "scheduler": {"t0": scale(sched.get("t0"), 1), "patience": scale(sched.get("patience"), 0)}}


def load_attempts(c: ClassifyConfig) -> list[Attempt]:
    """Every attempt of the run, validated before any training starts."""
    attempts = [load_attempt(name, c) for name in c.attempts]
    ids = [a.id for a in attempts]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"classify.attempts: attempt ids must be unique (got {ids})")
    if c.compare is not None and c.compare.attempt not in ids:
        raise ConfigError(f"classify.compare.attempt: {c.compare.attempt!r} is not one of classify.attempts ({ids})")
    return attempts
