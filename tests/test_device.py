import sys

import pytest
import torch

from pipeline import device
from pipeline.device import environment, select_device
from pipeline.errors import PipeError


def test_auto_follows_cuda_availability():
    assert select_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(PipeError, match="CUDA is not available"):
        select_device("cuda:1")
    with pytest.raises(PipeError, match="expected auto, cpu"):
        select_device("tpu")


def test_environment_record():
    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"cuda", "python", "packages"} <= env.keys()


# cuda_available: torch-free where CUDA is surely absent
CUDA_BUILD = {"__version__": "2.5.1+cu124", "cuda": "12.4", "hip": None}


@pytest.fixture
def gpu_machine(monkeypatch, tmp_path):
    """A Linux machine that looks CUDA-capable (a CUDA build of torch, one GPU under the driver's /proc folder,
    /dev/nvidia0), on which each test takes one thing away."""
    proc, dev = tmp_path / "proc-gpus", tmp_path / "dev"
    (proc / "0000:01:00.0").mkdir(parents=True)
    dev.mkdir()
    (dev / "nvidia0").touch()
    monkeypatch.setattr(device, "NVIDIA_PROC", proc)
    monkeypatch.setattr(device, "DEV", dev)
    monkeypatch.setattr(device, "torch_build", lambda: dict(CUDA_BUILD))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return proc, dev


def test_a_cuda_capable_machine_is_left_to_torch(gpu_machine):
    assert device.cuda_ruled_out() is None


@pytest.mark.parametrize("visible", ["", "-1", "-1,0", " "])
def test_cuda_visible_devices_hiding_every_gpu_rules_cuda_out(gpu_machine, monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert "CUDA_VISIBLE_DEVICES" in device.cuda_ruled_out()


@pytest.mark.parametrize("visible", ["0", "1,0", "GPU-8b2c5a1e"])
def test_cuda_visible_devices_naming_a_gpu_is_left_to_torch(gpu_machine, monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert device.cuda_ruled_out() is None


def test_no_nvidia_driver_rules_cuda_out(gpu_machine):
    proc, dev = gpu_machine
    (proc / "0000:01:00.0").rmdir()
    (dev / "nvidia0").unlink()
    assert "no NVIDIA driver" in device.cuda_ruled_out()
    proc.rmdir()  # the driver's folder absent altogether
    assert "no NVIDIA driver" in device.cuda_ruled_out()


@pytest.mark.parametrize("left", ["proc", "node", "dxg"])
def test_any_sign_of_a_driver_is_left_to_torch(gpu_machine, left):
    """/dev nodes may be created only on first use (nvidia-modprobe), containers may lack /proc's folder,
    and WSL2 exposes the GPU as /dev/dxg: any one of them means torch must decide."""
    proc, dev = gpu_machine
    if left != "proc":
        (proc / "0000:01:00.0").rmdir()
    if left != "node":
        (dev / "nvidia0").unlink()
    if left == "dxg":
        (dev / "dxg").touch()
    assert device.cuda_ruled_out() is None


def test_cpu_only_or_missing_torch_rules_cuda_out(gpu_machine, monkeypatch):
    monkeypatch.setattr(device, "torch_build", lambda: {"__version__": "2.5.1+cpu", "cuda": None, "hip": None})
    assert "CPU-only build" in device.cuda_ruled_out()
    monkeypatch.setattr(device, "torch_build", lambda: None)
    assert "not installed" in device.cuda_ruled_out()


def test_rocm_and_unreadable_builds_are_left_to_torch(gpu_machine, monkeypatch):
    proc, dev = gpu_machine
    (proc / "0000:01:00.0").rmdir()
    (dev / "nvidia0").unlink()  # no NVIDIA driver: says nothing about an AMD GPU, or an unknown build
    monkeypatch.setattr(device, "torch_build", lambda: {"__version__": "2.5.1+rocm6.2", "cuda": None, "hip": "6.2"})
    assert device.cuda_ruled_out() is None
    monkeypatch.setattr(device, "torch_build", lambda: {})
    assert device.cuda_ruled_out() is None


def test_ruled_out_means_no_torch_import(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now raise ImportError
    assert device.cuda_available() is False
    assert select_device("auto") == "cpu" and select_device("cpu") == "cpu"
    with pytest.raises(PipeError, match="CUDA is not available"):
        select_device("cuda:0")
    env = environment("cpu")
    assert env["torch"] and "cuda" in env and env["packages"]["torch"]


def test_not_ruled_out_defers_to_torch(monkeypatch):
    monkeypatch.setattr(device, "cuda_ruled_out", lambda: None)
    assert device.cuda_available() == torch.cuda.is_available()


def test_the_cheap_answer_agrees_with_torch_here():
    """On whatever machine runs the tests: CUDA is ruled out only where torch finds none."""
    assert device.cuda_ruled_out() is None or not torch.cuda.is_available()


def test_torch_build_is_torch_version_read_without_importing_it():
    build = device.torch_build()
    assert build["__version__"] == torch.__version__ and build["cuda"] == torch.version.cuda
    assert build.get("hip") == torch.version.hip


@pytest.mark.parametrize("spec,key", [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1"), ("1,0", "cuda:1"),
                                      ("mps", "mps")])
def test_device_key_names_the_device_without_torch(spec, key):
    assert device.device_key(spec) == key


def test_auto_device_key_and_profile_on_a_gpu_machine_import_no_torch():
    """Where a driver is loaded (faked here), an up-to-date check still decides without importing torch: the
    key says cuda:0 and --profile auto picks the full recipe."""
    import subprocess
    import sys

    probe = ("import sys, pipeline.device as d; d.cuda_ruled_out = lambda: None; "
             "from pipeline.config import load_config; cfg = load_config('bottle', 'auto'); "
             "print(d.device_key('auto'), cfg.yolo.imgsz, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    from pipeline.config import load_config

    assert out[0] == "cuda:0" and out[2] == "False"
    assert int(out[1]) == load_config("bottle", "full").yolo.imgsz != load_config("bottle", "cpu").yolo.imgsz
