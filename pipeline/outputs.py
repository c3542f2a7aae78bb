"""Output folders pipe may write: claimed before any work, locked while written, swapped in only when complete.

pipe removes or replaces only what it made. Every output folder it creates carries a marker
(``.pipe-output.json``) naming the command that made it; an output path that is a file, a non-empty folder
pipe did not make (or that another command made), or that overlaps a data root, a source category or an
input dataset is refused with one line before any work starts. While a command writes a folder it holds
an advisory lock beside it, so a second run on the same output refuses instead of mixing the two.

Training stages run in a staging folder beside their output (``.<name>.run``, a fixed name so ``--resume``
finds it) and swap it into place only when complete: an interrupted or failed re-run leaves the previous
complete result untouched, and its own work where the next ``--resume`` continues it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.errors import PipeError
from pipeline.io import read_json, replace_dir, write_json
from pipeline.workspace import MARKER, STAMP, lock_file, marker_file, staging_folder

LEGACY_STAMP = STAMP  # folders written before markers existed carry their stage's stamp
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt", ".csv", ".html")


def owner(folder: Path) -> str | None:
    """The command that made ``folder`` (from its marker, else an older run's stamp), or None."""
    folder = Path(folder)
    for name, key in ((MARKER, ("command",)), (LEGACY_STAMP, ("key", "stage"))):
        path = folder / name
        if path.is_file():
            try:
                value = read_json(path)
                for k in key:
                    value = value[k]
                return str(value)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return None


def mark(folder: Path, command: str) -> Path:
    """Write the marker that lets a later run of ``command`` replace this folder."""
    return write_json(marker_file(folder), {"command": command, "made_by": "pipe"})


def empty(folder: Path) -> bool:
    """Nothing in ``folder`` but pipe's marker or stamp (anything else, dotfiles included, may be the user's)."""
    return all(p.name in (MARKER, LEGACY_STAMP) for p in Path(folder).iterdir())


def _overlap(a: Path, b: Path) -> str | None:
    a, b = a.resolve(), b.resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return None


def check_output(folder: Path, command: str, protected: Iterable[tuple[str, Path]] = (),
                 accepts: Iterable[str] = ()) -> None:
    """Refuse, with one line, an output path pipe must not write; create nothing.

    ``protected`` pairs a description with a path the output must neither equal, contain nor lie inside
    (data roots, the source category, the input dataset). ``accepts`` names other commands whose folders
    this one may write into (the report writes beside the stage folders in ``runs/<category>/``).
    """
    folder = Path(folder)
    for what, path in protected:
        how = _overlap(folder, Path(path))
        if how:
            raise PipeError(f"{folder}: the output folder {how} {what} {path}; pipe never writes into its inputs: "
                            f"choose another --out")
    if folder.is_symlink() and not folder.exists():
        raise PipeError(f"{folder}: a broken symbolic link; remove it or choose another --out")
    if folder.exists() and not folder.is_dir():
        raise PipeError(f"{folder}: exists and is a file, not an output folder; choose another --out")
    if folder.is_dir() and not empty(folder):
        made_by = owner(folder)
        if made_by not in (command, *accepts):
            why = "was not made by pipe" if made_by is None else f"was made by `pipe {made_by}`"
            raise PipeError(f"{folder}: the folder is not empty and {why}; pipe replaces only its own outputs: "
                            f"choose another --out, or empty the folder yourself")


def claim(folder: Path, command: str, protected: Iterable[tuple[str, Path]] = (),
          accepts: Iterable[str] = ()) -> Path:
    """``check_output``, then create the folder (if needed) with the user's normal permissions and mark it."""
    check_output(folder, command, protected, accepts)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if owner(folder) is None:
        mark(folder, command)
    return folder


@contextlib.contextmanager
def locked(folder: Path, command: str) -> Iterator[None]:
    """Hold an advisory lock on ``folder`` for the duration; refuse with one line if another run holds it.

    The lock is ``flock`` on a file beside the folder: the kernel drops it when the holder dies, so a
    killed run never leaves a stale lock behind.
    """
    path = lock_file(Path(folder).absolute())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise PipeError(f"{folder}: another pipe run ({holder}) is writing this output; wait for it to finish "
                            f"or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: pipe {command}".encode(), 0)
        yield
    finally:
        os.close(fd)


def staging(folder: Path) -> Path:
    """Where a training stage works until its result is complete (fixed, so ``--resume`` finds it)."""
    return staging_folder(folder)


def relocate(work: Path, final: Path) -> None:
    """Rewrite the paths a stage recorded inside its staging folder to where its files now live."""
    replacements = [(str(Path(work).absolute()), str(Path(final).absolute())), (str(work), str(final))]
    for root, _, files in os.walk(work):
        for name in files:
            path = Path(root) / name
            if path.suffix not in TEXT_SUFFIXES or path.stat().st_size > 64 << 20:
                continue
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            new = text
            for a, b in replacements:
                new = new.replace(a, b)
            if new != text:
                path.write_text(new, encoding="utf-8", errors="surrogateescape")


def swap_in(work: Path, folder: Path, command: str) -> Path:
    """Move a complete staging folder into place; the previous result is removed only after the rename."""
    relocate(work, folder)
    mark(work, command)
    return replace_dir(work, folder)


def die_with_parent() -> None:
    """Ask the kernel to end this (child) process when its parent dies, even by SIGKILL (Linux only).

    Worker pools and relaunched training processes call this first, so killing ``pipe`` never leaves
    orphans computing for nobody.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; workers hold nothing that needs cleaning up
        if os.getppid() == 1:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)
