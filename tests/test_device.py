import pytest
import torch

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
