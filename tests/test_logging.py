"""Library modules log through ``logging.getLogger(__name__)``; ``pipeline.console`` prints and files the records."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import pipeline
from pipeline.console import LOUD, ConsoleHandler, logged, setup_logging

PACKAGE = Path(pipeline.__file__).parent
OLD_API = {"info", "warn", "loud", "log_only"}
# the modules that printed through the old console API: each must now have its own logger
EMITTERS = {"data/layout.py", "data/download.py", "data/source.py", "weights.py", "stages/yolo/prompts.py",
            "stages/yolo/trainer.py", "stages/yolo/run.py", "stages/sam/run.py", "stages/sam/train.py",
            "stages/classify/run.py", "stages/classify/train.py"}


def _library_modules() -> list[Path]:
    skip = ("console.py", "cli.py")
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).as_posix() not in skip]


def _is_get_logger(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "logging")


def _by_name(node: ast.Call) -> bool:
    return len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Name) \
        and node.args[0].id == "__name__"


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_library_modules_log_through_their_own_logger(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    rel = path.relative_to(PACKAGE).as_posix()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline.console":
            assert not {a.name for a in node.names} & OLD_API, f"{rel}:{node.lineno} imports the old console API"
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline" and "console" in {a.name for a in node.names}:
            assert rel == "__init__.py", f"{rel}:{node.lineno} imports pipeline.console as a module"
        if _is_get_logger(node):
            assert _by_name(node), f"{rel}:{node.lineno}: logging.getLogger(...) takes __name__ in a library module"
    loggers = [n for n in ast.walk(tree) if _is_get_logger(n)]
    if rel in EMITTERS:
        assert loggers, f"{rel} emits messages but has no logging.getLogger(__name__)"
    # a module-level ``log`` that methods are called on must be this module's logger
    uses_log = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                   and n.func.value.id == "log" and n.func.attr in ("debug", "info", "warning", "error", "exception")
                   for n in ast.walk(tree))
    if uses_log:
        assigned = [n for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "log" for t in n.targets)]
        assert assigned and all(_is_get_logger(a.value) and _by_name(a.value) for a in assigned), rel


def test_logged_files_records_without_markup_and_detaches(tmp_path, capsys):
    path = tmp_path / "logs" / "x.log"
    log = logging.getLogger("pipeline.data.layout")
    ultralytics = logging.getLogger("ultralytics")
    level = ultralytics.level  # an earlier test may have quietened ultralytics (verbose=False)
    ultralytics.setLevel(logging.INFO)
    try:
        with logged(path, "x"):
            log.warning("[bold]hello[/]")
            log.debug("[bold]epoch 1[/] loss 0.25")
            log.warning("[bold]random[/] init", extra=LOUD)
            log.info("plain [italic]info[/]")
            ultralytics.warning("ultralytics [images] line")
    finally:
        ultralytics.setLevel(level)
    err = capsys.readouterr().err
    log.warning("after the block")
    text = path.read_text(encoding="utf-8")

    lines = text.splitlines()
    assert "x started" in lines[0] and "x finished after" in lines[-1]
    assert any(" WARNING " in line and line.endswith("pipeline.data.layout: hello") for line in lines)
    assert any(" DEBUG " in line and line.endswith("epoch 1 loss 0.25") for line in lines)  # the file keeps it
    assert any(line.split()[1] == "ATTENTION" and line.endswith("random init") for line in lines)
    assert any(line.endswith("plain info") for line in lines)
    # not pipe's markup (ultralytics, once set up, prefixes its own "WARNING ⚠️" to the message)
    assert any(" ultralytics: " in line and line.endswith("ultralytics [images] line") for line in lines)
    assert "[bold]" not in text and "[/]" not in text and "[italic]" not in text
    assert "after the block" not in text  # the file handler left with the block
    for name in ("pipeline", "ultralytics"):  # (pytest's own handlers may sit there too)
        assert not [h for h in logging.getLogger(name).handlers if getattr(h, "baseFilename", None) == str(path)]
    assert logging.getLogger("pipeline").level == logging.INFO  # DEBUG only while a log file wants it

    assert "WARNING hello" in err and "plain info" in err and "[bold]" not in err
    assert "epoch 1" not in err  # file-only: the console handler drops it
    out = err.splitlines()
    rule = next(i for i, line in enumerate(out) if line.startswith("─") and " attention " in line)
    assert out[rule + 1] == "random init" and set(out[rule + 2]) == {"─"}, err  # the framed block
    assert "x finished in" in err and str(path) in err.replace("\n", "")


def test_logged_says_failed_and_detaches_on_error(tmp_path, capsys):
    path = tmp_path / "y.log"
    with pytest.raises(RuntimeError), logged(path, "y"):
        logging.getLogger("pipeline.weights").info("before the error")
        raise RuntimeError("boom")
    logging.getLogger("pipeline.weights").info("later")
    text = path.read_text(encoding="utf-8")
    assert "before the error" in text and "y failed after" in text and "later" not in text
    assert "y failed in" in capsys.readouterr().err


def test_setup_logging_twice_attaches_one_handler():
    setup_logging()
    setup_logging()
    logger = logging.getLogger("pipeline")
    assert sum(isinstance(h, ConsoleHandler) for h in logger.handlers) == 1
    assert logger.propagate is False and logger.getEffectiveLevel() == logging.INFO


def test_messages_reach_captured_stderr_without_the_cli(capsys):
    logging.getLogger("pipeline.data.download").warning("a count mismatch")
    logging.getLogger("pipeline.stages.classify.train").debug("not for the terminal")
    err = capsys.readouterr().err
    assert "WARNING a count mismatch" in err and "not for the terminal" not in err


def test_the_library_attaches_no_console_handler_the_cli_does():
    """A library leaves the choice of handlers to the application: importing pipe's modules adds only a
    NullHandler; importing the CLI attaches the rich console handler."""
    import subprocess
    import sys

    probe = ("import logging, {mod}; print(sorted(type(h).__name__ for h in logging.getLogger('pipeline').handlers))")
    lib = subprocess.run([sys.executable, "-c", probe.format(mod="pipeline.data.layout")], capture_output=True,
                         text=True, check=True).stdout.strip()
    cli = subprocess.run([sys.executable, "-c", probe.format(mod="pipeline.cli")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert lib == "['NullHandler']"
    assert cli == "['ConsoleHandler', 'NullHandler']"
