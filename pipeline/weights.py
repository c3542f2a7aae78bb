"""The weights registry: one place that turns a model name into a verified file, or says why not.

Order: ``weights/<file>`` first, then the official download (verified against the publisher's checksum),
then either a one-line error with the manual fix or, only when the user allowed it, a random
initialisation. Whatever happened is returned as a ``Resolved`` whose ``provenance`` every dependent
output records, so a number from an untrained model can never pass for a pretrained one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.console import loud
from pipeline.errors import WeightsError
from pipeline.fetch import FetchError, fetch, file_digest, verify
from pipeline.io import read_json, write_json

_YOLO = "https://github.com/ultralytics/assets/releases/download/v8.3.0/{}.pt"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything/{}"
_CLIP = "https://openaipublic.azureedge.net/clip/models/{}/{}"


@dataclass(frozen=True)
class WeightSpec:
    name: str
    family: str  # yolo-world | sam | torchvision | clip
    filename: str
    url: str
    sha256: str | None = None  # full published sha256
    sha256_prefix: str | None = None  # torch hub convention: the prefix in the file name
    md5: str | None = None
    enum: str | None = None  # torchvision weights enum, e.g. ResNet50_Weights.IMAGENET1K_V2
    arch: str | None = None  # builder name within its family (vit_b, resnet50, ViT-B/32)

    @property
    def checksum(self) -> str:
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        if self.sha256_prefix:
            return f"sha256-prefix:{self.sha256_prefix}"
        return "none published"


def _torchvision(name: str, enum: str, filename: str) -> WeightSpec:
    prefix = filename.rsplit("-", 1)[1].split(".")[0]
    return WeightSpec(name, "torchvision", filename, f"https://download.pytorch.org/models/{filename}",
                      sha256_prefix=prefix, enum=enum, arch=name)


REGISTRY: dict[str, WeightSpec] = {
    w.name: w
    for w in [
        # Ultralytics publishes no checksums for its assets: the file's sha256 is recorded instead.
        *(WeightSpec(f"yolov8{s}-worldv2", "yolo-world", f"yolov8{s}-worldv2.pt", _YOLO.format(f"yolov8{s}-worldv2"),
                     arch=f"yolov8{s}-worldv2") for s in "smlx"),
        WeightSpec("sam_vit_b", "sam", "sam_vit_b_01ec64.pth", _SAM.format("sam_vit_b_01ec64.pth"),
                   md5="01ec64d29a2fca3f0661936605ae66f8", arch="vit_b"),
        WeightSpec("sam_vit_l", "sam", "sam_vit_l_0b3195.pth", _SAM.format("sam_vit_l_0b3195.pth"),
                   md5="0b3195507c641ddb6910d2bb5adee89c", arch="vit_l"),
        WeightSpec("sam_vit_h", "sam", "sam_vit_h_4b8939.pth", _SAM.format("sam_vit_h_4b8939.pth"),
                   md5="4b8939a88964f0f4ff5f5b2642c598a6", arch="vit_h"),
        WeightSpec("clip_vit_b32", "clip", "ViT-B-32.pt",
                   _CLIP.format("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
                   sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", arch="ViT-B/32"),
        _torchvision("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth"),
        _torchvision("resnet34", "ResNet34_Weights.IMAGENET1K_V1", "resnet34-b627a593.pth"),
        _torchvision("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
        _torchvision("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1", "efficientnet_b0_rwightman-7f5810bc.pth"),
        _torchvision("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "vit_b_16-c867db91.pth"),
    ]
}


@dataclass(frozen=True)
class Resolved:
    spec: WeightSpec
    path: Path | None  # None means random initialisation
    source: str  # local | downloaded | random-init
    sha256: str | None

    @property
    def random_init(self) -> bool:
        return self.path is None

    @property
    def provenance(self) -> dict[str, Any]:
        return {"name": self.spec.name, "family": self.spec.family, "source": self.source,
                "file": str(self.path) if self.path else None, "sha256": self.sha256,
                "published_checksum": self.spec.checksum, "url": self.spec.url,
                "pretrained": not self.random_init}


def get_spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def _verified_local(spec: WeightSpec, path: Path) -> str:
    """Verify a local file once; the result is cached beside it, keyed by size and mtime."""
    stamp = path.with_name(f".{path.name}.verified.json")
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if stamp.is_file():
        cached = read_json(stamp)
        if {k: cached.get(k) for k in key} == key:
            return cached["sha256"]
    try:
        digest = verify(path, sha256=spec.sha256, md5=spec.md5, sha256_prefix=spec.sha256_prefix)
    except FetchError as exc:
        raise WeightsError(f"{exc}; delete it and fetch again with `pipe weights fetch {spec.name}`") from None
    write_json(stamp, {**key, "sha256": digest})
    return digest


def resolve(name: str, weights_dir: str | Path = "weights", allow_random_init: bool = False,
            download: bool = True) -> Resolved:
    """Find, fetch or (if allowed) stand in for the weights of ``name``."""
    spec = get_spec(name)
    path = Path(weights_dir) / spec.filename
    if path.is_file():
        return Resolved(spec, path, "local", _verified_local(spec, path))
    reason = "download disabled"
    if download:
        try:
            digest = fetch(spec.url, path, sha256=spec.sha256, md5=spec.md5, sha256_prefix=spec.sha256_prefix)
            return Resolved(spec, path, "downloaded", digest)
        except FetchError as exc:
            reason = str(exc)
    if allow_random_init:
        loud(f"{spec.name}: no pretrained weights ({reason}); using RANDOM INITIALISATION. Every number that "
             f"depends on this model measures an untrained network. Place {spec.filename} in {weights_dir}/ "
             f"to use the pretrained one.")
        return Resolved(spec, None, "random-init", None)
    raise WeightsError(
        f"{path}: weights for {spec.name} not found and not downloadable ({reason}); download {spec.url} into "
        f"{weights_dir}/ by hand, or pass --allow-random-init to train from scratch"
    )


def local_status(weights_dir: str | Path = "weights") -> list[dict[str, Any]]:
    """One row per registry entry, for ``pipe weights list``; hashes nothing."""
    rows = []
    for spec in REGISTRY.values():
        path = Path(weights_dir) / spec.filename
        rows.append({"name": spec.name, "family": spec.family, "file": spec.filename,
                     "present": path.is_file(), "checksum": spec.checksum})
    return rows


__all__ = ["REGISTRY", "Resolved", "WeightSpec", "get_spec", "local_status", "resolve", "file_digest"]
