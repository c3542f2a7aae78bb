"""Shared fixtures: a tiny synthetic bottle (generated once per session) and helpers to damage copies of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.console import setup_logging
from pipeline.data.synth import synthesize

setup_logging()  # the tests call library functions directly: their messages reach stderr as under the CLI

REAL_MVTEC_ROOT = str(Path(os.environ["MVTEC_ROOT"]).resolve()) if os.environ.get("MVTEC_ROOT") else None
TINY = dict(size=64, train_good=6, test_good=2, test_per_defect=3, seed=0)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic root holding bottle/ (copy it before changing anything)."""
    root = tmp_path_factory.mktemp("synthetic")
    synthesize("bottle", root, **TINY)
    return root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny root that a test may damage."""
    dst = tmp_path / "root"
    shutil.copytree(tiny_root, dst)
    return dst


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """No test may read the developer's MVTEC_ROOT by accident or write into the repo's runs/."""
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    monkeypatch.setenv("PIPE_OFFLINE", "1")  # no test may wait on the network for a weight file
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def real_root() -> Path:
    """The genuine MVTec AD root from $MVTEC_ROOT (absolute); tests using it skip without it."""
    if not REAL_MVTEC_ROOT:
        pytest.skip("set MVTEC_ROOT to the MVTec AD root to run the real-data checks")
    return Path(REAL_MVTEC_ROOT).resolve()


@pytest.fixture(scope="session")
def converted_dataset(tiny_root, tmp_path_factory) -> Path:
    """``datasets/bottle`` as `pipe convert` writes it, from the tiny synthetic bottle (shared: do not modify)."""
    from pipeline.convert.instances import ConvertParams
    from pipeline.convert.run import run_convert
    from pipeline.data.layout import load_category
    from pipeline.device import environment

    out = tmp_path_factory.mktemp("converted") / "bottle"
    run_convert(load_category(tiny_root, "bottle"), out, ConvertParams(), {"train": 0.4, "val": 0.3, "test": 0.3}, seed=0,
                environment=environment("cpu"))  # as `pipe convert` records it
    return out


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on, for a test's DDP rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def said():
    """``said("pipeline.stages.yolo.run")``: the messages that logger emits during the test, as a list."""
    import logging

    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def listen(name: str) -> list[str]:
        messages: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                messages.append(record.getMessage())

        logger = logging.getLogger(name)
        handler = Collect(logging.DEBUG)
        logger.addHandler(handler)
        attached.append((logger, handler))
        return messages

    yield listen
    for logger, handler in attached:
        logger.removeHandler(handler)


TRAINED_SETS = ("classify.attempts=[A]", "classify.folds=0", "classify.compare=null", "yolo.eval_conf=0.0",
                "sam.detector_conf=0.0")


@pytest.fixture(scope="session")
def trained_runs(converted_dataset, tmp_path_factory) -> Path:
    """``runs/bottle/{yolo,sam,classify,anomaly}`` trained with the tiny profile on the tiny converted bottle
    (shared: do not modify; copy it first). The detector keeps its 100 best boxes whatever their score, and SAM
    is prompted with all of them, so an untrained detector still hands it boxes. Configure a run over it with
    ``trained_config(trained_runs)``."""
    from pipeline.stages.anomaly.run import run_anomaly
    from pipeline.stages.classify.run import run_classify
    from pipeline.stages.sam.run import run_finetune_sam
    from pipeline.stages.yolo.run import run_finetune_yolo

    root = tmp_path_factory.mktemp("trained")
    cfg = trained_config(root)
    runs = root / "runs" / "bottle"
    run_finetune_yolo(cfg, converted_dataset, runs / "yolo")
    run_finetune_sam(cfg, converted_dataset, runs / "sam", detections=runs / "yolo" / "detections_test.json")
    run_classify(cfg, converted_dataset, runs / "classify")
    run_anomaly(cfg, converted_dataset, runs / "anomaly")
    return root


def trained_config(root: Path, *sets: str):
    """The tiny profile with its runs under ``root``/runs (``trained_runs``), plus ``sets`` overrides."""
    from pipeline.config import load_config

    return load_config("bottle", "tiny", overrides=[f"paths.runs={root / 'runs'}", *TRAINED_SETS, *sets])
