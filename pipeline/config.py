"""Configuration: YAML layers merged in one place and validated once.

Defaults live only in ``configs/default.yaml``; the models below hold types and bounds, not values, so a
default cannot drift between code and YAML. Layers, later wins:

1. ``configs/default.yaml``
2. ``configs/<category>.yaml`` (if present: class prompts and category specifics)
3. ``configs/profiles/<profile>.yaml`` (``--profile``: cpu, full, tiny; ``auto``: full with CUDA, else cpu)
4. ``--config FILE`` (any number)
5. ``--set key.sub=value`` overrides from the command line (values parsed as YAML)

Every error is one line naming the file and the dotted key.

The training sections (``yolo``, ``sam``, ``classify``) each hold two recipes: the section's own keys are the
fine-tuning recipe (pretrained weights present), and its ``scratch`` block the keys that the from-scratch recipe
(random initialisation) changes; ``recipe`` (auto | finetune | scratch) picks one (``pipeline.training.recipes``).
Per key, the latest layer wins: a layer that sets a section key after the layer that set the same key in its
``scratch`` block means it for both recipes, so ``--set yolo.epochs=5`` gives 5 epochs whichever recipe runs,
while ``--set yolo.scratch.epochs=5`` changes only the from-scratch one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

CONFIG_DIR = Path(os.environ.get("PIPE_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+|\d+(,\d+)*)$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


RECIPE = Literal["auto", "finetune", "scratch"]
TRAINING = ("yolo", "sam", "classify")  # the sections with a fine-tuning and a from-scratch recipe
RECIPE_KEYS = ("recipe", "scratch")  # what a scratch block may not hold: it holds the section's own keys


class Recipes(Section):
    """A training section's recipe choice and the keys its from-scratch recipe changes.

    ``scratch`` is checked at load (``load_config``): the section merged with it must validate as the section.
    """

    recipe: RECIPE
    scratch: dict[str, Any]
    SCRATCH_KEYS: ClassVar[tuple[str, ...] | None] = None  # the keys a scratch block may hold (None: any of the section's)

    @field_validator("scratch", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v


class PathsConfig(Section):
    datasets: str = Field(description="where converted datasets and synthetic data are written")
    runs: str = Field(description="where stage outputs (metrics, weights, reports) are written")
    weights: str = Field(description="where pretrained weight files are looked up first")


class DataConfig(Section):
    root: str | None = Field(description="MVTec AD root; null: $MVTEC_ROOT, else datasets/mvtec")
    synthetic_root: str = Field(description="where `pipe synth` writes its stand-in categories")
    mask_threshold: int = Field(ge=1, le=255, description="non-binary masks are thresholded here")


class SynthConfig(Section):
    size: int = Field(ge=32, le=4096)
    train_good: int = Field(ge=0)
    test_good: int = Field(ge=0)
    test_per_defect: int = Field(ge=1)
    seed: int


class SplitRatios(Section):
    """Fractions of MVTec's test/ images per split.

    Checked as a whole rather than normalised: a ``--set convert.split={train: .8, test: .2}`` merges with
    the default ``val`` and would otherwise be silently rescaled to ratios nobody asked for.
    """

    train: float
    val: float
    test: float

    @model_validator(mode="after")
    def _fractions(self) -> SplitRatios:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        total = sum(parts.values())
        if all(0 < v < 1 for v in parts.values()) and abs(total - 1) <= 1e-6:
            return self
        got = " + ".join(f"{k} {v:g}" for k, v in parts.items())
        raise ValueError(f"train, val and test must each be in (0, 1) and sum to 1 (got {total:g}: {got}); give all "
                         "three, e.g. {train: 0.6, val: 0.2, test: 0.2} (keys not given keep their earlier value)")


class ConvertConfig(Section):
    split: SplitRatios
    add_train_good: bool
    merge_distance: int = Field(ge=0)
    min_area: int = Field(ge=0)
    simplify: float = Field(ge=0)
    coco_min_iou: float = Field(ge=0, le=1)
    yolo_seg_min_iou: float = Field(ge=0, le=1)
    link: Literal["hardlink", "symlink", "copy"]
    workers: int = Field(ge=0)
    preview: int = Field(ge=0)


class YoloAugment(Section):
    mosaic: float = Field(ge=0, le=1)
    close_mosaic: int = Field(ge=0)
    mixup: float = Field(ge=0, le=1)
    degrees: float = Field(ge=0, le=180)
    translate: float = Field(ge=0, le=1)
    scale: float = Field(ge=0)
    fliplr: float = Field(ge=0, le=1)
    flipud: float = Field(ge=0, le=1)
    hsv_h: float = Field(ge=0, le=1)
    hsv_s: float = Field(ge=0, le=1)
    hsv_v: float = Field(ge=0, le=1)


class YoloConfig(Recipes):
    model: Literal["yolov8s-worldv2", "yolov8m-worldv2", "yolov8l-worldv2", "yolov8x-worldv2"]
    scale: Literal["n", "s", "m", "l", "x"] | None  # built from its yaml at this scale (null: the model's own)
    text_embeddings: str | None
    epochs: int = Field(ge=1)
    imgsz: int = Field(ge=32, multiple_of=32)
    batch: int = Field(ge=1)
    nbs: int = Field(ge=1)
    optimizer: Literal["SGD", "Adam", "AdamW", "auto"]
    lr0: float = Field(gt=0)
    lrf: float = Field(gt=0, le=1)
    cos_lr: bool
    weight_decay: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0)
    freeze: int = Field(ge=0, le=22)
    patience: int = Field(ge=0)
    amp: bool
    workers: int = Field(ge=0)
    augment: YoloAugment
    conf: float = Field(ge=0, le=1)
    eval_conf: float = Field(ge=0, le=1)
    iou: float = Field(gt=0, le=1)
    overlays: int = Field(ge=0)


class SamLoss(Section):
    focal: float = Field(ge=0)
    dice: float = Field(ge=0)
    iou: float = Field(ge=0)


class SamConfig(Recipes):
    model: Literal["vit_b", "vit_l", "vit_h", "vit_tiny"]
    epochs: int = Field(ge=1)
    batch: int = Field(ge=1)
    accumulate: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0)
    unfreeze_blocks: int = Field(ge=0)
    box_jitter: float = Field(ge=0, le=1)
    points: int = Field(ge=0)
    views: Literal[1, 2, 4]
    loss: SamLoss
    focal_gamma: float = Field(ge=0)
    focal_alpha: float = Field(ge=0, le=1)
    cache: bool
    cache_dir: str | None
    amp: bool
    detector_conf: float = Field(ge=0, le=1)
    overlays: int = Field(ge=0)


class ClassifyCompare(Section):
    attempt: str
    longtail: Literal["balanced_sampling", "effective_number", "balanced_softmax"]


LONGTAIL = Literal["none", "balanced_sampling", "effective_number", "balanced_softmax"]


class ClassifyConfig(Recipes):
    # the run-wide overrides of every attempt: the only keys of this section an attempt's variant reads (an attempt's
    # own from-scratch keys are in its scratch block, configs/classify/)
    SCRATCH_KEYS = ("epochs", "imgsz", "batch", "longtail")
    attempts: list[str] = Field(min_length=1)
    classes: list[str] | None
    add_train_good: bool
    folds: int = Field(ge=0)
    longtail: LONGTAIL | None
    compare: ClassifyCompare | None
    epochs: int | None = Field(ge=1)
    imgsz: int | None = Field(ge=16)
    batch: int | None = Field(ge=2)
    select: Literal["macro_f1", "balanced_accuracy", "accuracy", "loss"]
    cache: bool
    channels_last: bool
    amp: bool
    workers: int = Field(ge=0)

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v in (1, 2):
            raise ValueError("use 0 (the shared split only) or K >= 3 (each fold tests on one part, selects on "
                             "the next and trains on the rest)")
        return v


class AnomalyConfig(Section):
    backbone: Literal["wide_resnet50_2", "resnet18"]
    layers: list[str] = Field(min_length=1)
    imgsz: int = Field(ge=32)
    target_dim: int = Field(ge=1)
    coreset_ratio: float = Field(gt=0, le=1)
    projection_dim: int = Field(ge=1)
    num_neighbors: int = Field(ge=1)
    sigma: float = Field(gt=0)
    batch: int = Field(ge=1)
    holdout: float = Field(gt=0, lt=1)
    overlays: int = Field(ge=0)


class PredictConfig(Section):
    conf: float | None = Field(ge=0, le=1)
    iou: float | None = Field(gt=0, le=1)
    mask_threshold: float
    batch: int = Field(ge=1)
    max_det: int = Field(ge=1)
    backend: Literal["torch", "onnx"]

    def box_conf(self, cfg: Config) -> float:
        """The box score threshold: this section's, else the one SAM's end-to-end evaluation prompts with."""
        return cfg.sam.detector_conf if self.conf is None else self.conf

    def nms_iou(self, cfg: Config) -> float:
        return cfg.yolo.iou if self.iou is None else self.iou


class Config(Section):
    category: str
    device: str
    seed: int
    allow_random_init: bool
    paths: PathsConfig
    data: DataConfig
    synth: SynthConfig
    convert: ConvertConfig
    yolo: YoloConfig
    sam: SamConfig
    classify: ClassifyConfig
    anomaly: AnomalyConfig
    predict: PredictConfig
    classes: dict[str, list[str]] = Field(description="defect class -> text prompts (first is its name)")

    @field_validator("classes")
    @classmethod
    def _prompts(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, phrases in v.items():
            if not phrases or any(not p.strip() or "/" in p for p in phrases):
                raise ValueError(f"{name}: give one or more non-empty phrases without '/' (ultralytics splits on it)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError("expected auto, cpu, cuda, cuda:N or a GPU list like 0,1")
        return v


def read_yaml(path: Path) -> dict[str, Any]:
    """One config layer as a mapping; any OS, decoding or YAML error is a one-line ``ConfigError``."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file; pass a YAML file (e.g. {path}/<name>.yaml)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (check the path, or list configs/ for what exists)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc}); check the file's permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "classes":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=1`` -> (["a", "b"], 1); values are parsed as YAML so numbers, booleans and lists work."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set synth.size=128")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _nested(keys: Sequence[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(keys):
        out = {key: out}
    return out


