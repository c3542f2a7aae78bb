"""End to end on the tiny synthetic bottle: trains nothing, checks every file the converter writes."""

import contextlib
import hashlib
import io
import os
from collections import Counter
from dataclasses import replace

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from pipeline.cli import app

from pipeline.convert.instances import ConvertParams
from pipeline.convert.run import convert_all, run_convert
from pipeline.convert.splits import load_splits, stratified_split
from pipeline.convert.writers import link
from pipeline.data.layout import load_category
from pipeline.device import environment
from pipeline.errors import DataError, PipeError
from pipeline.io import read_json

RATIOS = {"train": 0.6, "val": 0.2, "test": 0.2}
DEFECTS = ("broken_large", "broken_small", "contamination")


@pytest.fixture(scope="module")
def converted(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "bottle"
    cat = load_category(tiny_root, "bottle")
    report = run_convert(cat, out, ConvertParams(), RATIOS, seed=0, preview=1, environment=environment("cpu"))
    return cat, out, report


def _tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_stratified_split_properties():
    labels = {f"{c}/{i}": c for c in "abc" for i in range({"a": 20, "b": 22, "c": 3}[c])}
    s = stratified_split(labels, RATIOS, seed=1)
    assert sorted(sum(s.values(), [])) == sorted(labels)  # a partition
    assert not (set(s["train"]) & set(s["val"])) and not (set(s["val"]) & set(s["test"]))
    for split, n in [("val", 4), ("test", 4)]:
        assert sum(1 for r in s[split] if labels[r] == "a") == n
    assert all(sum(1 for r in s[sp] if labels[r] == "c") == 1 for sp in s)  # 3 images: one each
    assert stratified_split(labels, RATIOS, seed=1) == s and stratified_split(labels, RATIOS, seed=2) != s


def test_splits_json(converted):
    cat, out, _ = converted
    splits = load_splits(out)
    test_rels = {s.rel for s in cat.samples if s.split == "test"}
    assert set(sum(splits["splits"].values(), [])) == test_rels
    assert splits["train_good"] == sorted(s.rel for s in cat.samples if s.split == "train")
    # 2 good and 3 per defect: stratification puts one of each defect in val and in test
    for split in ("val", "test"):
        assert {k: v for k, v in splits["counts"][split].items() if k != "good"} == dict.fromkeys(DEFECTS, 1)


def test_yolo_det_and_seg_files(converted):
    cat, out, report = converted
    splits = load_splits(out)
    by_rel = {}
    for inst in report["instances"]:
        by_rel.setdefault(inst["image"], []).append(inst)
    for kind in ("yolo-det", "yolo-seg"):
        for split, rels in splits["splits"].items():
            for rel in rels:
                name = rel.replace("/", "_")
                img = out / kind / "images" / split / name
                assert img.samefile(cat.root / rel) and not img.is_symlink()  # hard-linked by default
                lines = (out / kind / "labels" / split / name.replace(".png", ".txt")).read_text().splitlines()
                assert len(lines) == len(by_rel.get(rel, []))  # good images: empty label file
                for line in lines:
                    vals = line.split()
                    assert int(vals[0]) == DEFECTS.index(splits["labels"][rel])
                    coords = [float(v) for v in vals[1:]]
                    assert all(0 <= v <= 1 for v in coords)
                    assert len(coords) == 4 if kind == "yolo-det" else len(coords) >= 6 and len(coords) % 2 == 0


def test_ultralytics_accepts_data_yaml(converted):
    from ultralytics.data.utils import check_det_dataset

    _, out, _ = converted
    data = check_det_dataset(str(out / "yolo-det" / "data.yaml"))
    assert data["nc"] == 3 and data["names"] == dict(enumerate(DEFECTS))
    assert str(out / "yolo-det" / "images" / "train") == str(data["train"])


def test_coco_loads_and_rasterises_back(converted):
    cat, out, report = converted
    splits = load_splits(out)
    total = 0
    for split in ("train", "val", "test"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(out / "coco/annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DEFECTS)
        images = coco.loadImgs(coco.getImgIds())
        assert sorted(i["source"] for i in images) == splits["splits"][split]
        for img in images:
            assert (out / "coco/images" / split / img["file_name"]).exists()
            sample = next(s for s in cat.samples if s.rel == img["source"])
            truth = cat.read_mask(sample)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            union = np.zeros_like(truth)
            for a in anns:
                assert {"bbox", "area", "segmentation", "iscrowd"} <= a.keys()
                union |= coco.annToMask(a).astype(bool)
            total += len(anns)
            if truth.any():
                assert np.count_nonzero(union & truth) / np.count_nonzero(union | truth) >= 0.99
            else:
                assert not anns
    assert total == report["fidelity"]["instances"]


def test_report_and_previews(converted):
    _, out, report = converted
    on_disk = read_json(out / "convert_report.json")
    f = on_disk["fidelity"]
    assert f["passed"] and f["coco_iou_min"] >= 0.99 and f["yolo_seg_iou_min"] >= 0.95 and f["yolo_boxes_exact"]
    assert len(on_disk["instances"]) == f["instances"] > 0
    assert on_disk["environment"]["device"] == "cpu" and "cuda" in on_disk["environment"]
    assert on_disk["data"]["kind"] == "synthetic"
    assert sorted(p.parent.name for p in (out / "preview").rglob("*.png")) == sorted(DEFECTS)


def test_rerun_is_byte_identical(tiny_root, tmp_path, converted):
    _, out, _ = converted
    again = tmp_path / "bottle"
    run_convert(load_category(tiny_root, "bottle"), again, ConvertParams(), RATIOS, seed=0, preview=1,
                environment=environment("cpu"))
    for f in ["splits.json", "convert_report.json", "coco/annotations/instances_test.json"]:
        assert (again / f).read_bytes() == (out / f).read_bytes()
    for kind in ("yolo-det", "yolo-seg"):
        assert _tree_digest(again / kind / "labels") == _tree_digest(out / kind / "labels")
        assert _tree_digest(again / kind / "images") == _tree_digest(out / kind / "images")


def test_parallel_conversion_matches_one_process(tiny_root):
    cat = load_category(tiny_root, "bottle")
    assert convert_all(cat, ConvertParams(), workers=2) == convert_all(cat, ConvertParams(), workers=1)
    # a category whose validation kept no masks decodes them itself, with the same result
    assert convert_all(replace(cat, masks={}), ConvertParams(), workers=2) == convert_all(cat, ConvertParams())


@pytest.mark.parametrize("command", [["stats"], ["convert", "--preview", "1"], ["convert", "--workers", "2"]])
def test_each_mask_is_decoded_once_per_command(tiny_root, tmp_path, monkeypatch, command):
    """Validation decodes every mask; the dataset card and the conversion (its workers too, which are sent
    the decoded masks) use those and never open a mask PNG's pixels again."""
    decoded = Counter()
    imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: (decoded.update([str(path)]), imread(path, *a))[1])
    r = CliRunner().invoke(app, [command[0], "bottle", "--root", str(tiny_root), "--out", str(tmp_path / "out"),
                                 *command[1:]])
    assert r.exit_code == 0, r.output
    masks = [str(p) for p in sorted((tiny_root / "bottle/ground_truth").rglob("*.png"))]
    assert masks and {m: decoded[m] for m in masks} == dict.fromkeys(masks, 1)


def test_add_train_good(tiny_root, tmp_path):
    out = tmp_path / "bottle"
    report = run_convert(load_category(tiny_root, "bottle"), out, ConvertParams(), RATIOS, 0, add_train_good=True)
    assert report["images_per_split"]["train"] == len(load_splits(out)["splits"]["train"]) + 6
    assert (out / "yolo-det/labels/train/train_good_000.txt").read_text() == ""


def test_bad_data_stops_before_writing(tiny_copy, tmp_path):
    (tiny_copy / "bottle/ground_truth/broken_small/001_mask.png").unlink()
    with pytest.raises(DataError, match="without its mask"):
        load_category(tiny_copy, "bottle")  # the CLI loads (and so validates) before converting
    assert not (tmp_path / "bottle").exists()


def test_fidelity_failure_writes_nothing_and_keeps_old_output(tiny_root, tmp_path):
    from pipeline.outputs import mark

    out = tmp_path / "bottle"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    mark(out, "convert")  # an earlier conversion's output, which pipe may replace
    strict = ConvertParams(yolo_seg_min_iou=1.01)  # unreachable: every instance fails
    with pytest.raises(PipeError, match="below the fidelity bounds.*nothing was written"):
        run_convert(load_category(tiny_root, "bottle"), out, strict, RATIOS, 0)
    assert sorted(p.name for p in out.iterdir()) == [".pipe-output.json", "keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bottle"]


def test_link_falls_back_when_hard_links_are_refused(tmp_path, monkeypatch):
    src = tmp_path / "src.png"
    src.write_bytes(b"png")

    def refuse(*_):
        raise OSError(18, "Invalid cross-device link")

    assert link(src, tmp_path / "a.png") == "hardlink" and (tmp_path / "a.png").samefile(src)
    monkeypatch.setattr(os, "link", refuse)
    assert link(src, tmp_path / "b.png") == "symlink" and (tmp_path / "b.png").resolve() == src
    assert link(src, tmp_path / "e.png", "no-symlink") == "copy" and not (tmp_path / "e.png").is_symlink()
    monkeypatch.setattr(os, "symlink", refuse)
    assert link(src, tmp_path / "c.png") == "copy" and (tmp_path / "c.png").read_bytes() == b"png"
    assert link(src, tmp_path / "d.png", "copy") == "copy" and not (tmp_path / "d.png").samefile(src)


def test_cli_convert(tiny_root, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    r = CliRunner().invoke(app, ["convert", "bottle", "--root", str(tiny_root), "--out", str(tmp_path / "o"),
                                 "--preview", "1"])
    assert r.exit_code == 0, r.output
    assert read_json(tmp_path / "o/convert_report.json")["fidelity"]["passed"]


@pytest.mark.real_data
def test_real_bottle_fidelity(real_root, tmp_path):
    cat = load_category(real_root, "bottle")
    report = run_convert(cat, tmp_path / "bottle", ConvertParams(), RATIOS, seed=0)
    f = report["fidelity"]
    assert f["passed"] and f["coco_iou_min"] >= 0.99 and f["yolo_seg_iou_min"] >= 0.95 and f["yolo_boxes_exact"]
    assert len({i["image"] for i in report["instances"]}) == 63
    assert report["images_per_split"] == {"train": 51, "val": 16, "test": 16}
