"""Skip a stage whose outputs are up to date with its inputs and config, as ``make`` would, but by content.

A stage's key is a digest of: the stage name, the package version, the config sections it reads, the
device it resolved to, and its inputs (small files by content; folders and large files by name, size
and modification time, which is what changes when data is replaced). After a successful run the key and
the same digest of every output (each converted format, annotation file, weights, metrics) are written
beside the outputs (``.pipe-stamp.json``); the next run is skipped only when the key matches and every
output is present and unchanged, so a deleted or edited output re-runs its stage. ``--force`` (or
``PIPE_FORCE=1``) ignores the stamp; a failed or interrupted run writes none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.io import read_json, write_json
from pipeline.workspace import stamp_file

CONTENT_LIMIT = 8 << 20  # files up to 8 MiB are hashed by content
# Left out of folder digests: caches a reader adds beside a dataset (ultralytics' labels/*.cache) and
# pipe's own dotfiles (stamps, markers).
DERIVED = (".cache",)


def _file_digest(path: Path, h: Any) -> None:
    st = path.stat()
    if st.st_size <= CONTENT_LIMIT:
        h.update(path.read_bytes())
    else:
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())


def inputs_digest(paths: Iterable[Path]) -> dict[str, str | None]:
    """One digest per input: None for a missing one (its later appearance changes the key)."""
    out: dict[str, str | None] = {}
    for p in paths:
        p = Path(p)
        h = hashlib.sha256()
        if p.is_file():
            _file_digest(p, h)
        elif p.is_dir():
            for root, dirs, files in os.walk(p, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(f for f in files if not f.startswith(".") and not f.endswith(DERIVED)):
                    f = Path(root) / name
                    st = f.stat()
                    h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        else:
            out[str(p)] = None
            continue
        out[str(p)] = h.hexdigest()
    return out


def stage_key(stage: str, config: dict[str, Any], device: str, inputs: Iterable[Path]) -> dict[str, Any]:
    return {"stage": stage, "version": __version__, "device": device, "config": config,
            "inputs": inputs_digest(inputs)}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def is_current(folder: Path, key: dict[str, Any], outputs: Iterable[Path]) -> bool:
    """The stamp matches ``key`` and every output is present and as the run left it."""
    stamp = stamp_file(folder)
    outputs = list(outputs)
    if not stamp.is_file() or not all(Path(o).exists() for o in outputs):
        return False
    try:
        recorded = read_json(stamp)
    except (OSError, ValueError):
        return False
    return recorded.get("digest") == _digest(key) and recorded.get("outputs") == inputs_digest(outputs)


def mark(folder: Path, key: dict[str, Any], outputs: Iterable[Path] = (), wall_s: float | None = None) -> Path:
    return write_json(stamp_file(folder), {"digest": _digest(key), "key": key, "outputs": inputs_digest(outputs),
                                             "wall_s": wall_s})


def unmark(folder: Path) -> None:
    """Drop the stamp before a run that rewrites outputs in place, so an interrupted one is never 'current'."""
    stamp_file(folder).unlink(missing_ok=True)


def wall_time(folder: Path) -> float | None:
    """The wall time of the run that produced ``folder``'s outputs (what the report lists per stage)."""
    stamp = stamp_file(folder)
    return read_json(stamp).get("wall_s") if stamp.is_file() else None


def forced(flag: bool) -> bool:
    return flag or os.environ.get("PIPE_FORCE", "").lower() in ("1", "true", "yes")


class Freshness:
    """``skip()`` before a stage, ``mark()`` after it: the stamp lives in the stage's output folder."""

    def __init__(self, stage: str, config: dict[str, Any], device: str, folder: Path, inputs: Iterable[Path],
                 outputs: Iterable[Path], force: bool = False, sections: Iterable[str] | None = None) -> None:
        """``sections``: the config the stage reads (default: its registry entry); a change anywhere else keeps
        it current."""
        from pipeline.registry import sections as declared

        self.stage, self.device, self.folder = stage, device, Path(folder)
        self.config = {k: config[k] for k in (declared(stage) if sections is None else sections) if k in config}
        self.inputs, self.outputs, self.force = list(inputs), list(outputs), forced(force)

    def skip(self) -> bool:
        if self.force:
            return False
        return is_current(self.folder, stage_key(self.stage, self.config, self.device, self.inputs), self.outputs)

    def mark(self, wall_s: float | None = None) -> Path:
        """Keyed by the inputs as they are after the run (a stage may have generated one, e.g. synthetic data)."""
        return mark(self.folder, stage_key(self.stage, self.config, self.device, self.inputs), self.outputs,
                    None if wall_s is None else round(wall_s, 3))
