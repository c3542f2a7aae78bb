"""HTTP download with resume and checksum, shared by the dataset and weights downloads.

A download goes to ``<dest>.part`` (resumed with an HTTP Range request if present), is verified, and only
then renamed to ``dest``: a file at ``dest`` is always complete and verified.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
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
          sha256_prefix: str | None = None, timeout: float = 20.0) -> str:
    """Download ``url`` to ``dest`` with resume and verification; return the file's sha256."""
    if os.environ.get("PIPE_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise FetchError(f"{urlparse(url).netloc} not contacted (PIPE_OFFLINE is set)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pipe-mvtec"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # already complete
            response = None
        else:
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot reach {urlparse(url).netloc} ({reason})") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            mode = "ab" if resumed else "wb"
            total = response.length + (have if resumed else 0) if response.length else None
            with open(part, mode) as fh, progress() as bar:
                task = bar.add_task(f"downloading {dest.name}", total=total, completed=have if resumed else 0)
                for block in iter(lambda: response.read(CHUNK), b""):
                    fh.write(block)
                    bar.advance(task, len(block))
    try:
        digest = verify(part, sha256=sha256, md5=md5, sha256_prefix=sha256_prefix)
    except FetchError:
        part.unlink(missing_ok=True)  # a corrupt partial must not be resumed
        raise
    os.replace(part, dest)
    return digest
