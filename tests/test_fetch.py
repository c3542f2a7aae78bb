"""Downloads against a local HTTP server: cut short, resumed, refused, and never renamed into place early."""

import dataclasses
import hashlib
import http.server
import io
import json
import threading

import pytest
import torch

from pipeline import weights
from pipeline.errors import WeightsError
from pipeline.fetch import FetchError, fetch

BODY = bytes(range(256)) * 64  # 16 KiB


class Server(http.server.ThreadingHTTPServer):
    """Serves ``body``, honouring Range requests; stops after ``send`` bytes while announcing all of them."""

    body: bytes = BODY
    send: int | None = None
    ranges: list[str | None]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body, rng = self.server.body, self.headers.get("Range")
        self.server.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        if start >= len(body) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start:self.server.send])  # HTTP/1.0: the connection closes after this

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("PIPE_OFFLINE")  # only 127.0.0.1 is contacted
    srv = Server(("127.0.0.1", 0), Handler)
    srv.ranges = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/file.bin"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_cut_short_is_kept_for_resume_and_never_renamed(server, tmp_path):
    dest, half = tmp_path / "file.bin", len(BODY) // 2
    server.send = half
    with pytest.raises(FetchError) as exc:
        fetch(server.url, dest)  # no checksum to catch it: only the announced length can
    msg = str(exc.value)
    assert f"only {half} of {len(BODY)} bytes arrived" in msg and "again to resume" in msg and "\n" not in msg
    assert not dest.exists() and (tmp_path / "file.bin.part").read_bytes() == BODY[:half]

    server.send = None
    digest = fetch(server.url, dest, sha256=hashlib.sha256(BODY).hexdigest())
    assert server.ranges == [None, f"bytes={half}-"]
    assert dest.read_bytes() == BODY and digest == hashlib.sha256(BODY).hexdigest()
    assert not (tmp_path / "file.bin.part").exists()


def test_short_download_is_not_verified_nor_deleted(server, tmp_path):
    """The length is compared first: a checksum mismatch would throw away a perfectly resumable part."""
    server.send = 1000
    with pytest.raises(FetchError, match="only 1000 of"):
        fetch(server.url, tmp_path / "file.bin", sha256=hashlib.sha256(BODY).hexdigest())
    assert (tmp_path / "file.bin.part").stat().st_size == 1000


def test_complete_part_is_verified_when_the_server_answers_416(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(BODY)
    fetch(server.url, tmp_path / "file.bin", sha256=hashlib.sha256(BODY).hexdigest())
    assert (tmp_path / "file.bin").read_bytes() == BODY and server.ranges == [f"bytes={len(BODY)}-"]


def test_part_longer_than_announced_starts_over(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(BODY + b"extra")
    with pytest.raises(FetchError, match=f"{len(BODY) + 5} bytes arrived but the server announced {len(BODY)}"):
        fetch(server.url, tmp_path / "file.bin")
    assert not (tmp_path / "file.bin.part").exists() and not (tmp_path / "file.bin").exists()


def test_full_disk_is_one_line_naming_the_file(server, tmp_path):
    (tmp_path / "file.bin.part").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(FetchError) as exc:
        fetch(server.url, tmp_path / "file.bin")
    assert str(exc.value).startswith(f"{tmp_path / 'file.bin.part'}: cannot write (No space left on device)")
    assert not (tmp_path / "file.bin").exists()


def test_downloaded_weights_are_checked_and_stamped(server, monkeypatch, tmp_path):
    spec = weights.REGISTRY["yolov8s-worldv2"]  # no published checksum: the archive check is all there is
    monkeypatch.setitem(weights.REGISTRY, spec.name, dataclasses.replace(spec, url=server.url))
    buf = io.BytesIO()
    torch.save({"model": torch.nn.Linear(8, 8), "train_args": {"imgsz": 640}, "epoch": -1}, buf)
    server.body = buf.getvalue()
    r = weights.resolve(spec.name, tmp_path)
    path = tmp_path / spec.filename
    assert r.source == "downloaded" and path.read_bytes() == server.body
    stamp = json.loads((tmp_path / f".{spec.filename}.verified.json").read_text())
    assert stamp["checksum"] == "none published" and stamp["format"] == "torch.save zip" and stamp["sha256"] == r.sha256
    assert weights.resolve(spec.name, tmp_path).source == "local" and len(server.ranges) == 1


def test_downloaded_html_page_is_refused_and_removed(server, monkeypatch, tmp_path):
    spec = weights.REGISTRY["yolov8s-worldv2"]
    monkeypatch.setitem(weights.REGISTRY, spec.name, dataclasses.replace(spec, url=server.url))
    server.body = b"<html><body>Please log in to the hotel Wi-Fi</body></html>"
    with pytest.raises(WeightsError) as exc:
        weights.resolve(spec.name, tmp_path)
    msg = str(exc.value)
    assert "not a PyTorch file (an HTML page?)" in msg and server.url in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part to resume
