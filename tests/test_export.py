"""`pipe export`: the tiny trained models as ONNX and TorchScript, verified, and run back through ``runtime``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import trained_config
from pipeline.coco import batch_iou, xywh_to_xyxy
from pipeline.data.images import read_image
from pipeline.errors import PipeError
from pipeline.export.modules import ClassifierProbs
from pipeline.export.run import ExportError, Tolerances, box_iou, run_export
from pipeline.export.runtime import OnnxClassifier, OnnxDetector, OnnxSegmenter, load_exported, read_meta
from pipeline.fetch import file_digest
from pipeline.predict.models import load_trained
from pipeline.workspace import Workspace

PARTS = ("detector", "sam_encoder", "sam_decoder", "classifier")
# the untrained tiny detector scores every box about 5e-5: a tolerance below that still compares them all
TOL = Tolerances(score=1e-5)


@pytest.fixture(scope="module")
def setup(trained_runs, converted_dataset, tmp_path_factory):
    """Both formats exported once into a private folder (the shared runs are only read)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPE_OFFLINE", "1")
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        cfg = trained_config(trained_runs)
        ws = Workspace.from_config(cfg, {"dataset": converted_dataset,
                                         "export": tmp_path_factory.mktemp("exported") / "export"})
        report = run_export(cfg, ws, ["onnx", "torchscript"], images=8, tolerances=TOL)
        torch_models = load_trained(ws, cfg, "cpu", tasks=("detector", "segmenter", "classifier"))
    return cfg, ws, report, torch_models


