"""bench/gpu.py's chunking: the real category must cross to the GPU machine intact, 64 MiB per call."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).parents[1] / "bench" / "gpu.py")
gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_chunks_stay_under_the_limit_and_unpack_rebuilds_the_category(tmp_path):
    src = tmp_path / "mvtec" / "bottle"
    for i, rel in enumerate(["train/good/000.png", "train/good/001.png", "test/broken_large/000.png",
                             "ground_truth/broken_large/000_mask.png", "license.txt"]):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(bytes([i]) * (400_000 + 1000 * i))
    work = tmp_path / "work"
    chunks = gpu.pack(tmp_path / "mvtec", "bottle", chunk_mib=1.0, out=work)
    assert len(chunks) == 3  # five files of about 0.4 MB, at most two per MiB
    for c in chunks:
        assert sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) <= 2**20
    aside = tmp_path / "aside"
    aside.mkdir()
    for c in chunks:
        c.rename(aside / c.name)
    moved = []
    for c in reversed(chunks):  # one chunk per device call, in any order
        (aside / c.name).rename(c)
        moved.append(gpu.unpack(work))
    assert sum(moved) == 5 and all(moved)
    assert _tree(work / "mvtec" / "bottle") == _tree(src)
    assert not list(work.glob("data-*"))


def test_pack_refuses_a_missing_category_and_an_oversized_file(tmp_path):
    with pytest.raises(SystemExit, match="no such category folder"):
        gpu.pack(tmp_path, "bottle", 1.0, out=tmp_path / "work")
    big = tmp_path / "bottle" / "test" / "big.png"
    big.parent.mkdir(parents=True)
    big.write_bytes(b"x" * (2**20 + 1))
    with pytest.raises(SystemExit, match="big.png: 1.0 MiB is larger than one chunk"):
        gpu.pack(tmp_path, "bottle", 1.0, out=tmp_path / "work")
