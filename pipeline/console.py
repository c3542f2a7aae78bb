"""One console for the whole pipeline: messages, loud warnings and progress bars.

Everything goes to stderr so that stdout stays clean for machine-readable output (``--json``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
_mirrors: list[Console] = []  # log files that receive every message too


def _emit(message: str) -> None:
    console.print(message)
    for m in _mirrors:
        m.print(message)


def info(message: str) -> None:
    _emit(message)


def log_only(message: str) -> None:
    """A line for the log file but not the terminal (per-epoch numbers the progress bar already shows)."""
    for m in _mirrors:
        m.print(f"{time.strftime('%H:%M:%S')} {message}")


def warn(message: str) -> None:
    _emit(f"[bold yellow]WARNING[/] {message}")


def loud(message: str) -> None:
    """For facts that change what the numbers mean (random init, synthetic data): impossible to miss."""
    for c in (console, *_mirrors):
        c.rule("[bold red]attention")
        c.print(f"[bold red]{message}")
        c.rule()


@contextlib.contextmanager
def logged(path: Path, stage: str) -> Iterator[None]:
    """Mirror this console and ultralytics' logger into ``path`` (appended); say the stage's wall time at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as fh:
        mirror = Console(file=fh, width=120, no_color=True, highlight=False, soft_wrap=True)
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
        ultralytics = logging.getLogger("ultralytics")
        ultralytics.addHandler(handler)
        _mirrors.append(mirror)
        mirror.rule(f"{stage} started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        status = "failed"
        try:
            yield
            status = "finished"
        finally:
            elapsed = time.perf_counter() - start
            _mirrors.remove(mirror)
            ultralytics.removeHandler(handler)
            mirror.rule(f"{stage} {status} after {elapsed:.1f} s")
            console.print(f"[bold]{stage}[/] {status} in {elapsed:.1f} s (log: {path})")


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
