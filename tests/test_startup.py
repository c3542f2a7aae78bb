"""A CLI that starts at once: ``pipe --help``, every ``--help``, the CPU stages (stats, convert, report) and every
up-to-date skip import neither torch, torchvision, ultralytics nor segment-anything.

Each command runs as its own process, as ``just all`` runs it, and reports which of those modules it had
loaded when it exited. ``--profile auto`` with ``CUDA_VISIBLE_DEVICES`` empty is what ``just all`` does on
a machine without a GPU, on any machine: the profile and device are resolved without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pipeline.cli import main

HEAVY = ("torch", "torchvision", "ultralytics", "segment_anything")
# runs `pipe ARGS` as the console script does, then writes the heavy modules it loaded to $PIPE_TRACE
TRACE = f"""
import atexit, json, os, runpy, sys
atexit.register(lambda: open(os.environ["PIPE_TRACE"], "w").write(
    json.dumps([m for m in {HEAVY!r} if m in sys.modules])))
sys.argv = ["pipe", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__")
"""
HELP_ALL = """
import json, sys
import typer.main
from typer.testing import CliRunner
from pipeline.cli import app

def walk(cmd, path=()):
    if hasattr(cmd, "commands"):
        yield path
        for name, sub in cmd.commands.items():
            yield from walk(sub, (*path, name))
    else:
        yield path

runner = CliRunner()
paths = list(walk(typer.main.get_command(app)))
for path in paths:
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, (path, r.output)
print(json.dumps({"commands": len(paths), "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


@pytest.fixture
def no_gpu(monkeypatch) -> dict[str, str]:
    """The environment of a machine without CUDA, for this process and the ones it starts."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("PIPE_FORCE", raising=False)
    return dict(os.environ)


def pipe_process(cwd: Path, env: dict[str, str], *args: str) -> tuple[str, list[str]]:
    """Run ``pipe ARGS`` as a process in ``cwd``; return its stderr and the heavy modules it imported."""
    trace = cwd / ".trace.json"
    proc = subprocess.run([sys.executable, "-c", TRACE, *args], cwd=cwd, env={**env, "PIPE_TRACE": str(trace)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr, json.loads(trace.read_text())


def test_every_help_imports_no_torch(tmp_path, no_gpu):
    err, heavy = pipe_process(tmp_path, no_gpu, "--help")
    assert heavy == []
    proc = subprocess.run([sys.executable, "-c", HELP_ALL], cwd=tmp_path, env=no_gpu, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["commands"] >= 12 and out["heavy"] == []


def _stub_stage(monkeypatch, module: str, function: str, result: object) -> None:
    """Stand in for a training stage's module (never imported): the stage "runs" instantly, so ``pipe``'s
    own machinery stamps its output folder exactly as after a real run."""
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{function: lambda *a, **k: result}))


def _in_process(*args: str) -> None:
    old, sys.argv = sys.argv, ["pipe", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"pipe {' '.join(args)} exited {exc.code}"
    finally:
        sys.argv = old


def test_cpu_stages_and_every_up_to_date_skip_import_no_torch(tiny_root, tmp_path, no_gpu, monkeypatch):
    root = ["--root", str(tiny_root), "--profile", "auto"]
    steps = [["stats", "bottle", *root], ["convert", "bottle", *root], ["finetune", "yolo", "bottle", "--profile", "auto"],
             ["finetune", "sam", "bottle", "--profile", "auto"], ["classify", "bottle", "--profile", "auto"],
             ["report", "bottle", "--profile", "auto"]]
    for args in (steps[0], steps[1]):  # the CPU stages, really run
        err, heavy = pipe_process(tmp_path, no_gpu, *args)
        assert "skipped" not in err and heavy == [], (args, err)
    zero = {"map50": 0.0, "map50_95": 0.0}
    _stub_stage(monkeypatch, "pipeline.stages.yolo.run", "run_finetune_yolo",
                {"zero_shot": zero, "finetuned": zero, "timing_s": {"total": 0.0}})
    _stub_stage(monkeypatch, "pipeline.stages.sam.run", "run_finetune_sam", None)
    _stub_stage(monkeypatch, "pipeline.stages.classify.run", "run_classify", None)
    _stub_stage(monkeypatch, "pipeline.stages.anomaly.run", "run_anomaly", None)
    for args in steps[2:5]:
        _in_process(*args)
    _in_process("anomaly", "bottle", "--profile", "auto")
    err, heavy = pipe_process(tmp_path, no_gpu, *steps[5])
    assert "skipped" not in err and heavy == [], err
    for args in steps:  # what `just all` does when everything is up to date
        err, heavy = pipe_process(tmp_path, no_gpu, *args)
        assert "up to date" in err and heavy == [], (args, err)
    from pipeline.registry import STAGES

    err, heavy = pipe_process(tmp_path, no_gpu, "all", "bottle", *root)  # `just all`: every stage, one process
    assert " ".join(err.split()).count("up to date") == len(STAGES) and heavy == [], err
