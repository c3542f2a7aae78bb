import tarfile
import time

import pytest

from pipeline.data import download as dl
from pipeline.data.layout import load_category
from pipeline.errors import DataError


@pytest.fixture
def fake_spec(monkeypatch):
    """Make the published counts match the tiny synthetic bottle, so installs pass the count check."""
    from dataclasses import replace

    from pipeline.data import categories

    tiny = replace(categories.CATEGORIES["bottle"], train_good=6, test_good=2, test_defective=9)
    monkeypatch.setitem(categories.CATEGORIES, "bottle", tiny)


def test_install_from_extracted_folder(tiny_root, tmp_path, fake_spec):
    path = dl.install("bottle", tmp_path / "data", source=tiny_root)  # folder holding bottle/
    assert path == tmp_path / "data" / "bottle"
    assert load_category(tmp_path / "data", "bottle").samples


def test_install_from_archive(tiny_root, tmp_path, fake_spec):
    archive = tmp_path / "bottle.tar.xz"
    with tarfile.open(archive, "w:xz") as tf:
        tf.add(tiny_root / "bottle", arcname="bottle")
    dl.install("bottle", tmp_path / "data", source=archive)
    assert len(load_category(tmp_path / "data", "bottle").samples) == 17


def test_count_mismatch_from_local_copy_warns(tiny_root, tmp_path, capsys):
    dl.install("bottle", tmp_path / "data", source=tiny_root)
    assert "MVTec AD publishes (209, 20, 63)" in capsys.readouterr().err


def test_damaged_archive_leaves_nothing_behind(tiny_root, tmp_path, fake_spec):
    archive = tmp_path / "bottle.tar.xz"
    with tarfile.open(archive, "w:xz") as tf:
        tf.add(tiny_root / "bottle", arcname="bottle")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot extract"):
        dl.install("bottle", tmp_path / "data", source=archive)
    assert not (tmp_path / "data/bottle").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


def test_invalid_copy_is_not_installed(tiny_copy, tmp_path, fake_spec):
    (tiny_copy / "bottle/ground_truth/broken_large/000_mask.png").unlink()
    with pytest.raises(DataError, match="without its mask"):
        dl.install("bottle", tmp_path / "data", source=tiny_copy)
    assert list((tmp_path / "data").iterdir()) == []


def test_no_network_fails_fast_with_manual_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPE_OFFLINE")  # this test is about the real network path failing fast
    monkeypatch.setitem(dl.CATEGORY_URLS, "bottle", "http://pipe-test.invalid/bottle.tar.xz")
    start = time.monotonic()
    with pytest.raises(DataError) as exc:
        dl.install("bottle", tmp_path / "data")
    assert time.monotonic() - start < 30
    msg = str(exc.value)
    assert "cannot reach pipe-test.invalid" in msg and "--from PATH" in msg and "\n" not in msg
    assert not (tmp_path / "data/bottle").exists()


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        dl.install("bottle", tmp_path / "data", source=tmp_path / "nowhere.tar.xz")


def test_offline_switch_never_contacts_the_host(tmp_path):
    from pipeline.fetch import FetchError, fetch

    with pytest.raises(FetchError, match="PIPE_OFFLINE"):
        fetch("http://pipe-test.invalid/x.bin", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin.part").exists()