@pytest.fixture(scope="module")
def images(setup):
    """The test-split images, a greyscale one (as MVTec's grid, screw and zipper), and a non-square crop: SAM's
    export must not freeze the example's aspect ratio."""
    _, ws, _, _ = setup
    folder = ws.dataset.coco.images("test")
    ims = [read_image(p) for p in sorted(folder.iterdir())]
    crop = np.ascontiguousarray(ims[0][5:, : ims[0].shape[1] * 2 // 3])
    return [*ims, cv2.cvtColor(ims[0], cv2.COLOR_BGR2GRAY), crop]


def test_export_is_verified_and_reported(setup):
    _, ws, report, _ = setup
    assert report["passed"] and not report["failed"] and report["left_out"] == {}
    assert json.loads(ws.export.report.read_text()) == report
    assert report["images"]["count"] >= 1 and report["thresholds"]["box_iou"] == 0.99
    for part in PARTS:
        for fmt in ("onnx", "torchscript"):
            entry = report["parts"][part][fmt]
            path = ws.export.part(part, fmt)
            assert entry["file"] == str(path) and entry["passed"]
            assert entry["sha256"] == file_digest(path) and entry["size"] == path.stat().st_size
            assert all(c["passed"] for c in entry["checks"].values())
            assert entry["ms_per_image"]["torch"] > 0 and entry["ms_per_image"][fmt] > 0
            assert read_meta(path)["category"] == "bottle"
    checks = {p: report["parts"][p]["onnx"]["checks"] for p in PARTS}
    assert checks["detector"]["boxes"]["compared"] > 0 and checks["detector"]["boxes"]["worst"] >= 0.99
    assert checks["sam_decoder"]["masks"]["compared"] > 0 and checks["sam_decoder"]["masks"]["worst"] >= 0.99
    assert checks["sam_encoder"]["embedding"]["worst"] is not None
    # the encoder rounds its embedding exactly when the PyTorch segmenter does (the stage's cache, float16)
    assert read_meta(ws.export.part("sam_encoder", "onnx"))["rounded"] == setup[3].segmenter.rounded
    assert checks["classifier"]["probs"]["worst"] <= 1e-3
    leftovers = [p.name for p in ws.export.folder.iterdir() if p.name.startswith(".") or p.name == "rejected"]
    assert not leftovers  # no staging folder, nothing rejected
    assert not list(ws.yolo.folder.glob("*.onnx")) and not list(ws.yolo.folder.glob("*.torchscript"))


def _same_detections(a: list[dict], b: list[dict], conf: float) -> None:
    """Each box clearly above ``conf`` on one side has a same-class box with IoU >= 0.99 on the other."""
    for mine, theirs in ((a, b), (b, a)):
        keep = [d for d in mine if d["score"] >= conf + TOL.score]
        if not keep:
            continue
        ious = box_iou(xywh_to_xyxy([d["bbox"] for d in keep]).reshape(-1, 4),
                       xywh_to_xyxy([d["bbox"] for d in theirs]).reshape(-1, 4))
        same = np.array([[x["class"] == y["class"] for y in theirs] for x in keep])
        assert np.where(same, ious, 0).max(1).min() >= 0.99


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_runtime_answers_as_pytorch(setup, images, fmt):
    cfg, ws, _, ref = setup
    got = load_exported(ws, cfg, fmt=fmt)
    assert isinstance(got.detector, OnnxDetector) and isinstance(got.segmenter, OnnxSegmenter)
    assert isinstance(got.classifier, OnnxClassifier) and got.anomaly is None
    assert got.classifier.classes == ref.classifier.classes and got.segmenter.img_size == ref.segmenter.img_size
    assert got.detector.names == ref.detector.names
    assert got.files() == {"detector": str(ws.export.part("detector", fmt)),
                           "segmenter": str(ws.export.part("sam_decoder", fmt)),
                           "classifier": str(ws.export.part("classifier", fmt))}

    square = [im for im in images if im.shape[0] == im.shape[1]]  # ultralytics letterboxes a static file square
    for a, b in zip(ref.detector.detect(square, 0.0, 0.7), got.detector.detect(square, 0.0, 0.7)):
        _same_detections(a, b, 0.0)

    compared = 0
    for im in images:
        h, w = im.shape[:2]
        boxes = np.array([[0, 0, w - 1, h - 1], [w / 4, h / 5, w * 3 / 4, h / 2], [2, 3, 9, 11]], float)
        ref.segmenter.set_image(im)
        got.segmenter.set_image(im)
        (m_ref, s_ref), (m_got, s_got) = ref.segmenter.segment(boxes), got.segmenter.segment(boxes)
        assert m_got.shape == m_ref.shape == (3, h, w) and m_got.dtype == bool
        assert batch_iou(m_ref, m_got).min() >= 0.99 and np.abs(s_ref - s_got).max() < 1e-3
        compared += len(boxes)
        empty, scores = got.segmenter.segment(np.zeros((0, 4)))
        assert empty.shape == (0, h, w) and scores.shape == (0,)
    assert compared

    assert np.abs(ref.classifier.probs(images) - got.classifier.probs(images)).max() <= 1e-3


def test_a_wrong_export_fails_after_reporting_it(setup, tmp_path, monkeypatch):
    """An export whose classifier answers differently is refused: reported, kept aside, never put in place. The
    detector's and SAM's runs are pointed at an empty folder here: those stages are left out, with a note."""
    cfg, ws, _, _ = setup
    bad = Workspace.from_config(cfg, {"dataset": ws.dataset.root, "export": tmp_path / "export",
                                      "yolo": tmp_path / "none", "sam": tmp_path / "none"})
    real = ClassifierProbs.forward
    monkeypatch.setattr(ClassifierProbs, "forward", lambda self, x: real(self, x) * 0.98 + 0.01)
    with pytest.raises(ExportError) as err:
        run_export(cfg, bad, ["onnx"], images=3)
    message = str(err.value)
    assert "\n" not in message and str(bad.export.report) in message and "classifier.onnx probs" in message
    report = json.loads(bad.export.report.read_text())
    entry = report["parts"]["classifier"]["onnx"]
    assert not report["passed"] and not entry["passed"] and entry["checks"]["probs"]["worst"] > 1e-3
    assert entry["file"] == str(bad.export.folder / "rejected" / "classifier.onnx") and Path(entry["file"]).is_file()
    assert not bad.export.part("classifier", "onnx").exists()
    assert set(report["left_out"]) == {"detector", "segmenter"}
    assert "pipe finetune yolo" in report["left_out"]["detector"]


def test_nothing_trained_is_one_line(tmp_path, converted_dataset):
    cfg = trained_config(tmp_path)
    ws = Workspace.from_config(cfg, {"dataset": converted_dataset, "export": tmp_path / "export"})
    with pytest.raises(PipeError) as err:
        run_export(cfg, ws, ["onnx"])
    assert "\n" not in str(err.value) and "pipe finetune yolo bottle" in str(err.value)
    with pytest.raises(PipeError, match="expected one or more of onnx, torchscript"):
        run_export(cfg, ws, ["tflite"])


def test_missing_or_stale_export_is_one_line(setup, tmp_path, monkeypatch):
    cfg, ws, _, _ = setup
    empty = Workspace.from_config(cfg, {"dataset": ws.dataset.root, "export": tmp_path / "none"})
    with pytest.raises(PipeError) as err:
        load_exported(empty, cfg)
    assert "\n" not in str(err.value) and "`pipe export bottle --format onnx`" in str(err.value)

    partial = Workspace.from_config(cfg, {"dataset": ws.dataset.root, "export": tmp_path / "partial"})
    partial.export.folder.mkdir()
    shutil.copy(ws.export.part("detector", "onnx"), partial.export.part("detector", "onnx"))
    with pytest.raises(PipeError, match="no exported segmenter.*`pipe export bottle --format onnx`"):
        load_exported(partial, cfg)  # SAM is trained, so its missing export is not quietly left out

    monkeypatch.setattr("pipeline.fetch.file_digest", lambda path, algorithm="sha256": "0" * 64)
    with pytest.raises(PipeError, match="retrained since.*`pipe export bottle --format onnx`"):
        load_exported(ws, cfg)
