"""The good-only stage end to end on tiny synthetic data, and the rule that no threshold sees a test image."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.convert.instances import ConvertParams
from pipeline.convert.run import run_convert
from pipeline.data.layout import load_category
from pipeline.io import read_json
from pipeline.stages.anomaly import data as anomaly_data
from pipeline.stages.anomaly.run import full_size_scores, run_anomaly


def _convert(root: Path, out: Path) -> Path:
    run_convert(load_category(root, "bottle"), out, ConvertParams(), {"train": 0.4, "val": 0.3, "test": 0.3}, seed=0)
    return out


@pytest.fixture
def private(tiny_root, tmp_path) -> tuple[Path, Path]:
    """A private synthetic root (the test may change its images) and the dataset converted from it."""
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    return root, _convert(root, tmp_path / "ds" / "bottle")


def test_the_stage_end_to_end_on_tiny_data(converted_dataset, tmp_path):
    m = run_anomaly(load_config("bottle", "tiny"), converted_dataset, tmp_path / "out")
    assert m == read_json(tmp_path / "out" / "metrics.json")
    assert m["stage"] == "anomaly" and m["provenance"]["data"] == "synthetic" and not m["provenance"]["meaningful"]
    whole = m["whole_test"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= whole[key] <= 1.0
    splits = read_json(converted_dataset / "splits.json")
    assert whole["images"] == len(splits["labels"])  # every MVTec test image, each scored once
    assert m["split"]["test"]["image"]["images"] == len(splits["splits"]["test"])
    assert m["images"]["fit"] + m["images"]["holdout"] == len(splits["train_good"])
    assert set(m["test_scores"]) == set(splits["splits"]["test"])
    assert (tmp_path / "out" / "patchcore.pt").is_file() and m["overlays"]
    assert m["model"]["memory_bank"][0] >= 1
    _pixel_records(m, splits, converted_dataset, tmp_path / "out")


def _pixel_records(m: dict, splits: dict, dataset: Path, out: Path) -> None:
    """Each split test image's IoU and Dice at its own resolution, their mean over the defective ones, and the
    saved float16 maps, from which the records are drawn again (to within float16's rounding at the threshold)."""
    scores, test = m["test_pixel_scores"], sorted(splits["splits"]["test"])
    assert sorted(scores) == test
    bad = [r for r in test if splits["labels"][r] != "good"]
    full = m["split"]["test"]["pixel_full_size"]
    assert full["defective_images"] == len(bad) == m["split"]["test"]["pixel"]["defective_images"]
    assert full["mean_iou"] == pytest.approx(np.mean([scores[r]["iou"] for r in bad]), abs=1e-6)
    assert full["mean_dice"] == pytest.approx(np.mean([scores[r]["dice"] for r in bad]), abs=1e-6)
    with np.load(out / "maps_test.npz") as z:
        rels, maps = list(z["rels"]), z["maps"]
    assert m["test_maps"] == str(out / "maps_test.npz")
    size = m["model"]["imgsz"]
    assert rels == test and maps.dtype == np.float16 and maps.shape == (len(test), size, size)
    data = anomaly_data.load(dataset, 0.25, seed=0)
    again = full_size_scores(data.category, data.test, maps.astype(np.float32), m["thresholds"]["pixel"])
    for r in test:
        assert again[r]["iou"] == pytest.approx(scores[r]["iou"], abs=0.02), r


class _Masks:
    """A stand-in category whose every mask is the left half of a 64 x 48 image (none for good images)."""

    def read_mask(self, sample) -> np.ndarray:
        mask = np.zeros((64, 48), bool)
        if sample.label != "good":
            mask[:, :24] = True
        return mask


def test_pixel_scores_are_at_the_images_own_resolution():
    """An 8 x 8 map, 1 on its left half, stretched bilinearly over 64 x 48 pixels: at 0.5 it flags columns 0-23
    exactly (column x samples the map at (x + 0.5) / 6 - 0.5, which is 3.5 at x = 23.5), so the defective image
    scores 1; at 0.9 it flags columns 0-21 (22 of 24). A good image on which nothing is flagged scores 1, one on
    which the whole left half is flagged scores 0."""
    from pipeline.data.layout import Sample

    bad, good = (Sample(f"test/{c}/000.png", "test", c, Path("unused"), None) for c in ("crack", "good"))
    half = np.zeros((8, 8), np.float32)
    half[:, :4] = 1.0
    maps = np.stack([half, np.zeros_like(half), half])
    out = full_size_scores(_Masks(), [bad, good, bad], maps[:2], 0.5)
    assert out == {bad.rel: {"iou": 1.0, "dice": 1.0}, good.rel: {"iou": 1.0, "dice": 1.0}}
    assert full_size_scores(_Masks(), [bad], maps[:1], 0.9)[bad.rel]["iou"] == pytest.approx(22 / 24, abs=1e-6)
    assert full_size_scores(_Masks(), [good], maps[2:], 0.5)[good.rel] == {"iou": 0.0, "dice": 0.0}


def test_the_holdout_is_train_good_only_and_disjoint_from_the_bank(converted_dataset):
    data = anomaly_data.load(converted_dataset, 0.25, seed=0)
    fit, held = {s.rel for s in data.fit}, {s.rel for s in data.holdout}
    assert not fit & held and all(r.startswith("train/good/") for r in fit | held)
    assert not {s.rel for s in data.test} & {s.rel for s in [*data.val, *data.holdout]}  # no test image in a fit
    assert anomaly_data.load(converted_dataset, 0.25, seed=0).holdout == data.holdout  # seeded


def test_the_thresholds_never_see_a_test_image(private, tmp_path):
    """Changing only the test split's images moves their scores but not the fitted thresholds."""
    root, dataset = private
    cfg = load_config("bottle", "tiny")
    first = run_anomaly(cfg, dataset, tmp_path / "a")
    rng = np.random.default_rng(0)
    for rel in read_json(dataset / "splits.json")["splits"]["test"]:
        path = root / "bottle" / rel
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(path), rng.integers(0, 256, img.shape, dtype=np.uint8))
    second = run_anomaly(cfg, dataset, tmp_path / "b")
    assert second["thresholds"] == first["thresholds"]
    assert second["test_scores"] != first["test_scores"]


