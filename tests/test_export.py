"""`pipe export`: the tiny trained models as ONNX and TorchScript, verified, and run back through ``runtime``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import torch

from conftest import trained_config
from pipeline.coco import batch_iou, box_iou, xywh_to_xyxy
from pipeline.data.images import read_image
from pipeline.errors import PipeError
from pipeline.export.modules import ClassifierProbs
from pipeline.export.run import (ExportError, Outputs, Sample, Tolerances, _prompts, compare, export_task, pick,
                                 run_export, sample_images)
from pipeline.export.runtime import META_KEY, OnnxClassifier, OnnxDetector, OnnxSegmenter, load_exported, read_meta
from pipeline.fetch import file_digest
from pipeline.io import write_json
from pipeline.predict.models import ModelError, load_trained
from pipeline.workspace import ExportFiles, Workspace

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


# --- what a check must compare --------------------------------------------------------------------------------


def test_box_iou_is_torchvisions_with_empty_boxes_defined():
    ious = box_iou([[0, 0, 10, 10], [5, 5, 5, 5]], [[0, 0, 10, 20], [5, 5, 5, 5], [1, 1, 1, 1]])
    assert np.allclose(ious, [[0.5, 0, 0], [0, 1, 0]])
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_sample_takes_defective_images_first_across_classes():
    by_label = {"good": ["g1", "g2", "g3"], "zipper_bent": ["z1", "z2"], "squeezed": ["s1"]}
    assert pick(by_label, 3) == ["s1", "z1", "g1"]
    assert pick(by_label, 5) == ["s1", "z1", "g1", "z2", "g2"]
    assert pick(by_label, 10) == ["s1", "z1", "g1", "z2", "g2", "g3"]
    assert pick({"good": ["g1"]}, 4) == ["g1"]


def test_sample_images_of_a_category_whose_defects_sort_after_good(tmp_path):
    """The first images in file order were all good here: nothing for the detector or SAM to be compared on."""
    dataset = tmp_path / "dataset"
    ws = Workspace.from_config(trained_config(tmp_path), {"dataset": dataset})
    folder = ws.dataset.coco.images("test")
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i, rel in enumerate(["test/good/000.png", "test/good/001.png", "test/good/002.png", "test/good/003.png",
                             "test/scratch/000.png", "test/squeeze/000.png"], 1):
        name = rel.replace("/", "_")
        cv2.imwrite(str(folder / name), np.full((16, 16, 3), i, np.uint8))
        images.append({"id": i, "file_name": name, "width": 16, "height": 16, "source": rel})
        if "good" not in rel:
            annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 4, 5]})
    write_json(ws.dataset.coco.annotations("test"), {"images": images, "annotations": annotations,
                                                     "categories": [{"id": 1, "name": "scratch"}]})
    sample = sample_images(ws, "bottle", 3)
    assert sample.labels == ["scratch", "squeeze", "good"]
    assert [len(t) for t in sample.truth] == [1, 1, 0] and sample.truth[0].tolist() == [[2, 3, 6, 8]]


def test_sam_is_prompted_even_without_any_box():
    sample = Sample(["a", "b"], [np.zeros((10, 20, 3), np.uint8), np.zeros((7, 5), np.uint8)],
                    [np.zeros((0, 4), np.float32)] * 2, ["good", "good"])
    prompts = _prompts([[], []], sample, 0.5)
    assert [p.tolist() for p in prompts] == [[[0, 0, 20, 10]], [[0, 0, 5, 7]]]
    truth = Sample(sample.names, sample.images, [np.float32([[1, 2, 3, 4]]), np.zeros((0, 4), np.float32)])
    assert [len(p) for p in _prompts(None, truth, 0.5)] == [1, 0]  # a true box: no whole-frame prompt added


def test_a_check_that_compared_nothing_fails_unless_both_agree_there_is_nothing():
    tol = Tolerances()
    none = Outputs(detections=[[], []])
    boxes = compare("detector", none, Outputs(detections=[[], []]), 0.5, tol)["detector"]["boxes"]
    assert boxes["passed"] and boxes["compared"] == 0 and not boxes["verified"] and "agree" in boxes["note"]
    one = Outputs(detections=[[{"bbox": [1, 1, 5, 5], "class": 0, "score": 0.9}], []])
    boxes = compare("detector", none, one, 0.5, tol)["detector"]["boxes"]
    assert not boxes["passed"] and boxes["compared"] == 1 and boxes["worst"] == 0.0  # found on one side only

    empty = Outputs(masks=[np.zeros((0, 4, 4), bool)], embeddings=[np.zeros((1, 2, 2, 2), np.float32)])
    masks = compare("segmenter", empty, empty, 0.5, tol)["sam_decoder"]["masks"]
    assert not masks["passed"] and masks["compared"] == 0 and not masks["verified"] and "not verified" in masks["note"]
    full = Outputs(masks=[np.ones((1, 4, 4), bool)], embeddings=[np.zeros((1, 2, 2, 2), np.float32)])
    masks = compare("segmenter", full, full, 0.5, tol)["sam_decoder"]["masks"]
    assert masks["passed"] and masks["verified"] and masks["compared"] == 1


# --- the files' class lists -----------------------------------------------------------------------------------


def _set_meta(path: Path, **changes) -> None:
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            prop.value = json.dumps({**json.loads(prop.value), **changes}, sort_keys=True)
    onnx.save(model, str(path))


def test_exported_files_of_other_classes_are_refused_without_any_runs(setup, tmp_path):
    """Where the files are shipped there is no runs/ to compare digests with: the class lists are still checked."""
    cfg, ws, _, _ = setup
    shipped = Workspace.from_config(cfg, {"dataset": ws.dataset.root, "export": tmp_path / "export",
                                          "yolo": tmp_path / "none", "sam": tmp_path / "none",
                                          "classify": tmp_path / "none"})
    shipped.export.folder.mkdir()
    for part in ("detector", "classifier"):
        shutil.copy(ws.export.part(part, "onnx"), shipped.export.part(part, "onnx"))
    ok = load_exported(shipped, cfg, tasks=("detector", "classifier"))
    assert ok.detector.names == ["broken_large", "broken_small", "contamination"]

    _set_meta(shipped.export.part("detector", "onnx"), names=["contamination", "broken_large", "broken_small"])
    with pytest.raises(ModelError, match=r"trained for classes \['contamination', 'broken_large'") as err:
        load_exported(shipped, cfg, tasks=("detector",))
    assert "\n" not in str(err.value) and "pipe export bottle --format onnx" in str(err.value)
    _set_meta(shipped.export.part("classifier", "onnx"), classes=["good", "scratch"])
    with pytest.raises(ModelError, match=r"trained for classes \['good', 'scratch'\]"):
        load_exported(shipped, cfg, tasks=("classifier",))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tracing on a CUDA model needs CUDA")
def test_sam_exported_from_a_cuda_model_runs_on_the_cpu(trained_runs, converted_dataset, tmp_path):
    """segment-anything's ``get_dense_pe`` makes its grid on the model's device: traced there, a TorchScript file
    ran only on CUDA. The export traces a CPU copy; the model itself stays on CUDA."""
    cfg = trained_config(trained_runs)
    ws = Workspace.from_config(cfg, {"dataset": converted_dataset})
    seg = load_trained(ws, cfg, "cuda", tasks=("detector", "segmenter")).segmenter
    encoder, decoder = export_task("segmenter", seg, "torchscript", ExportFiles(tmp_path), "bottle")
    assert next(seg.predictor.model.parameters()).device.type == "cuda"
    cpu = OnnxSegmenter.open(encoder, decoder, "cpu")
    image = read_image(next(ws.dataset.coco.images("test").iterdir()))
    cpu.set_image(image)
    masks, scores = cpu.segment(np.float32([[2, 2, 30, 30]]))
    assert masks.shape == (1, *image.shape[:2]) and scores.shape == (1,)
