"""Device selection and the environment record every output carries."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from typing import Any

from pipeline.errors import PipeError

PACKAGES = ("torch", "torchvision", "ultralytics", "segment-anything", "pycocotools", "opencv-python", "numpy")


def select_device(spec: str = "auto") -> str:
    """``auto`` -> ``cuda:0`` when CUDA is present, else ``cpu``; ``0,1`` (a GPU list for DDP) -> its first GPU."""
    import torch

    spec = str(spec).strip().lower()
    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise PipeError("--device mps: MPS is not available on this machine; use --device cpu or auto")
        return "mps"
    index = 0
    if spec.startswith("cuda"):
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
    elif spec.replace(",", "").isdigit():
        index = int(spec.split(",")[0])
    else:
        raise PipeError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or a GPU list like 0,1")
    if not torch.cuda.is_available():
        raise PipeError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    if index >= torch.cuda.device_count():
        raise PipeError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return f"cuda:{index}"


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results; read once per process (parsing their
    metadata costs milliseconds per call, and installs do not change under a running pipeline)."""
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def environment(device: str) -> dict[str, Any]:
    """Device name, torch/CUDA/cuDNN versions and package versions: what a reader needs to trust a timing."""
    import torch

    env: dict[str, Any] = {
        "device": device,
        "device_name": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": dict(package_versions()),
    }
    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else 0
        env["device_name"] = torch.cuda.get_device_name(idx)
        env["gpu_count"] = torch.cuda.device_count()
    return env
