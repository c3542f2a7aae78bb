"""The stage machinery: run one registered stage safely, or skip it when it is up to date.

Every stage goes through :func:`run_stage`, whether started by its own command or by ``pipe all``: the
output is refused before any work if pipe must not write it (``pipeline.outputs``), then claimed and
locked; an up-to-date stage is skipped without importing torch; otherwise the stage runs under its log
file, its result is swapped into place and stamped, and the workspace records where it finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipeError
from pipeline.registry import Stage, StageContext

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.source import DataSource
    from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    """Where a running stage writes: ``work`` is ``folder`` itself, or its staging folder for training stages."""

    folder: Path
    work: Path


def data_source(cfg: Config) -> DataSource:
    """The configuration's answer to "which data": the one place ``Config`` becomes the data layer's plain values."""
    from pipeline.data.source import DataSource, SynthSpec

    s = cfg.synth
    return DataSource(cfg.category, cfg.data.root, cfg.data.synthetic_root, cfg.data.mask_threshold,
                      SynthSpec(s.size, s.train_good, s.test_good, s.test_per_defect, s.seed))


def protected(ws: Workspace, *datasets: Path) -> list[tuple[str, Path]]:
    """What no output may equal, contain or lie inside: the data roots, the stage's input datasets and the
    source category each dataset was converted from (which may sit under another root than this run's)."""
    from pipeline.workspace import Dataset

    out = [("the MVTec AD data root", ws.data_root), ("the synthetic data root", ws.synthetic_root)]
    for d in datasets:
        out.append(("the input dataset", Path(d)))
        source = Dataset.of(d).recorded_source()
        if source is not None:
            out.append(("the source category", source))
    return out


def resolve_device(cfg: Config) -> str:
    """The device a training stage will run on, as its up-to-date key says it (``device.device_key``: no torch
    import, so a skip stays instant on a GPU machine too)."""
    from pipeline.device import device_key

    return device_key(cfg.device)


@contextlib.contextmanager
def guarded(cfg: Config, ws: Workspace, stage: Stage, target: Path, inputs: list[Path], outputs: list[Path],
            force: bool, device: str = "", protect: list[tuple[str, Path]] | None = None,
            resume: bool = False) -> Iterator[StageRun | None]:
    """Claim and lock the output, then yield None (and say so) when it is up to date; else run the stage under
    its log and stamp it on success.

    How the stage writes decides what an interruption leaves: ``staged`` (training stages) writes into a
    staging folder that replaces ``target`` only when complete, so a failed or interrupted re-run keeps the
    previous complete result, and ``resume`` continues in that staging folder; ``atomic`` (convert) replaces
    ``target`` in one rename itself; ``in_place`` (a few small files) loses its stamp first, so an
    interrupted run is redone. Under ``torchrun`` only rank 0 claims, locks, swaps, stamps and records.
    """
    import shutil

    from pipeline.config import dump
    from pipeline.console import logged
    from pipeline.io import clean_leftovers
    from pipeline.outputs import check_output, claim, empty, locked, owner, staging, swap_in
    from pipeline.uptodate import Freshness, unmark

    name = stage.name
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    check_output(target, name, protect or [], stage.accepts)  # before the lock creates anything beside it
    if main and (not ws.runs.exists() or empty(ws.runs)):
        claim(ws.runs, "workspace")
    with locked(target, name) if main else contextlib.nullcontext():
        if main:
            claim(target, name, protect or [], stage.accepts)
            clean_leftovers(target)
        fresh = Freshness(name, dump(cfg), device, target, inputs, outputs, force, stage.sections)
        if fresh.skip():
            log.info(f"[bold]{stage.cli_name}[/] up to date ({target}); skipped. --force (or PIPE_FORCE=1) redoes it")
            if main:
                ws.record(name, target)  # what this command chose is what the next stages and the report read
            yield None
            return
        staged = stage.writes == "staged"
        work = staging(target) if staged else target
        if main and staged:
            if resume and not work.is_dir():
                log.info(f"{work}: no interrupted run to resume; starting afresh")
            if not resume and work.exists():
                if owner(work) != name:  # a folder of that name pipe did not make is never removed
                    raise PipeError(f"{work}: pipe keeps an unfinished `{name}` run here, but this folder was not "
                                    f"made by it; move it away and run again")
                shutil.rmtree(work)
            claim(work, name)
        elif main and stage.writes == "in_place":
            unmark(target)
        start = time.perf_counter()
        with logged(ws.log(name, rank), stage.cli_name):  # the swap, the stamp and what goes wrong there: logged too
            yield StageRun(target, work)
            if main:
                if staged:
                    swap_in(work, target, name)
                fresh.mark(time.perf_counter() - start)
                ws.record(name, target)


def run_stage(stage: Stage, ctx: StageContext, force: bool = False) -> dict[str, Any] | None:
    """Run ``stage`` for one command (or one step of ``pipe all``): its result, or None when it was up to date
    (or, under DDP, on the ranks that write nothing)."""
    forced = force or ctx.resume or any(o.forces and ctx.options.get(o.name) for o in stage.options)
    device = resolve_device(ctx.cfg) if stage.trains else ""
    datasets = [ctx.ws.dataset.root] if stage.reads_dataset else []
    with guarded(ctx.cfg, ctx.ws, stage, ctx.folder, stage.inputs(ctx), stage.outputs(ctx.folder), forced, device,
                 protected(ctx.ws, *datasets), ctx.resume) as run:
        if not run:
            return None
        result = stage.run(ctx, run.work)
        if result is not None and stage.done is not None:
            stage.done(ctx, result)  # inside the log: its summary lines belong to the stage's log file
    return result
