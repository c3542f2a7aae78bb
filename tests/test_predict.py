"""`pipe predict` with tiny models trained on the synthetic bottle: consistency with the stages' own evaluation,
any image, bad input, and refusing models that are missing or made for something else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from typer.testing import CliRunner

from conftest import TRAINED_SETS, trained_config
from pipeline.cli import app
from pipeline.coco import decode
from pipeline.io import read_json, write_json
from pipeline.predict.models import ModelError, NotTrained, load_trained
from pipeline.predict.run import PredictOptions, categories, run_predict
from pipeline.workspace import Workspace


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return {Path(r["source"]).name: r for r in map(json.loads, lines)}


def _cli(trained_runs: Path, converted_dataset: Path, *args: str):
    sets = [x for s in (*TRAINED_SETS, f"paths.runs={trained_runs / 'runs'}") for x in ("--set", s)]
    return CliRunner().invoke(app, ["predict", "bottle", *args, "--profile", "tiny", *sets,
                                    "--dataset", str(converted_dataset)])


def test_same_boxes_and_masks_as_the_stages_evaluation(trained_runs, converted_dataset, tmp_path):
    """The test split through `pipe predict` gives the YOLO stage's detections and the SAM stage's
    detector-prompted masks, pixel for pixel."""
    cfg = trained_config(trained_runs)
    ws = Workspace.from_config(cfg, {"dataset": converted_dataset})
    models = load_trained(ws, cfg, "cpu")
    test_images = ws.dataset.coco.images("test")
    o = PredictOptions(cfg.predict.box_conf(cfg), cfg.predict.nms_iou(cfg), batch=3)
    summary = run_predict(models, [test_images], tmp_path / "out", o,
                          categories(models.detector.names, ws.dataset.coco.annotations("test")), {})
    records = _records(tmp_path / "out")
    gt = read_json(ws.dataset.coco.annotations("test"))
    file_of = {im["id"]: im["file_name"] for im in gt["images"]}
    assert summary["images"] == len(gt["images"]) == len(records)

    stage_boxes: dict[str, list] = {}
    for d in read_json(ws.yolo.detections()):
        if d["score"] >= o.conf:
            stage_boxes.setdefault(file_of[d["image_id"]], []).append((d["bbox"], d["category_id"], d["score"]))
    cat_id = {c["name"]: c["id"] for c in gt["categories"]}
    total = 0
    for name, rec in records.items():
        mine = [(b["bbox"], cat_id[b["class"]], b["score"]) for b in rec["boxes"]]
        assert sorted(mine) == sorted(stage_boxes.get(name, [])), name
        total += len(mine)
    assert total > 0  # the comparison is not vacuous

    stage_masks: dict[str, list] = {}
    for r in read_json(ws.sam.masks("detector")):
        stage_masks.setdefault(file_of[r["image_id"]], []).append(r)
    compared = 0
    for name, rec in records.items():
        theirs = stage_masks.get(name, [])
        assert len(theirs) == len(rec["masks"]) == len(rec["boxes"])
        for m, t in zip(rec["masks"], theirs):  # both in the detector's box order
            h, w = rec["height"], rec["width"]
            assert np.array_equal(decode(m["rle"], h, w), decode(t["segmentation"], h, w)), name
            compared += 1
    assert compared == total


def _odd_inputs(folder: Path, source: Path) -> None:
    img = cv2.imread(str(source), cv2.IMREAD_COLOR)
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "colour.jpg"), img)
    (folder / "nested").mkdir()
    cv2.imwrite(str(folder / "nested" / "odd.bmp"), cv2.resize(img, (97, 53)))
    big = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (1024, 1024))  # MVTec's greyscale categories' size
    cv2.imwrite(str(folder / "nested" / "big.tif"), big)
    good = (folder / "grey.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 2])


def test_cli_any_image_and_bad_input(trained_runs, converted_dataset, tmp_path):
    src = next((converted_dataset / "coco" / "images" / "test").iterdir())
    _odd_inputs(tmp_path / "in", src)
    out = tmp_path / "pred"
    r = _cli(trained_runs, converted_dataset, str(tmp_path / "in"), "--out", str(out), "--save-overlays",
             "--save-masks", "--batch", "2")
    assert r.exit_code == 1, r.output
    assert "1 of 5 inputs failed" in r.output and "corrupt.png" in r.output

    records = _records(out)
    assert sorted(records) == ["big.tif", "colour.jpg", "grey.png", "odd.bmp"]
    assert (records["big.tif"]["width"], records["big.tif"]["channels"]) == (1024, 1)
    assert records["grey.png"]["channels"] == 1 and records["colour.jpg"]["channels"] == 3
    assert (records["odd.bmp"]["width"], records["odd.bmp"]["height"]) == (97, 53)
    mask_names = {"grey.png": "grey_mask.png", "colour.jpg": "colour_mask.png", "odd.bmp": "nested_odd_mask.png",
                  "big.tif": "nested_big_mask.png"}
    for key, rec in records.items():
        assert set(rec["probs"]) == {"good", "broken_large", "broken_small", "contamination"}
        assert abs(sum(rec["probs"].values()) - 1) < 1e-4 and rec["label"] in rec["probs"]
        assert rec["anomaly"]["score"] >= 0 and isinstance(rec["anomaly"]["anomalous"], bool)
        assert len(rec["masks"]) == len(rec["boxes"])
        for m in rec["masks"]:
            assert m["rle"]["size"] == [rec["height"], rec["width"]]
        mask = cv2.imread(str(out / "masks" / mask_names[key]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (rec["height"], rec["width"]) and set(np.unique(mask)) <= {0, 255}
    assert len(list((out / "overlays").rglob("*.png"))) == 4

    # the COCO results load against a ground truth built on the written image list, for boxes and masks
    doc = read_json(out / "coco_images.json")
    gt = COCO()
    gt.dataset = {**doc, "annotations": []}
    gt.createIndex()
    results = read_json(out / "coco_results.json")
    assert len(results) == sum(len(r["boxes"]) for r in records.values()) > 0
    loaded = gt.loadRes(results)
    assert set(loaded.getImgIds()) <= set(gt.getImgIds())
    summary = read_json(out / "summary.json")
    assert summary["failed"][0]["path"].endswith("corrupt.png") and summary["images"] == 4


def test_untrained_stage_names_the_command(converted_dataset, tmp_path):
    cfg = trained_config(tmp_path)  # no runs at all
    ws = Workspace.from_config(cfg, {"dataset": converted_dataset})
    with pytest.raises(NotTrained, match=r"run `pipe finetune yolo bottle` first"):
        load_trained(ws, cfg, "cpu")
    with pytest.raises(ModelError, match=r"run `pipe classify bottle` first"):
        load_trained(ws, cfg, "cpu", tasks=("classifier",))


def test_models_for_another_category_or_classes_are_refused(trained_runs, converted_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(trained_runs, root)
    cfg = trained_config(root)
    ws = Workspace.from_config(cfg, {"dataset": converted_dataset})
    metrics = ws.sam.metrics
    write_json(metrics, {**read_json(metrics), "category": "screw"})
    with pytest.raises(ModelError, match=r"trained for category 'screw', not 'bottle'") as e:
        load_trained(ws, cfg, "cpu", tasks=("detector", "segmenter"))
    assert "\n" not in str(e.value)

    best = ws.classify.best(read_json(ws.classify.metrics)["summary"]["best"])
    ckpt = torch.load(best, weights_only=False)
    ckpt["classes"] = ["good", "scratch", "crack", "hole"]
    torch.save(ckpt, best)
    with pytest.raises(ModelError, match=r"trained for classes \['good', 'scratch', 'crack', 'hole'\]"):
        load_trained(ws, cfg, "cpu", tasks=("classifier",))

    ws.sam.decoder.write_bytes(ws.sam.decoder.read_bytes() + b"x")
    write_json(metrics, {**read_json(metrics), "category": "bottle"})
    with pytest.raises(ModelError, match=r"changed since its run wrote it"):
        load_trained(ws, cfg, "cpu", tasks=("detector", "segmenter"))


def test_cli_export_then_predict_with_onnx(trained_runs, converted_dataset, tmp_path):
    """`pipe export` then `pipe predict --backend onnx`: the exported files answer as the PyTorch models do."""
    root = tmp_path / "copy"
    shutil.copytree(trained_runs, root)
    sets = [x for s in (*TRAINED_SETS, f"paths.runs={root / 'runs'}") for x in ("--set", s)]
    common = ["--profile", "tiny", *sets, "--dataset", str(converted_dataset)]
    r = CliRunner().invoke(app, ["export", "bottle", *common])
    assert r.exit_code == 0, r.output
    report = read_json(root / "runs" / "bottle" / "export" / "export_report.json")
    assert report["passed"] and set(report["parts"]) == {"detector", "sam_encoder", "sam_decoder", "classifier"}

    images = str(converted_dataset / "coco" / "images" / "test")
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / backend
        r = CliRunner().invoke(app, ["predict", "bottle", images, "--out", str(outs[backend]), "--backend", backend,
                                     *common])
        assert r.exit_code == 0, r.output
    torch_recs, onnx_recs = _records(outs["torch"]), _records(outs["onnx"])
    assert read_json(outs["onnx"] / "summary.json")["backend"] == "onnx"
    assert sorted(torch_recs) == sorted(onnx_recs)
    for name, a in torch_recs.items():
        b = onnx_recs[name]
        assert a["label"] == b["label"] and max(abs(a["probs"][c] - b["probs"][c]) for c in a["probs"]) < 1e-3
        assert abs(a["anomaly"]["score"] - b["anomaly"]["score"]) < 1e-6  # PatchCore runs in PyTorch for both


def test_cli_coco_gt_ids_and_anomaly_maps(trained_runs, converted_dataset, tmp_path):
    """With --coco-gt the results carry the ground truth's image and category ids (matched by file name), so
    ``COCO(gt).loadRes`` and ``COCOeval`` take them as they are; an image the ground truth lacks is left out of
    them (still predicted). --save-maps writes each image's anomaly map at its size."""
    from pycocotools.cocoeval import COCOeval

    test_images = converted_dataset / "coco" / "images" / "test"
    extra = tmp_path / "extra" / "not_in_gt.png"
    extra.parent.mkdir()
    shutil.copy(next((converted_dataset / "coco" / "images" / "train").iterdir()), extra)
    gt_file = converted_dataset / "coco" / "annotations" / "instances_test.json"
    out = tmp_path / "pred"
    r = _cli(trained_runs, converted_dataset, str(test_images), str(extra), "--out", str(out), "--coco-gt",
             str(gt_file), "--save-maps")
    assert r.exit_code == 0, r.output
    records = _records(out)
    assert "not_in_gt.png" in records
    summary = read_json(out / "summary.json")
    assert summary["not_in_coco_gt"] == [str(extra)] and summary["coco_gt"] == str(gt_file)
    assert not (out / "coco_images.json").exists()

    gt = COCO(str(gt_file))
    id_of = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    results = read_json(out / "coco_results.json")
    expected = sorted((id_of[name], b["score"]) for name, rec in records.items() if name in id_of
                      for b in rec["boxes"])
    assert sorted((x["image_id"], x["score"]) for x in results) == expected and expected
    cat_id = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    assert {x["category_id"] for x in results} <= set(cat_id.values())
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] >= 0  # scored against the ground truth's images (-1 would mean nothing matched)

    for rec in records.values():
        stored = np.load(rec["anomaly"]["map"])
        assert stored.dtype == np.float16 and stored.shape == (rec["height"], rec["width"])
    assert len(list((out / "maps").iterdir())) == len(records)


