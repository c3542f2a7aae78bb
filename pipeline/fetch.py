"""HTTP download with resume and checksum, shared by the dataset and weights downloads.

A download goes to ``<dest>.part`` (resumed with an HTTP Range request if present), is compared with the
size the server announced, verified, and only then renamed to ``dest``: a file at ``dest`` is always complete
and verified. A transfer cut short keeps its ``.part`` so that the next call resumes it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from pipeline.console import progress

CHUNK = 1 << 20


class FetchError(Exception):
    """Network or checksum failure; callers turn it into a one-line PipeError with the manual fix."""


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None, sha256_prefix: str | None = None) -> str:
    """Check ``path`` against whichever checksum the publisher gives; return its sha256 for provenance."""
    actual = file_digest(path, "sha256")
    if sha256 and actual != sha256.lower():
        raise FetchError(f"{path}: sha256 {actual} does not match the published {sha256}")
    if sha256_prefix and not actual.startswith(sha256_prefix.lower()):
        raise FetchError(f"{path}: sha256 {actual[:12]}... does not start with the published {sha256_prefix}")
    if md5:
        got = file_digest(path, "md5")
        if got != md5.lower():
            raise FetchError(f"{path}: md5 {got} does not match the published {md5}")
    return actual


def fetch(url: str, dest: Path, sha256: str | None = None, md5: str | None = None,
          sha256_prefix: str | None = None, timeout: float = 20.0,
          check: Callable[[Path], object] | None = None) -> str:
    """Download ``url`` to ``dest`` with resume and verification; return the file's sha256.

    ``check`` inspects the complete, checksum-verified download before it is renamed into place and raises
    ``FetchError`` when it is not what was asked for (an HTML page from a proxy, when nobody publishes a
    checksum); such a file is deleted, as resuming it cannot help.
    """
    if os.environ.get("PIPE_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise FetchError(f"{urlparse(url).netloc} not contacted (PIPE_OFFLINE is set)")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(dest.parent, exc) from None
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pipe-mvtec"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    stopped = None
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        total = _announced_total(exc.headers, None, have)  # 416: the .part already holds every byte
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot reach {urlparse(url).netloc} ({reason})") from None
    else:
        with response:
            offset = have if response.status == 206 else 0  # a 200 answer to a Range request starts over
            total = _announced_total(response.headers, response.length, offset)
            stopped = _receive(response, part, offset, total, dest.name)
    _check_length(url, part, total, stopped)
    try:
        digest = verify(part, sha256=sha256, md5=md5, sha256_prefix=sha256_prefix)
        if check is not None:
            check(part)
    except FetchError:
        part.unlink(missing_ok=True)  # a corrupt partial must not be resumed
        raise
    os.replace(part, dest)
    return digest


def _announced_total(headers: Mapping[str, str], length: int | None, offset: int) -> int | None:
    """The whole file's size as the server announced it: Content-Range's ``/N`` when given, else the offset it
    resumed from plus Content-Length; None when it announced neither (then only a checksum can tell)."""
    size = (headers.get("Content-Range") or "").rpartition("/")[2].strip()
    if size.isdigit():
        return int(size)
    return offset + length if length is not None else None


def _receive(response: http.client.HTTPResponse, part: Path, offset: int, total: int | None, label: str) -> str | None:
    """Write the body to ``part`` after its first ``offset`` bytes; return why the transfer broke off, if it did.

    A network error mid-transfer is returned, not raised, so that what arrived stays for the next call to
    resume; a write error (disk full) is one line naming the file instead of a traceback.
    """
    try:
        with open(part, "ab" if offset else "wb") as fh, progress() as bar:
            task = bar.add_task(f"downloading {label}", total=total, completed=offset)
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    return str(exc) or type(exc).__name__
                if not block:
                    return None
                fh.write(block)
                bar.advance(task, len(block))
    except OSError as exc:
        raise _cannot_write(part, exc) from None


def _check_length(url: str, part: Path, total: int | None, stopped: str | None) -> None:
    """Refuse a download whose size differs from the announced one, before any checksum is computed.

    ``http.client`` ends a read quietly when the connection closes early, so without this a download cut
    short would be verified (or, with no checksum published, renamed into place) as if complete.
    """
    got = part.stat().st_size
    if total is not None and got > total:
        part.unlink()  # more than announced: the resumed bytes do not line up, start over
        raise FetchError(f"{url}: {got} bytes arrived but the server announced {total}; run again to start over")
    short = got < total if total is not None else stopped is not None  # a late error after every byte is moot
    if short:
        why = f" ({stopped})" if stopped else ""
        of = f" of {total}" if total is not None else ""
        raise FetchError(f"{url}: only {got}{of} bytes arrived{why}; run the same command again to resume")


def _cannot_write(path: Path, exc: OSError) -> FetchError:
    """A failed write (disk full, read-only folder) as one line naming the file, not a traceback."""
    return FetchError(f"{path}: cannot write ({exc.strerror or exc}); free some space or fix the permissions, then "
                      f"run again")
