"""Weight files in the publishers' formats, with random values, for the tests of the pretrained path.

Each builder writes what its publisher releases, so that the stages load it through exactly the code that
loads the real file; only the numbers are random (seeded: every build holds the same weights, and but for the
TorchScript archive, whose code records vary, the same bytes):

* SAM ``sam_vit_b_01ec64.pth``: ``torch.save(sam.state_dict())`` of the stock ``sam_model_registry["vit_b"]()``.
* Ultralytics ``yolov8s-worldv2.pt``: the checkpoint as released, i.e. as ``strip_optimizer`` leaves it: the EMA
  ``WorldModel`` in float16 with frozen parameters and its training args as a dict, no optimizer, no EMA,
  ``epoch`` -1, and the release's keys.
* OpenAI CLIP ``ViT-B-32.pt``: a TorchScript archive of the fp16 model (``clip.load`` reads its ``state_dict()``
  and hands it to ``clip.model.build_model``), or the same weights as a plain state_dict, which ``clip.load``
  accepts too.
* torchvision ``<arch>-<hash>.pth``: ``torch.save(torchvision.models.get_model(arch).state_dict())``.

The files are random, so they cannot match the published checksums: ``place`` puts them in a ``weights/``
folder with the verification stamp ``pipeline.weights`` itself writes once a file has passed its checks (the
registry then trusts the file as it is, without re-hashing). ``WeightStore`` builds each file once and places
it by hard link (copy where linking fails), so a session pays for each large file once.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.fetch import file_digest
from pipeline.weights import _write_stamp, archive_format, get_spec

SEED = 0
RELEASE_DATE = "2024-09-30T00:00:00+00:00"  # fixed, so that the same seed gives the same checkpoint


def build_sam(path: Path, arch: str = "vit_b", seed: int = SEED) -> Path:
    """Segment Anything's official checkpoint format: the stock model's state_dict."""
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    sam = sam_model_registry[arch]()
    torch.save(sam.state_dict(), path)
    return path


# The keys of Ultralytics' released asset checkpoints, in their order (strip_optimizer's metadata first).
YOLO_RELEASE_KEYS = ("date", "version", "license", "docs", "epoch", "best_fitness", "model", "ema", "updates",
                     "optimizer", "train_args", "train_metrics", "train_results")


def build_yolo_world(path: Path, arch: str = "yolov8s-worldv2", seed: int = SEED) -> Path:
    """An Ultralytics release: what ``strip_optimizer`` makes of a training checkpoint of ``WorldModel(arch.yaml)``."""
    from ultralytics import __version__
    from ultralytics.nn.tasks import WorldModel
    from ultralytics.utils import DEFAULT_CFG_DICT, DEFAULT_CFG_KEYS, YAML
    from ultralytics.utils.checks import check_yaml

    torch.manual_seed(seed)
    model = WorldModel(f"{arch}.yaml", verbose=False)
    train_args = {**DEFAULT_CFG_DICT, "model": f"{arch}.yaml", "data": "Objects365v1.yaml", "epochs": 100}
    train_args = {k: v for k, v in train_args.items() if k in DEFAULT_CFG_KEYS}
    model.names = YAML.load(check_yaml("coco.yaml"))["names"]  # released with the 80 COCO classes set
    model.args = dict(train_args)  # strip_optimizer: IterableSimpleNamespace -> dict
    model.half()  # strip_optimizer: "to FP16"
    for p in model.parameters():
        p.requires_grad = False
    ckpt = {
        "date": RELEASE_DATE, "version": __version__, "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com", "epoch": -1, "best_fitness": None, "model": model, "ema": None,
        "updates": None, "optimizer": None, "train_args": train_args,
        "train_metrics": {"metrics/precision(B)": 0.0, "metrics/recall(B)": 0.0, "metrics/mAP50(B)": 0.0,
                          "metrics/mAP50-95(B)": 0.0, "val/box_loss": 0.0, "val/cls_loss": 0.0,
                          "val/dfl_loss": 0.0, "fitness": 0.0},
        "train_results": {"epoch": [1], "metrics/mAP50(B)": [0.0]},
    }
    assert tuple(ckpt) == YOLO_RELEASE_KEYS
    torch.save(ckpt, path)
    return path


def clip_model(seed: int = SEED) -> torch.nn.Module:
    """OpenAI's ViT-B/32 as released: ``clip.model.CLIP`` with ViT-B/32's sizes, its layers in fp16 (``convert_weights``,
    which ``build_model`` applies too; LayerNorms stay fp32, as clip's fp16-safe LayerNorm expects)."""
    from clip.model import CLIP, convert_weights

    torch.manual_seed(seed)
    # embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length, vocab_size,
    # transformer_width, transformer_heads, transformer_layers: ViT-B/32's hyperparameters
    model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    convert_weights(model)
    return model.eval()


def build_clip_torchscript(path: Path, seed: int = SEED) -> Path:
    """OpenAI's release: a traced TorchScript archive whose ``state_dict()`` also holds ``input_resolution``,
    ``context_length`` and ``vocab_size`` (the keys ``build_model`` deletes) as tensors, as the JIT path reads
    ``model.input_resolution.item()``."""
    import clip

    model = clip_model(seed)
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, 224, 224, dtype=torch.float16)
    text = clip.tokenize(["a photo"])
    with torch.no_grad(), warnings.catch_warnings():  # the two methods clip.load's JIT path patches (``forward``
        warnings.simplefilter("ignore", FutureWarning)  # left out: it only costs time); "trace is deprecated"
        traced = torch.jit.trace_module(model, {"encode_image": (image,), "encode_text": (text,)}, check_trace=False)
    traced.save(str(path))
    return path


