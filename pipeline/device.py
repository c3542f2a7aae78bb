"""Device selection and the environment record every output carries.

Importing torch costs seconds, so nothing here imports it unless a device or a model really needs it:
versions come from package metadata and torch's own build file, and ``cuda_available`` answers "no"
without torch wherever that answer is certain (see its docstring). ``pipe --help`` and every up-to-date
skip stay torch-free on a machine without CUDA.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import os
import platform
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import PipeError

PACKAGES = ("torch", "torchvision", "ultralytics", "segment-anything", "pycocotools", "opencv-python", "numpy")
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the loaded NVIDIA kernel driver sees
DEV = Path("/dev")  # /dev/nvidia0.. (NVIDIA device nodes), /dev/dxg (WSL2's GPU paravirtualisation)


def select_device(spec: str = "auto") -> str:
    """``auto`` -> ``cuda:0`` when CUDA is present, else ``cpu``; ``0,1`` (a GPU list for DDP) -> its first GPU."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        import torch

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
    if not cuda_available():
        raise PipeError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    import torch  # CUDA is present: the count needs torch (imported already by cuda_available)

    if index >= torch.cuda.device_count():
        raise PipeError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return f"cuda:{index}"


@contextlib.contextmanager
def torch_threads() -> Iterator[int]:
    """Keep torch's intra-op thread count across a call into ultralytics, and yield it.

    ultralytics' ``select_device`` (its trainer, validator and predictor call it) sets it to
    ``min(8, cpu_count - 1)`` for the rest of the process: one thread on a 2-core machine, which made every
    stage after the detector in ``pipe all`` (and the classifier, SAM and PatchCore in ``pipe predict``)
    run at about half speed. Yielding the count lets the detector's own training use it too.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def device_key(spec: str = "auto") -> str:
    """What ``select_device(spec)`` will answer, said without importing torch: the device part of a stage's
    up-to-date key, so a skip costs no torch import even on a GPU machine. ``auto`` counts as ``cuda:0`` where
    ``cuda_ruled_out`` cannot rule CUDA out (on a machine with a loaded driver whose CUDA still fails, the key
    says cuda while the run falls back: the key stays a fixed function of machine and config, which is all a
    skip needs). Nothing is validated here: the stage validates its device when it runs."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return "cuda:0" if cuda_ruled_out() is None else "cpu"
    if spec in ("cpu", "mps"):
        return spec
    if spec.startswith("cuda"):
        return spec if ":" in spec else "cuda:0"
    return f"cuda:{spec.split(',')[0]}" if spec.replace(",", "").isdigit() else spec


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch (seconds) where the answer is surely no.

    ``cuda_ruled_out`` settles the common cases from files and the environment; only when it cannot
    (a machine that looks CUDA-capable) is torch imported to confirm, as the stage that follows needs it
    anyway. The config's ``--profile auto`` and the up-to-date key of the training stages ask this, so a
    skip on a machine without CUDA never imports torch.
    """
    if cuda_ruled_out() is not None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def cuda_ruled_out() -> str | None:
    """Why ``torch.cuda.is_available()`` would be False, read without torch; None when it may be True.

    Each reason is a case where torch reports no CUDA: the CUDA runtime is told to show no device
    (``CUDA_VISIBLE_DEVICES`` empty or starting with a negative index, as CUDA stops at the first invalid
    entry), torch is absent or a CPU-only build, or (on Linux, for a CUDA build) no NVIDIA driver is
    loaded: no GPU under /proc/driver/nvidia/gpus, no /dev/nvidiaN node and no WSL2 /dev/dxg. ROCm builds
    (``hip``) are left to torch.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if not first or (first.lstrip("-").isdigit() and int(first) < 0):
            return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if sys.platform == "darwin":
        return "macOS has no CUDA"
    build = torch_build()
    if build is None:
        return "torch is not installed"
    if "cuda" in build and not build["cuda"] and not build.get("hip"):
        return f"torch {build.get('__version__')} is a CPU-only build"
    if not build.get("cuda") or not sys.platform.startswith("linux"):  # ROCm, an unreadable build, Windows
        return None
    if _entries(NVIDIA_PROC) or any(DEV.glob("nvidia[0-9]*")) or (DEV / "dxg").exists():
        return None
    return "no NVIDIA driver is loaded (no GPU under /proc/driver/nvidia/gpus, no /dev/nvidia0)"


def _entries(folder: Path) -> bool:
    """``folder`` exists and holds something (a missing or unreadable /proc folder is no sign of a GPU)."""
    try:
        return any(folder.iterdir())
    except OSError:
        return False


@functools.cache
def torch_build() -> dict[str, Any] | None:
    """What ``torch.version`` holds (``__version__``, ``cuda``, ``hip``...), read from the file torch's build
    writes it to, not imported; None when torch is not installed, {} when the file cannot be read.

    The package metadata's version lacks the local tag (``2.5.1``, not ``2.5.1+cu124``) and says nothing of
    the CUDA build, which is what a reader of a record (and ``cuda_ruled_out``) needs.
    """
    spec = importlib.util.find_spec("torch")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        tree = ast.parse((Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text("utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and node.value is not None:
            try:
                out[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


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
    """Device name, torch/CUDA versions and package versions: what a reader needs to trust a timing.

    The versions are read without importing torch, so a CPU stage that never loads it (stats, convert)
    records them at no cost; on a CUDA device (whose stage has imported torch already) the GPU's name,
    the GPU count and the cuDNN version are added.
    """
    build = torch_build() or {}
    env: dict[str, Any] = {
        "device": device,
        "device_name": platform.processor() or platform.machine(),
        "torch": build.get("__version__") or package_versions()["torch"],
        "cuda": build.get("cuda"),  # the CUDA version torch was built with (torch.version.cuda)
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": dict(package_versions()),
    }
    if device.startswith("cuda"):
        import torch

        idx = int(device.split(":")[1]) if ":" in device else 0
        env["device_name"] = torch.cuda.get_device_name(idx)
        env["gpu_count"] = torch.cuda.device_count()
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        env["cuda_available"] = True
    return env