def test_model_settings_come_from_the_training_run(trained_runs, converted_dataset):
    """A config edited after training does not change what the models run with: the detector's image size and
    SAM's autocast are the ones their runs recorded."""
    base = trained_config(trained_runs)
    ws = Workspace.from_config(base, {"dataset": converted_dataset})
    trained_imgsz = read_json(ws.yolo.metrics)["config"]["yolo"]["imgsz"]
    trained_amp = read_json(ws.sam.metrics)["config"]["sam"]["amp"]
    cfg = trained_config(trained_runs, f"yolo.imgsz={trained_imgsz + 32}", f"sam.amp={str(not trained_amp).lower()}")
    models = load_trained(ws, cfg, "cpu", tasks=("detector", "segmenter"))
    assert models.detector.imgsz == trained_imgsz and models.segmenter.predictor.amp == trained_amp


def test_damaged_model_files_are_one_line_errors(trained_runs, converted_dataset, tmp_path):
    """A damaged file is a ModelError naming it, never a traceback, and never skipped as "not trained"."""
    cfg = trained_config(trained_runs)
    ws = Workspace.from_config(cfg, {"dataset": converted_dataset})
    yolo = tmp_path / "yolo"
    (yolo / "data").mkdir(parents=True)
    for f in (ws.yolo.best, ws.yolo.metrics):
        shutil.copy(f, yolo / f.name)
    torch.save({"feats": torch.zeros(3, 8)}, yolo / "data" / "class_embeddings.pt")  # no "names"
    damaged = Workspace.from_config(cfg, {"dataset": converted_dataset, "yolo": yolo})
    for files in ({"detector": yolo / "best.pt"}, {}):  # named, or found where the stage wrote it
        with pytest.raises(ModelError) as err:
            load_trained(damaged, cfg, "cpu", files, tasks=("detector", "classifier"))
        assert not isinstance(err.value, NotTrained) and "\n" not in str(err.value)
        assert "class_embeddings.pt" in str(err.value) and "pipe finetune yolo bottle" in str(err.value)

    attempt = read_json(ws.classify.metrics)["summary"]["best"]
    classify = tmp_path / "classify"
    (classify / attempt).mkdir(parents=True)
    shutil.copy(ws.classify.metrics, classify / "metrics.json")
    ckpt = torch.load(ws.classify.best(attempt), weights_only=False)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    torch.save(ckpt, classify / attempt / "best.pt")
    with pytest.raises(ModelError, match="do not fit") as err:
        load_trained(ws, cfg, "cpu", {"classifier": classify / attempt / "best.pt"}, tasks=("classifier",))
    assert "\n" not in str(err.value) and str(classify / attempt / "best.pt") in str(err.value)
