"""The report's good-only section and the image-level comparison with the supervised stages, on fabricated outputs.

Four test images of the shared split (two cracks, two good) and small stage outputs written where the workspace
looks for them, so every expected number can be worked out by hand below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline import registry
from pipeline.config import load_config
from pipeline.io import read_json, write_json
from pipeline.provenance import provenance
from pipeline.report import compare, sections
from pipeline.report.build import ORDER, build_report

RELS = ["test/crack/000.png", "test/crack/001.png", "test/good/000.png", "test/good/001.png"]
DEFECTIVE = [True, True, False, False]
SHA = "ab" * 32
PRETRAINED = {"name": "wide_resnet50_2", "source": "torchvision", "pretrained": True, "file": "w.pth", "sha256": "cd" * 32}
RANDOM = {"name": "wide_resnet50_2", "source": "random-init", "pretrained": False, "file": None, "sha256": None}
# the sections' headings this module checks
ANOMALY, VERSUS = "## Good-only detection (PatchCore)", "## Good-only against supervised, on the same test images"


def by_hand_auroc(scores: list[float]) -> float:
    """The fraction of (defective, good) pairs in which the defective image scores higher, ties half."""
    bad = [s for s, d in zip(scores, DEFECTIVE) if d]
    good = [s for s, d in zip(scores, DEFECTIVE) if not d]
    return sum(1.0 if b > g else 0.5 if b == g else 0.0 for b in bad for g in good) / (len(bad) * len(good))


def record(stage: str, used: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The shared record every stage starts with, on real data, its provenance block naming the weights ``used``."""
    return {"stage": stage, "category": "bottle", "device": "cpu", "environment": {"device": "cpu"},
            "data": {"provenance": "real", "dataset": "datasets/bottle", "splits_sha256": SHA, "seed": 0},
            "provenance": provenance("real", [used]), **extra}


def write_splits() -> None:
    labels = {r: r.split("/")[1] for r in RELS}
    write_json(Path("datasets/bottle/splits.json"), {"category": "bottle", "classes": ["crack"], "labels": labels,
                                                     "splits": {"train": [], "val": [], "test": RELS}})


# PatchCore: scores 0.9 0.4 | 0.5 0.1 -> pairs won 3 of 4 (AUROC 0.75); at 0.45: TP 1, FN 1, FP 1, TN 1 (F1 0.5)
PATCHCORE_SCORES = [0.9, 0.4, 0.5, 0.1]


def write_anomaly(weights: dict[str, Any] = PRETRAINED) -> dict[str, Any]:
    overlay = Path("runs/bottle/anomaly/overlays/test_crack_000.png")
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    m = record("anomaly", weights,
               weights=weights, model={"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "imgsz": 256,
                                       "memory_bank": [1000, 384]},
               images={"fit": 180, "holdout": 29, "val": 4, "test": 4, "whole_test": 83},
               whole_test={"images": 83, "image_auroc": 0.9912, "pixel_auroc": 0.98149, "aupro": 0.9353},
               split={"fitted_on": {"val": 4, "train_good_holdout": 29},
                      "test": {"image": {"threshold": 0.45, "images": 4, "f1": 0.5, "accuracy": 0.5, "precision": 0.5,
                                         "recall": 0.5, "tp": 1, "fp": 1, "tn": 1, "fn": 1, "auroc": 0.75},
                               "pixel": {"threshold": 0.6, "defective_images": 2, "mean_iou": 0.41, "mean_dice": 0.55,
                                         "good_images": 2, "good_images_clean": 0.5, "pixel_f1": 0.5,
                                         "pixel_precision": 0.6, "pixel_recall": 0.4}}},
               thresholds={"image": 0.45, "pixel": 0.6},
               test_scores=dict(zip(RELS, PATCHCORE_SCORES)), overlays=[str(overlay.resolve())], ms_per_image=12.5,
               timing_s={"fit": 3.25, "score": 1.0, "total": 5.0})
    write_json(Path("runs/bottle/anomaly/metrics.json"), m)
    return m


