"""Layers that read downwards: the data layer and the converter import nothing from the layers above them.

``pipeline.data`` takes plain values (``DataSource``), not ``Config``; the environment record of the card and
of ``convert_report.json`` is measured by the stage machinery (the CLI) and passed in. Each check imports
every module of a package in a fresh interpreter, so what an earlier test imported cannot hide a cycle.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

ABOVE_DATA = ("pipeline.config", "pipeline.device", "pipeline.stages", "pipeline.cli")
ABOVE_CONVERT = ABOVE_DATA  # convert sits on data only: it reads no Config and measures no device


def _modules(package: str) -> list[str]:
    """Every module of ``package`` (a subpackage of ``pipeline``), found on disk so a new file is covered too."""
    folder = Path(pipeline.__file__).parent / package.removeprefix("pipeline.").replace(".", "/")
    return [package, *(f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)]))]


def _loaded_after_importing(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """The ``watched`` modules (or their submodules) in ``sys.modules`` after a fresh interpreter imports ``modules``."""
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    return [n for n in loaded if n in watched or n.startswith(tuple(w + "." for w in watched))]


@pytest.mark.parametrize(("package", "above"), [("pipeline.data", ABOVE_DATA), ("pipeline.convert", ABOVE_CONVERT)])
def test_lower_layers_import_nothing_above_them(package: str, above: tuple[str, ...]) -> None:
    modules = _modules(package)
    assert len(modules) > 3  # the discovery found the package's files
    assert _loaded_after_importing(modules, above) == []


def test_the_check_sees_an_upward_import() -> None:
    """The subprocess check itself is not vacuous: importing the CLI's stage code does load the config."""
    assert "pipeline.config" in _loaded_after_importing(["pipeline.stages.common"], ABOVE_DATA)
