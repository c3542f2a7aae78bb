"""One console for the whole pipeline: the logging handlers that print and file messages, and progress bars.

Library modules log through ``logging.getLogger(__name__)`` (all under ``pipeline``): INFO and WARNING reach
the terminal, ``extra=LOUD`` warnings are framed so nobody misses them, DEBUG reaches only the stage log file
that ``logged`` attaches. Everything goes to stderr so that stdout stays clean for machine-readable output
(``--json``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.errors import MarkupError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

console = Console(stderr=True, highlight=False)  # resolves sys.stderr at each print, so captured output sees it

LOGGER = "pipeline"  # every library module logs under it through ``logging.getLogger(__name__)``
LOUD = {"loud": True}  # ``log.warning(msg, extra=LOUD)``: a fact that changes what the numbers mean
# Per-epoch numbers and the like go to ``log.debug``: the stage's log file keeps them, the terminal does not.


def plain(message: str) -> str:
    """``message`` without its rich markup (``[bold]x[/]`` -> ``x``); unchanged if it is not valid markup."""
    try:
        return Text.from_markup(message).plain
    except MarkupError:
        return message


class ConsoleHandler(logging.Handler):
    """Prints records to ``console`` with their markup rendered: INFO as is, WARNING flagged, loud ones framed."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if getattr(record, "loud", False):
                console.rule("[bold red]attention")
                _print(message, "[bold red]")
                console.rule()
            elif record.levelno >= logging.WARNING:
                _print(message, "[bold yellow]WARNING[/] ")
            else:
                _print(message)
            if record.exc_info:
                console.print(logging.Formatter().formatException(record.exc_info), markup=False)
        except Exception:  # noqa: BLE001 - logging must never take the pipeline down
            self.handleError(record)


def _print(message: str, prefix: str = "") -> None:
    try:
        console.print(prefix + message)
    except MarkupError:  # a message that merely contains brackets: print it as it is
        console.print(Text.from_markup(prefix) + Text(message))


class PlainFormatter(logging.Formatter):
    """Timestamped plain text for log files: pipe's markup stripped, loud records marked ATTENTION."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-9s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # other handlers still get the record untouched
        if record.name == LOGGER or record.name.startswith(LOGGER + "."):  # ultralytics' brackets are not markup
            record.msg, record.args = plain(record.getMessage()), None
        if getattr(record, "loud", False):
            record.levelname = "ATTENTION"
        return super().format(record)


def setup_logging() -> logging.Logger:
    """Send the ``pipeline`` loggers' INFO and above to ``console``; idempotent (one handler however often called)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def info(message: str) -> None:
    """The CLI's own messages (library modules log through ``logging.getLogger(__name__)``)."""
    logging.getLogger(f"{LOGGER}.cli").info(message)


@contextlib.contextmanager
def logged(path: Path, stage: str) -> Iterator[None]:
    """Append the ``pipeline`` (DEBUG too) and ``ultralytics`` loggers to ``path``; say the stage's wall time after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(PlainFormatter())
    loggers = [logging.getLogger(LOGGER), logging.getLogger("ultralytics")]
    pipeline_level = loggers[0].level
    _rule(handler, f"{stage} started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.DEBUG)  # the file wants the file-only records; the console handler still drops them
    status = "failed"
    try:
        yield
        status = "finished"
    finally:
        elapsed = time.perf_counter() - start
        for logger in loggers:
            logger.removeHandler(handler)
        loggers[0].setLevel(pipeline_level)
        _rule(handler, f"{stage} {status} after {elapsed:.1f} s")
        handler.close()
        console.print(f"[bold]{stage}[/] {status} in {elapsed:.1f} s (log: {path})")


def _rule(handler: logging.FileHandler, title: str) -> None:
    handler.acquire()
    try:
        Console(file=handler.stream, width=120, no_color=True, highlight=False, soft_wrap=True).rule(title)
        handler.flush()
    finally:
        handler.release()


def progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar showing count, elapsed and remaining time."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
