"""The weights registry: one place that turns a model name into a verified file, or says why not.

Order: ``weights/<file>`` first, then the official download (verified against the publisher's checksum),
then either a one-line error with the manual fix or, only when the user allowed it, a random
initialisation. A file is used only once it is a PyTorch archive its family's loader can read (checked
cheaply, also where no checksum is published) and matches the checksum; a stamp beside it records both
checks so that the next run need not repeat them. Whatever happened is returned as a ``Resolved`` whose
``provenance`` every dependent output records, so a number from an untrained model can never pass for a
pretrained one.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.console import LOUD
from pipeline.errors import WeightsError
from pipeline.fetch import FetchError, fetch, file_digest, verify
from pipeline.io import read_json, write_json

log = logging.getLogger(__name__)

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
        _torchvision("wide_resnet50_2", "Wide_ResNet50_2_Weights.IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth"),
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


# torch.save's pre-1.6 format: a pickle stream whose first object is this magic number (pickled as a LONG1).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# The archive formats each family's loader reads: SAM, torchvision and Ultralytics call torch.load on a
# checkpoint; clip.load takes OpenAI's TorchScript archive or a plain state_dict.
_CHECKPOINT = frozenset({"torch.save zip", "torch.save legacy"})
_FORMATS = {"clip": _CHECKPOINT | {"torchscript zip"}}


def _loadable(spec: WeightSpec) -> frozenset[str]:
    """The archive formats ``spec``'s loader accepts."""
    return _FORMATS.get(spec.family, _CHECKPOINT)


def archive_format(spec: WeightSpec, path: Path) -> str:
    """Name the PyTorch format of ``path`` if ``spec``'s loader can read it, else raise ``FetchError``.

    Cheap next to loading (no unpickling, no model code), and run before any stamp is written, so that an
    empty file, a download cut short or an HTML error page saved as ``.pt`` is refused with one line instead
    of crashing a stage minutes later -- also for families whose publisher gives no checksum. Zip archives
    are CRC-checked member by member, which catches truncation and corruption; a legacy (pre-1.6) file is
    only recognised by its header, as nothing short of unpickling it shows where it should end.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise FetchError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not head:
        raise FetchError(f"{path}: empty file")
    if head.startswith(b"PK\x03\x04"):
        kind = _zip_format(path)
    elif head.startswith(b"\x80") and _LEGACY_MAGIC in head:
        kind = "torch.save legacy"
    else:
        html = " (an HTML page?)" if head.lstrip().startswith(b"<") else ""
        raise FetchError(f"{path}: not a PyTorch file{html}")
    if kind not in _loadable(spec):
        raise FetchError(f"{path}: a {kind} file, which the {spec.family} loader cannot read")
    return kind


def _zip_format(path: Path) -> str:
    """Tell a torch.save archive from a TorchScript one, after checking every member's CRC."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            # torch.serialization.set_crc32_options(False) writes every CRC as 0: nothing to compare then.
            bad = zf.testzip() if any(i.CRC for i in infos if i.file_size) else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise FetchError(f"{path}: truncated or corrupt archive ({exc})") from None
    if bad is not None:
        raise FetchError(f"{path}: corrupt archive ({bad} fails its CRC check)")
    names = {i.filename.split("/", 1)[-1] for i in infos}
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torchscript zip"
    if "data.pkl" in names:
        return "torch.save zip"
    raise FetchError(f"{path}: a zip archive without data.pkl, not a PyTorch file")


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _stamp_key(spec: WeightSpec, path: Path) -> dict[str, Any]:
    """What a stamp must match to be trusted: the file as it is now, and the checksum it was held against."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": spec.checksum}


def _stamped_digest(spec: WeightSpec, path: Path) -> str | None:
    """The sha256 a valid stamp records; None when there is none, it is unreadable or anything changed."""
    try:
        cached = read_json(_stamp_path(path))
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("format") not in _loadable(spec):
        return None
    if any(cached.get(k) != v for k, v in _stamp_key(spec, path).items()):
        return None
    digest = cached.get("sha256")
    return digest if isinstance(digest, str) else None


def _write_stamp(spec: WeightSpec, path: Path, digest: str, kind: str) -> None:
    """Record the verification beside the file; a read-only weights folder just means verifying again."""
    try:
        write_json(_stamp_path(path), {**_stamp_key(spec, path), "sha256": digest, "format": kind})
    except OSError:
        pass


def _verified_local(spec: WeightSpec, path: Path) -> str:
    """Check a local file's format and checksum once; the stamp beside it saves the next run from re-hashing."""
    digest = _stamped_digest(spec, path)
    if digest is not None:
        return digest
    try:
        kind = archive_format(spec, path)
        digest = verify(path, sha256=spec.sha256, md5=spec.md5, sha256_prefix=spec.sha256_prefix)
    except FetchError as exc:
        raise WeightsError(f"{exc}; delete it and run `pipe weights fetch {spec.name}`, or download {spec.url} "
                           f"into {path.parent}/ by hand") from None
    _write_stamp(spec, path, digest, kind)
    return digest


def _download(spec: WeightSpec, path: Path) -> str:
    """Fetch the official file; it is renamed into place only once complete, verified and loadable."""
    kinds: list[str] = []
    digest = fetch(spec.url, path, sha256=spec.sha256, md5=spec.md5, sha256_prefix=spec.sha256_prefix,
                   check=lambda part: kinds.append(archive_format(spec, part)))
    _write_stamp(spec, path, digest, kinds[-1])
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
            return Resolved(spec, path, "downloaded", _download(spec, path))
        except FetchError as exc:
            reason = str(exc)
    if allow_random_init:
        log.warning(f"{spec.name}: no pretrained weights ({reason}); using RANDOM INITIALISATION. Every number "
                    f"that depends on this model measures an untrained network. Place {spec.filename} in "
                    f"{weights_dir}/ to use the pretrained one.", extra=LOUD)
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


__all__ = ["REGISTRY", "Resolved", "WeightSpec", "archive_format", "get_spec", "local_status", "resolve",
           "file_digest"]