def test_a_category_whose_source_is_gone_is_one_line(private, tmp_path):
    root, dataset = private
    shutil.rmtree(root / "bottle")
    result = CliRunner().invoke(app, ["anomaly", "bottle", "--dataset", str(dataset), "--out", str(tmp_path / "o"),
                                      "-p", "tiny"])
    assert result.exit_code != 0
    assert "converted from is gone" in " ".join(str(result.exception).split()) + " ".join(result.output.split())


def test_anomaly_all_runs_every_present_category_into_one_table(tmp_path):
    """A root holding bottle (colour) and grid (greyscale): both converted and measured, the other 13 listed as
    not run, and the mean over the two."""
    from pipeline.data.synth import synthesize

    root = tmp_path / "mvtec"
    for category in ("bottle", "grid"):
        synthesize(category, root, size=64, train_good=8, test_good=3, test_per_defect=3, seed=0)
    args = ["anomaly-all", "--root", str(root), "-p", "tiny", "--set", f"paths.runs={tmp_path / 'runs'}",
            "--set", f"paths.datasets={tmp_path / 'ds'}", "--out", str(tmp_path / "table")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    doc = read_json(tmp_path / "table" / "anomaly-all.json")
    assert doc["measured"] == ["bottle", "grid"] and len(doc["not_run"]) == 13
    for category in ("bottle", "grid"):
        m = read_json(tmp_path / "runs" / category / "anomaly" / "metrics.json")
        assert doc["categories"][category]["image_auroc"] == m["whole_test"]["image_auroc"]
    mean = (doc["categories"]["bottle"]["pixel_auroc"] + doc["categories"]["grid"]["pixel_auroc"]) / 2
    assert doc["mean"]["pixel_auroc"] == pytest.approx(mean, abs=1e-4)
    md = (tmp_path / "table" / "anomaly-all.md").read_text()
    assert "| grid |" in md and "not run" in md and "**mean (2)**" in md and "synthetic" in md


def test_anomaly_all_without_any_category_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["anomaly-all", "--root", str(tmp_path / "empty"), "-p", "tiny"])
    assert result.exit_code != 0 and "no MVTec AD category here" in str(result.exception)


@pytest.mark.real_data
def test_real_bottle_good_only_separates_defects(real_root, tmp_path):
    """On the genuine bottle, with the cpu profile's random-init ResNet18 (no ImageNet weights here), PatchCore
    fitted on train/good ranks defective test images above good ones (measured 0.937 image AUROC)."""
    dataset = _convert(real_root, tmp_path / "ds" / "bottle")
    m = run_anomaly(load_config("bottle", "cpu"), dataset, tmp_path / "out")
    assert m["provenance"]["data"] == "real" and m["whole_test"]["images"] == 83
    assert m["whole_test"]["image_auroc"] >= 0.85 and m["whole_test"]["pixel_auroc"] >= 0.8