def build_clip_state_dict(path: Path, seed: int = SEED) -> Path:
    """The same weights as the TorchScript release, saved as a plain state_dict (``clip.load`` takes both)."""
    torch.save(clip_model(seed).state_dict(), path)
    return path


def build_torchvision(path: Path, arch: str, seed: int = SEED) -> Path:
    """A torchvision checkpoint as download.pytorch.org serves it: the model's state_dict."""
    import torchvision

    torch.manual_seed(seed)
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path


def builder(name: str, variant: str | None = None) -> Callable[[Path], Path]:
    """The builder of registry entry ``name`` (``variant="state_dict"`` for CLIP's plain state_dict)."""
    spec = get_spec(name)
    if spec.family == "sam":
        return lambda p: build_sam(p, spec.arch)
    if spec.family == "yolo-world":
        return lambda p: build_yolo_world(p, spec.arch)
    if spec.family == "clip":
        return build_clip_state_dict if variant == "state_dict" else build_clip_torchscript
    if spec.family == "torchvision":
        return lambda p: build_torchvision(p, spec.arch)
    raise ValueError(f"no builder for {spec.family}")


def stamp(name: str, path: Path, digest: str | None = None) -> Path:
    """Write the verification stamp ``pipeline.weights`` writes for ``path`` once it has passed its checks: the
    file as it is (size, mtime), the registry's checksum, its sha256 and its archive format (``archive_format``
    refuses a file the family's loader cannot read, as the registry would)."""
    spec = get_spec(name)
    _write_stamp(spec, path, digest or file_digest(path), archive_format(spec, path))
    return path.with_name(f".{path.name}.verified.json")


class WeightStore:
    """Each file built once (on first use) in ``root``, read-only; ``place`` links it into a weights folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.built: dict[tuple[str, str | None], tuple[Path, str]] = {}

    def get(self, name: str, variant: str | None = None) -> tuple[Path, str]:
        """The built file of registry entry ``name`` and its sha256."""
        key = (name, variant)
        if key not in self.built:
            folder = self.root / (variant or "release")
            folder.mkdir(parents=True, exist_ok=True)
            with torch.random.fork_rng(devices=[]):  # seeded builds leave the session's random state alone
                path = builder(name, variant)(folder / get_spec(name).filename)
            path.chmod(0o444)  # shared by hard links: no test may change it
            self.built[key] = (path, file_digest(path))
        return self.built[key]

    def place(self, weights_dir: Path, *names: str, variant: str | None = None) -> Path:
        """Put the files of ``names`` in ``weights_dir`` under their registry file names, each with a valid stamp."""
        weights_dir = Path(weights_dir)
        weights_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            src, digest = self.get(name, variant)
            dst = weights_dir / src.name
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            stamp(name, dst, digest)
        return weights_dir
