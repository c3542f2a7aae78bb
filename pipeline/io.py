"""Atomic file and folder writes, so that an interrupted run never leaves a half-written output.

Every stage writes through these helpers: a later stage may then trust that whatever exists is complete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with named_errors(path):
            yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result gets the permissions open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write a file via a temporary sibling and a rename (atomic on POSIX)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    """Deterministic JSON (sorted keys, fixed layout), so identical inputs give identical bytes.

    ``indent=None`` writes compact JSON through the C encoder, three times faster on large documents
    (COCO annotation files) than the pure-Python one that any indent falls back to.
    """
    text = json.dumps(data, indent=indent, sort_keys=True, default=_jsonable,
                      separators=None if indent is not None else (",", ":"))
    return write_text(path, text + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


OLD_SENTINEL = ".pipe-old"  # inside a ``.<name>.old`` that pipe's own swap moved aside (and no other)


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def clean_leftovers(target: Path) -> None:
    """Remove what interrupted writes of ``target`` left beside it; finish an interrupted swap.

    Only pipe's own leftovers are touched: temporary folders named ``.<name>.<pid>.partial`` whose process is
    gone (a live one belongs to a concurrent writer), and a ``.<name>.old`` holding the sentinel a swap puts
    in it (restored if the new version never arrived, else removed). A user's folder of a similar name stays.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        pid = path.name[len(target.name) + 2:-len(".partial")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    old = _old(target)
    if (old / OLD_SENTINEL).is_file():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
            (target / OLD_SENTINEL).unlink()


def replace_dir(src: Path, target: Path) -> Path:
    """Put the complete folder ``src`` at ``target``; an existing ``target`` is removed only after the rename."""
    src, target = Path(src), Path(target)
    if not target.exists():
        os.replace(src, target)
        return target
    old = _old(target)
    if old.exists():
        if not (old / OLD_SENTINEL).is_file():  # not a leftover of ours: never removed
            raise OSError(errno.EEXIST, "a folder pipe did not make stands where it moves the previous version "
                          "during a swap", str(old))
        shutil.rmtree(old)
    os.replace(target, old)
    (old / OLD_SENTINEL).touch()  # marks it as ours for clean_leftovers, should the next rename never happen
    os.replace(src, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def named_errors(path: Path) -> Iterator[None]:
    """Give an ``OSError`` raised without a file name (a full disk during a write) the path it concerns."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    On any error (or Ctrl-C) the temporary folder is removed and ``target`` is left as it was; after a
    kill, the next write of ``target`` removes the leftover. Whether ``target`` may be replaced at all is
    the caller's decision (``pipeline.outputs``), made before any work starts.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(0o777 & ~_UMASK)
    try:
        with named_errors(target):
            yield tmp
            replace_dir(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        name = str(exc.filename or "")
        if name.startswith(str(tmp)):  # name the file where the user will look for it, not the removed temporary
            raise OSError(exc.errno, exc.strerror, str(target) + name[len(str(tmp)):]) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