def _has_key(layer: Mapping[str, Any], loc: Sequence[Any]) -> bool:
    node: Any = layer
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def load_config(
    category: str = "bottle",
    profile: str | None = None,
    files: Sequence[Path] = (),
    overrides: Sequence[str] = (),
) -> Config:
    """Merge the layers for ``category`` and validate; raise ``ConfigError`` naming the file and key."""
    layers: list[tuple[str, dict[str, Any]]] = [(str(CONFIG_DIR / "default.yaml"), read_yaml(CONFIG_DIR / "default.yaml"))]
    category_file = CONFIG_DIR / f"{category}.yaml"
    if category_file.is_file():
        layers.append((str(category_file), read_yaml(category_file)))
    if profile == "auto":  # the full recipe where there is a GPU, the CPU-sized one elsewhere
        from pipeline.device import cuda_ruled_out  # torch-free: a skip must not import torch to pick a profile

        profile = "full" if cuda_ruled_out() is None else "cpu"
    if profile:
        profile_file = CONFIG_DIR / "profiles" / f"{profile}.yaml"
        if not profile_file.is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "profiles").glob("*.yaml"))
            raise ConfigError(f"{profile_file}: no such profile {profile!r} (known: {', '.join(known)})")
        layers.append((str(profile_file), read_yaml(profile_file)))
    layers += [(str(f), read_yaml(Path(f))) for f in files]
    for item in overrides:
        keys, value = parse_override(item)
        layers.append((f"--set {item}", _nested(keys, value)))

    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = merge(merged, layer)
    merged["category"] = category
    for name in TRAINING:
        if isinstance(merged.get(name), dict):
            merged[name] = _unshadowed(name, merged[name], layers)
    cfg = validate(Config, merged, layers)
    for name in TRAINING:
        check_scratch(getattr(cfg, name), layers, (name,))
    _check_classes(cfg, layers)
    return cfg