def write_classify(predictions: dict[str, Any]) -> None:
    """One attempt, A, the best; its shared-split record holds ``predictions`` (classes: good, crack)."""
    split = {"best_epoch": 1, "train": {"epoch_loss": 0.1, "epoch_acc": 1.0}, "val": {"loss": 0.2, "accuracy": 1.0},
             "test": {"accuracy": 0.5, "macro_f1": 0.5}}
    hyper = {"imgsz": 224, "epochs": 2, "lr_backbone": 1e-4, "lr_head": 1e-3, "optimizer": "AdamW", "batch": 4,
             "backbone": "resnet18"}
    w = {"name": "resnet18", "enum": "ResNet18_Weights.IMAGENET1K_V1", "source": "torchvision", "pretrained": True,
         "file": "r.pth", "sha256": "ef" * 32}
    write_json(Path("runs/bottle/classify/metrics.json"), record(
        "classify", w, classes=["good", "crack"], images={"train": 0, "val": 4, "test": 4}, folds=0,
        attempts=[{"id": "A", "tag": "A", "name": "baseline", "hyperparameters": hyper, "weights": [w],
                   "split": split, "cv": None}],
        summary={"best": "A", "basis": "val macro-F1 on the shared split"}, summary_text="**Best attempt: A**",
        compare=None, confusion_plots={}))
    write_json(Path("runs/bottle/classify/runs/A/split.json"), {"fold": "split", "test_predictions": predictions})


# the classifier's argmax (0 good, 1 crack): crack, good | good, crack -> TP 1, FN 1, TN 1, FP 1 (F1 0.5)
PREDICTIONS = {"rel": RELS, "label": [1, 1, 0, 0], "pred": [1, 0, 0, 1]}


def write_yolo() -> None:
    """Boxes: image 1 at 0.9 and 0.3, image 2 at 0.3, image 3 at 0.2, image 4 none -> best box per image
    0.9 0.3 | 0.2 0.0: every pair won (AUROC 1.0); at conf 0.25 both cracks and no good image (F1 1.0)."""
    curve = {"recall": [0.0, 1.0], "precision": [1.0, 0.0]}
    scored = {"map50": 0.5, "map50_95": 0.3, "precision": 0.5, "recall": 0.5, "images": 4, "instances": 2,
              "ap50_per_class": {"crack": 0.5}, "pr_curve": curve, "caveats": []}
    w = {"name": "yolov8s-worldv2", "source": "ultralytics", "pretrained": True, "file": "y.pt", "sha256": "12" * 32}
    write_json(Path("runs/bottle/yolo/metrics.json"), record(
        "yolo", w, weights=w, zero_shot=scored, finetuned=scored, config={"yolo": {"conf": 0.25}},
        text_embeddings={"source": "clip", "file": None, "sha256": None, "meaningful": True}))
    write_json(Path("runs/bottle/yolo/detections_test.json"), [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [4, 4, 2, 2], "score": 0.3},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.3},
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.2}])
    write_json(Path("datasets/bottle/coco/annotations/instances_test.json"), {
        "images": [{"id": i + 1, "file_name": r.replace("/", "_"), "source": r} for i, r in enumerate(RELS)],
        "annotations": [], "categories": [{"id": 1, "name": "crack"}]})


