"""YOLO-World models from the weights registry: the pretrained checkpoint, or a seeded random init built from the
architecture's yaml (at the scale the recipe asks for: ultralytics reads it from the yaml file's name)."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pipeline.stages.yolo import offline
from pipeline.weights import Resolved

log = logging.getLogger(__name__)
_SCALE = re.compile(r"^(yolov8)([nsmlx])(-.*)$")


def scale_of(arch: str) -> str:
    """``yolov8s-worldv2`` -> ``s``."""
    m = _SCALE.match(arch)
    if not m:
        raise ValueError(f"{arch}: not a yolov8<scale>-... architecture name")
    return m.group(2)


def scaled(arch: str, scale: str | None) -> str:
    """The architecture at another scale of the same family: ``yolov8s-worldv2`` at ``n`` is ``yolov8n-worldv2``."""
    return arch if scale is None else _SCALE.sub(rf"\g<1>{scale}\g<3>", arch)


def start(resolved: Resolved, random_init: bool, scale: str | None, why: str = "") -> tuple[Resolved, dict[str, Any]]:
    """What training starts from, and its weights record: the pretrained checkpoint ``resolved`` found, or (when
    ``random_init``) the architecture built from its yaml at ``scale`` (None: the model's own), seeded.

    The record is ``Resolved.provenance`` plus the ``scale`` actually built and, for a built model, the yaml it
    was built from; when pretrained weights were present but the recipe trains from scratch, a ``note`` says so."""
    own = scale_of(resolved.spec.arch)
    if not random_init:
        if scale not in (None, own):
            log.warning(f"yolo.scale {scale} ignored: the pretrained {resolved.spec.name} checkpoint is at scale {own} "
                        "(a scale applies to a model built from its yaml)")
        return resolved, {**resolved.provenance, "scale": own}
    arch = scaled(resolved.spec.arch, scale)
    spec = resolved.spec if arch == resolved.spec.arch else replace(
        resolved.spec, name=arch, filename=f"{arch}.pt", url="", arch=arch)
    built = Resolved(spec, None, "random-init", None)
    record = {**built.provenance, "scale": scale or own, "built_from": f"{arch}.yaml"}
    if resolved.path is not None:
        record["note"] = (f"pretrained {resolved.spec.name} weights present ({resolved.path}) but not used"
                          + (f": {why}" if why else ""))
    return built, record


def source(resolved: Resolved) -> str:
    """What ultralytics' trainer is given as ``model``: the checkpoint file, or the architecture YAML."""
    return str(resolved.path) if resolved.path else f"{resolved.spec.arch}.yaml"


def load(path_or_yaml: str | Path, seed: int = 0) -> torch.nn.Module:
    """A float32 ``WorldModel`` in eval mode from a checkpoint (``.pt``) or an architecture YAML (seeded)."""
    offline.no_downloads()  # before ultralytics is first imported (``pipe predict`` may import it here first)
    from ultralytics.nn.tasks import WorldModel, load_checkpoint

    if str(path_or_yaml).endswith(".pt"):
        model = load_checkpoint(str(path_or_yaml), device="cpu")[0]
    else:
        torch.manual_seed(seed)
        model = WorldModel(str(path_or_yaml), verbose=False)
    return model.float().eval()