M = TypeVar("M", bound=BaseModel)


def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The dotted paths a layer sets below ``node`` (an empty mapping sets nothing)."""
    if isinstance(node, Mapping):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*prefix, str(k)))]
    return [prefix] if prefix else []


def _drop(block: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """``block`` less the key at ``path`` (and any mapping that leaves empty)."""
    head, rest = path[0], path[1:]
    if head not in block:
        return block
    if rest and isinstance(block[head], dict):
        inner = _drop(block[head], rest)
        return {**block, head: inner} if inner else {k: v for k, v in block.items() if k != head}
    return {k: v for k, v in block.items() if k != head}


def _unshadowed(name: str, section: dict[str, Any], layers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """``section`` with its ``scratch`` block less every key that a later layer set in the section itself.

    The latest statement about a key wins: ``configs/default.yaml`` gives the from-scratch recipe 200 YOLO epochs,
    a profile or ``--set yolo.epochs=5`` that comes after it means its value for both recipes, and a layer that
    wants a from-scratch value of its own sets ``yolo.scratch.epochs`` too (in the same layer, the scratch value
    applies to the from-scratch recipe)."""
    block = section.get("scratch")
    if not isinstance(block, dict) or not block:
        return section
    own: dict[tuple[str, ...], int] = {}
    scratch: dict[tuple[str, ...], int] = {}
    for i, (_, layer) in enumerate(layers):
        part = layer.get(name)
        if not isinstance(part, Mapping):
            continue
        for leaf in _leaves({k: v for k, v in part.items() if k not in RECIPE_KEYS}):
            own[leaf] = i
        for leaf in _leaves(part.get("scratch")):
            scratch[leaf] = i
    for leaf, at in scratch.items():
        if any(later > at and (key[:len(leaf)] == leaf or leaf[:len(key)] == key) for key, later in own.items()):
            block = _drop(block, leaf)
    return {**section, "scratch": block}


def check_scratch(section: Section, layers: list[tuple[str, dict[str, Any]]], where: tuple[str, ...]) -> None:
    """The section merged with its ``scratch`` block must validate as the section; ``where`` is the section's key
    path in the layers (``("yolo",)``), so the one-line error names the layer and ``yolo.scratch.<key>``."""
    block = section.scratch
    for key in RECIPE_KEYS:
        if key in block:
            loc = [*where, "scratch", key]
            source = next((n for n, layer in reversed(layers) if _has_key(layer, loc)), layers[0][0])
            raise ConfigError(f"{source}: {'.'.join(loc)}: a scratch block holds the section's own settings (the "
                              f"values its from-scratch recipe changes), not {key!r}")
    allowed = getattr(type(section), "SCRATCH_KEYS", None)
    for key in block:
        if allowed is not None and key not in allowed:
            loc = [*where, "scratch", key]
            source = next((n for n, layer in reversed(layers) if _has_key(layer, loc)), layers[0][0])
            raise ConfigError(f"{source}: {'.'.join(loc)}: the from-scratch recipe changes only {', '.join(allowed)} "
                              f"here (got {key!r})")
    try:
        type(section).model_validate(merge(section.model_dump(), block))
    except ValidationError as exc:
        raise _error(exc, layers, [*where, "scratch"]) from None


def validate(model: type[M], merged: dict[str, Any], layers: list[tuple[str, dict[str, Any]]]) -> M:
    """Validate merged layers; the one error names the layer (file or --set) that set the bad key."""
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise _error(exc, layers) from None


def _error(exc: ValidationError, layers: list[tuple[str, dict[str, Any]]], prefix: Sequence[str] = ()) -> ConfigError:
    """The first validation error as one line naming the layer that set the key (``prefix``: where the validated
    mapping sits in the layers, e.g. ``yolo.scratch``)."""
    err = exc.errors()[0]
    loc = [*prefix, *err["loc"]]
    key = ".".join(str(p) for p in loc) or "(top level)"
    source = next((name for name, layer in reversed(layers) if _has_key(layer, loc)), None)
    if source is None:  # a check of the whole mapping (no key of its own): the layer that set the mapping
        source = next((name for name, layer in reversed(layers) if prefix and _has_key(layer, prefix)), layers[0][0])
    if err["type"] == "extra_forbidden":
        msg = f"unknown key (typo? see {layers[0][0]} for every key)"
    elif err["type"] == "missing":
        source = layers[0][0]
        msg = f"missing key (every key needs a default in {layers[0][0]})"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "(got " not in msg:  # a validator that already quotes the value it rejects says it better
            msg += f" (got {err.get('input')!r})"
    return ConfigError(f"{source}: {key}: {msg}")


def _check_classes(cfg: Config, layers: list[tuple[str, dict[str, Any]]]) -> None:
    """A prompt for a class the category does not have is a typo that would silently never be used."""
    from pipeline.data.categories import CATEGORIES

    spec = CATEGORIES.get(cfg.category)
    if spec is None:
        return
    for name in cfg.classes:
        if name not in spec.defects:
            source = next((n for n, layer in reversed(layers) if _has_key(layer, ["classes", name])), layers[0][0])
            raise ConfigError(f"{source}: classes.{name}: {cfg.category} has no defect class {name!r} "
                              f"(known: {', '.join(spec.defects)})")
    for name in cfg.classify.classes or []:
        if name not in spec.classes:
            source = next((n for n, layer in reversed(layers) if _has_key(layer, ["classify", "classes"])), layers[0][0])
            raise ConfigError(f"{source}: classify.classes: {cfg.category} has no class {name!r} "
                              f"(known: {', '.join(spec.classes)})")


def dump(cfg: Config) -> dict[str, Any]:
    """The resolved config, recorded in every output so a run can be reproduced."""
    return cfg.model_dump(mode="json")