def table_row(md: str, heading: str, first_cell: str) -> list[str]:
    """The cells of the row starting with ``first_cell`` in the section under ``heading``."""
    section = md.split(heading, 1)[1].split("\n## ", 1)[0]
    line = next(x for x in section.splitlines() if x.startswith(f"| {first_cell}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_report_inputs_come_from_the_registry():
    with_results = [s for s in registry.STAGES if s.result is not None]
    assert list(sections.COMMANDS) == [s.name for s in with_results] == list(ORDER)
    assert sections.COMMANDS["anomaly"] == "pipe anomaly" and sections.COMMANDS["yolo"] == "pipe finetune yolo"
    assert sections.WEIGHTED == tuple(s.name for s in with_results if s.trains) == ("yolo", "sam", "classify",
                                                                                     "anomaly")
    assert "report" not in sections.COMMANDS and all(s in sections.OUTPUTS for s in ORDER)


def test_anomaly_section_summary_and_headline(tmp_path):
    write_splits()
    write_anomaly()
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    first = md.split("\n\n")[1]
    assert "Measured: the good-only anomaly metrics; not run: the dataset card" in first
    assert first.startswith("All numbers below were measured on the genuine MVTec AD images with pretrained weights")
    assert summary["measured"] == ["anomaly"] and "anomaly" not in summary["not_run"] and summary["meaningful"]
    assert summary["device"] == "cpu"
    # the whole test set as published tables print it: percentages with one decimal
    assert table_row(md, ANOMALY, "99.1") == ["99.1", "98.1", "93.5", "83", "12.500", "3.250"]
    section = md.split(ANOMALY, 1)[1].split("\n## ", 1)[0]
    assert "fitted on the split's 4 val images and 29 held-out train/good images, never on a test image" in section
    assert table_row(md, ANOMALY, "0.450") == ["0.450", "4", "0.500", "0.500", "0.500", "0.500", "1 / 1 / 1 / 1",
                                               "0.750"]
    assert table_row(md, ANOMALY, "0.600")[1:4] == ["2", "0.410", "0.550"]
    assert "![PatchCore: anomaly heat map" in section and "anomaly/overlays/test_crack_000.png" in section
    assert 'src="data:image/png;base64,' in (tmp_path / "report.html").read_text()
    assert summary["anomaly"] == {"image_auroc": 0.9912, "pixel_auroc": 0.98149, "aupro": 0.9353,
                                  "whole_test_images": 83, "test_f1": 0.5, "test_image_auroc": 0.75, "test_images": 4,
                                  "test_pixel_iou": 0.41, "threshold_fitted_on": "val + held-out train/good (never test)"}
    assert read_json(tmp_path / "summary.json")["anomaly"]["test_f1"] == 0.5
    # the supervised stages did not run: their rows say so, with the command that fills them
    assert table_row(md, VERSUS, "classifier")[1] == "not run: `pipe classify bottle`"
    assert table_row(md, VERSUS, "YOLO-World")[1] == "not run: `pipe finetune yolo bottle`"
    assert table_row(md, VERSUS, "PatchCore")[2:5] == ["4 (2 / 2)", "0.750", "0.500"]
    assert summary["defect_detection"]["classifier"] is None and summary["defect_detection"]["detector"] is None
    assert "Only PatchCore (good-only) has an image AUROC on these 4 test images (2 defective, 2 good): 0.750" in md
    assert "| anomaly | wide_resnet50_2 | torchvision |" in md  # its weights in the provenance table


def test_anomaly_not_run_says_so_everywhere(tmp_path):
    write_splits()
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Not run: `pipe anomaly bottle` produces the good-only anomaly metrics." in md
    assert table_row(md, VERSUS, "PatchCore")[1:] == ["not run: `pipe anomaly bottle`", *["–"] * 6]
    assert summary["anomaly"] is None and "anomaly" in summary["not_run"]
    assert summary["defect_detection"]["best_by_auroc"] == []


def test_untrained_anomaly_weights_reach_the_first_line(tmp_path):
    write_splits()
    write_anomaly(RANDOM)
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    first = (tmp_path / "report.md").read_text().split("\n\n")[1]
    assert "untrained, randomly initialised weights for wide_resnet50_2" in first and "pretrained weights" not in first
    assert summary["meaningful"] is False


def test_good_only_against_supervised_on_the_same_images(tmp_path):
    write_splits()
    write_anomaly()
    write_classify(PREDICTIONS)
    write_yolo()
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert by_hand_auroc(PATCHCORE_SCORES) == 0.75 and by_hand_auroc([0.9, 0.3, 0.2, 0.0]) == 1.0
    patch = table_row(md, VERSUS, "PatchCore")
    assert patch[1].startswith("score ≥ 0.45, fitted on val + held-out train/good")
    assert patch[2:] == ["4 (2 / 2)", "0.750", "0.500", "0.500", "0.500", "0.500"]
    cls = table_row(md, VERSUS, "classifier, attempt A")
    assert cls[1:] == ["argmax ≠ good", "4 (2 / 2)",
                       "– (its record holds argmax predictions only, no probabilities)",
                       "0.500", "0.500", "0.500", "0.500"]
    det = table_row(md, VERSUS, "YOLO-World")
    assert det[1:] == ["a box with score ≥ 0.25", "4 (2 / 2)", "1.000", "1.000", "1.000", "1.000", "1.000"]
    assert ("By image AUROC on these 4 test images (2 defective, 2 good), YOLO-World detector (supervised) is best: "
            "1.000, against 0.750 for PatchCore (good-only); classifier, attempt A (supervised) has none") in md
    d = summary["defect_detection"]
    assert d["best_by_auroc"] == ["detector"] and d["images"] == 4 and d["defective"] == 2
    assert d["patchcore"]["auroc"] == pytest.approx(0.75) and d["patchcore"]["f1"] == pytest.approx(0.5)
    assert d["classifier"]["auroc"] is None and d["classifier"]["f1"] == pytest.approx(0.5)
    assert d["detector"]["auroc"] == pytest.approx(1.0) and d["detector"]["f1"] == pytest.approx(1.0)
    assert summary["measured"] == ["yolo", "classify", "anomaly"]


def test_classifier_probabilities_rank_when_recorded(tmp_path):
    """With probabilities the classifier has an AUROC: P(not good) 0.8 0.3 | 0.2 0.6 wins 3 of 4 pairs (0.75),
    a tie with PatchCore, which the sentence says."""
    probs = [[0.2, 0.8], [0.7, 0.3], [0.8, 0.2], [0.4, 0.6]]
    assert by_hand_auroc([1 - p[0] for p in probs]) == 0.75
    write_splits()
    write_anomaly()
    write_classify({**PREDICTIONS, "probs": probs})
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert table_row(md, VERSUS, "classifier, attempt A")[3] == "0.750"
    assert "PatchCore (good-only) and classifier, attempt A (supervised) tie at 0.750" in md
    assert summary["defect_detection"]["best_by_auroc"] == ["patchcore", "classifier"]


def test_classifier_record_without_image_names_is_not_compared():
    cls = {"classes": ["good", "crack"], "summary": {"best": "A"}, "attempts": [{"id": "A"}]}
    named = {"test_predictions": {"rel": RELS, "label": [1, 1, 0, 0], "pred": [1, 0, 0, 1]}}
    s = compare.classifier(cls, named, "pipe classify bottle")
    assert s.absent is None and s.decisions == dict(zip(RELS, [True, False, False, True]))
    unnamed = {"test_predictions": {"label": [1, 1, 0, 0], "pred": [1, 0, 0, 1]}}
    s = compare.classifier(cls, unnamed, "pipe classify bottle")
    assert s.absent == "its test predictions name no images: `pipe classify bottle --force` writes them again"
    assert compare.classifier(cls, None, "c", "runs/A/split.json").absent == (
        "no test predictions: `runs/A/split.json` is missing")


def test_only_images_every_method_scored_are_compared():
    splits = {"labels": {r: r.split("/")[1] for r in RELS}, "splits": {"test": RELS}}
    a = {"test_scores": dict(zip(RELS, PATCHCORE_SCORES)), "thresholds": {"image": 0.45}}
    cls = {"classes": ["good", "crack"], "summary": {"best": "A"}, "attempts": [{"id": "A"}]}
    partial = {"test_predictions": {"rel": RELS[1:], "label": [1, 0, 0], "pred": [1, 0, 1]}}
    result = compare.compare([compare.patchcore(a, "x"), compare.classifier(cls, partial, "y")], splits)
    assert result.images == RELS[1:] and result.rows[0].images == 3
    # PatchCore on 0.4 | 0.5 0.1: the defective image beats one good image of two
    assert result.rows[0].auroc == pytest.approx(0.5)
    assert "Only 3 of the shared split's 4 test images were scored by every method" in result.notes[0]
