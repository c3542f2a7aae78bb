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
from conftest import trained_config

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


# --- pixel level: PatchCore's thresholded map against SAM's masks ------------------------------------------

# per image (crack 000, crack 001, good 000, good 001): (IoU, Dice) as each stage would record them
PIXELS = {"patchcore": [(0.5, 0.6), (0.3, 0.46), (1.0, 1.0), (0.0, 0.0)],
          "sam_detector": [(0.8, 0.9), (0.2, 0.3), (1.0, 1.0), (1.0, 1.0)],
          "sam_true_boxes": [(0.9, 0.95), (0.7, 0.8)]}  # true boxes prompt no good image
PIXEL = "Pixel level, at each image's own resolution"  # the pixel table's lead-in
SAM_DET, SAM_TRUE = "SAM from the detector's boxes (supervised)", "SAM from the true boxes (upper bound)"


def per_image(key: str) -> dict[str, dict[str, float]]:
    return {r: {"iou": i, "dice": d} for r, (i, d) in zip(RELS, PIXELS[key])}


def pixel_methods(sam: dict[str, Any] | None, anomaly: dict[str, Any] | None) -> list[compare.Masks]:
    return [compare.patchcore_masks(anomaly, "pipe anomaly bottle"),
            *(compare.sam_masks(sam, k, "pipe finetune sam bottle", "pipe finetune yolo bottle")
              for k in compare.SAM_MODES)]


def sam_modes(detector: bool = True, scores: bool = True) -> dict[str, Any]:
    """The SAM stage's test-split modes as it records them, with (or without) each image's record."""
    def mode(key: str, iou: float) -> dict[str, Any]:
        m = {"mean_iou": iou, "mean_dice": iou, "mask_ap": {"map50": 0.5, "map": 0.3}, "instances": 2,
             "per_class": {"crack": {"iou": iou, "dice": iou, "instances": 2}}, "caveats": []}
        return {**m, "per_image_scores": per_image(key)} if scores else m
    return {"zero_shot": mode("sam_true_boxes", 0.1), "finetuned": mode("sam_true_boxes", 0.8),
            "detector_prompted": {**mode("sam_detector", 0.5), "missed_instances": 0, "conf": 0.25} if detector
            else None}


SPLITS = {"labels": {r: r.split("/")[1] for r in RELS}, "splits": {"test": RELS}}


def test_pixel_comparison_by_hand():
    """IoU on the two cracks: PatchCore 0.5 0.3 (0.4 ± 0.141), SAM from detector boxes 0.8 0.2 (0.5 ± 0.424), SAM
    from true boxes 0.9 0.7 (0.8 ± 0.141): the true boxes lead, by 0.3 over the detector's, within one standard
    deviation (0.424), and by 0.4 over PatchCore, beyond it. Over all four images (good ones included): PatchCore
    0.5 0.3 1 0 (0.45 ± 0.420), SAM from detector boxes 0.8 0.2 1 1 (0.75 ± 0.379)."""
    anomaly = {"test_pixel_scores": per_image("patchcore"), "thresholds": {"pixel": 0.6}}
    result = compare.compare_pixels(pixel_methods(sam_modes(), anomaly), SPLITS)
    assert result.defective_images == RELS[:2] and result.all_images == RELS and result.good_images == 2
    patch, det, true = result.rows
    assert (patch.defective.iou, patch.defective.dice) == pytest.approx((0.4, 0.53))
    assert (patch.defective.iou_std, patch.defective.dice_std) == pytest.approx((0.2 / 2 ** 0.5, 0.14 / 2 ** 0.5))
    assert (det.defective.iou, det.defective.iou_std) == pytest.approx((0.5, 0.6 / 2 ** 0.5))
    assert (true.defective.iou, true.defective.dice, true.defective.images) == pytest.approx((0.8, 0.875, 2))
    assert (patch.every.iou, patch.every.iou_std, patch.every.images) == pytest.approx((0.45, (0.53 / 3) ** 0.5, 4))
    assert (det.every.iou, det.every.iou_std) == pytest.approx((0.75, (0.43 / 3) ** 0.5))
    assert true.every is None  # it scores no good image
    assert result.sentence == (
        f"By mean IoU on the 2 defective test images every method covered, {SAM_TRUE} is best: 0.800 ± 0.141, "
        f"against 0.500 ± 0.424 for {SAM_DET} (a gap of 0.300, within one standard deviation (0.424): not a "
        "reliable difference) and 0.400 ± 0.141 for PatchCore (good-only) (a gap of 0.400). "
        "By mean IoU over all 4 test images (2 good, where a method that flags nothing scores 1), "
        f"{SAM_DET} is best: 0.750 ± 0.379, against 0.450 ± 0.420 for PatchCore (good-only) (a gap of 0.300, within "
        f"one standard deviation (0.420): not a reliable difference); {SAM_TRUE} is left out (a good image has no "
        "true box to prompt with).")
    s = result.summary()
    assert s["best_by_iou"] == ["sam_true_boxes"] and s["defective_images"] == 2 and s["all_images"] == 4
    assert s["patchcore"]["defective"]["iou"] == pytest.approx(0.4) and s["sam_true_boxes"]["all_images"] is None
    assert s["sam_detector"]["mask"] == "fine-tuned SAM prompted with the detector's boxes (score ≥ 0.25)"
    assert result.examples(4) == RELS[:2]


def test_a_gap_is_hedged_only_within_one_standard_deviation():
    """PatchCore 0.9 0.9 against SAM from detector boxes 0.5 0.3: a gap of 0.5, beyond both spreads (0, 0.141)."""
    anomaly = {"test_pixel_scores": {r: {"iou": 0.9, "dice": 0.95} for r in RELS}, "thresholds": {"pixel": 0.6}}
    result = compare.compare_pixels(pixel_methods(sam_modes(), anomaly)[:2], SPLITS)
    assert result.sentence.startswith(
        "By mean IoU on the 2 defective test images every method covered, PatchCore (good-only) is best: "
        f"0.900 ± 0.000, against 0.500 ± 0.424 for {SAM_DET} (a gap of 0.400, within one standard deviation")
    steady = {**sam_modes()["detector_prompted"], "per_image_scores": {
        r: {"iou": v, "dice": v} for r, v in zip(RELS, [0.5, 0.3, 1.0, 1.0])}}
    result = compare.compare_pixels(pixel_methods({"detector_prompted": steady}, anomaly)[:2], SPLITS)
    assert f"against 0.400 ± 0.141 for {SAM_DET} (a gap of 0.500)" in result.sentence
    assert "within one standard deviation" not in result.sentence.split(". ")[0]


def test_absent_pixel_methods_are_named_with_the_command_that_fills_them():
    result = compare.compare_pixels(pixel_methods(None, None), SPLITS)
    assert [r.masks.absent for r in result.rows] == ["not run: `pipe anomaly bottle`",
                                                     *["not run: `pipe finetune sam bottle`"] * 2]
    assert result.sentence.startswith("No method has a mean IoU: PatchCore (good-only) has none (not run: "
                                      "`pipe anomaly bottle`)")
    assert result.summary()["patchcore"] is None and result.summary()["best_by_iou"] == []
    old = {"thresholds": {"pixel": 0.6}}  # written before the stage recorded each image
    patch, det, true = pixel_methods(sam_modes(detector=False, scores=False), old)
    assert patch.absent == "no per-image record: `pipe anomaly bottle --force` writes one"
    assert det.absent == ("not run: it needs the detector's boxes: `pipe finetune yolo bottle`, then "
                          "`pipe finetune sam bottle --force`")
    assert true.absent == "no per-image record: `pipe finetune sam bottle --force` writes one"
    only = compare.compare_pixels([patch, det, compare.sam_masks(sam_modes(), "sam_true_boxes", "s", "y")], SPLITS)
    assert only.sentence.startswith(f"Only {SAM_TRUE} has a mean IoU on the 2 defective test images every method "
                                    "covered: 0.800 ± 0.141; PatchCore (good-only) has none (no per-image record")
    assert only.all_images == [] and only.rows[2].every is None


def test_pixel_comparison_uses_only_images_every_method_scored():
    anomaly = {"test_pixel_scores": {r: v for r, v in per_image("patchcore").items() if r != RELS[1]},
               "thresholds": {"pixel": 0.6}}
    result = compare.compare_pixels(pixel_methods(sam_modes(), anomaly), SPLITS)
    assert result.defective_images == RELS[:1] and result.all_images == [RELS[0], *RELS[2:]]
    assert result.rows[2].defective.iou == pytest.approx(0.9) and result.rows[2].defective.iou_std == 0.0
    assert result.notes == ["Only 1 of the shared split's 2 defective test images were scored by every method that "
                            "ran; the defective-image columns use those."]


def write_test_images() -> None:
    """The four test images (24 x 32, grey) in the converted dataset, and COCO test annotations with each crack's
    mask: columns 4-11 of rows 8-15."""
    import cv2
    import numpy as np

    from pipeline.coco import encode, to_json

    folder = Path("datasets/bottle/coco/images/test")
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((24, 32), bool)
    mask[8:16, 4:12] = True
    for r in RELS:
        cv2.imwrite(str(folder / r.replace("/", "_")), np.full((24, 32), 120, np.uint8))
    write_json(Path("datasets/bottle/coco/annotations/instances_test.json"), {
        "images": [{"id": i + 1, "file_name": r.replace("/", "_"), "source": r, "width": 32, "height": 24}
                   for i, r in enumerate(RELS)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 8, 8, 8], "area": 64,
                         "iscrowd": 0, "segmentation": to_json(encode(mask))} for i in range(2)],
        "categories": [{"id": 1, "name": "crack"}]})


def write_pixel_outputs() -> None:
    """PatchCore's per-image record and its saved 8 x 8 maps, and the SAM stage's metrics and masks."""
    import numpy as np

    from pipeline.coco import encode, to_json

    m = read_json(Path("runs/bottle/anomaly/metrics.json"))
    write_json(Path("runs/bottle/anomaly/metrics.json"), {**m, "test_pixel_scores": per_image("patchcore")})
    maps = np.zeros((4, 8, 8), np.float16)
    maps[:2, 2:6, 1:4] = 1.0
    np.savez_compressed("runs/bottle/anomaly/maps_test.npz", rels=np.array(RELS), maps=maps)
    w = {"name": "vit_tiny", "source": "random-init", "pretrained": True, "file": "s.pt", "sha256": "34" * 32}
    write_json(Path("runs/bottle/sam/metrics.json"), record("sam", w, weights=w, **sam_modes(), overlays=[]))
    blob = np.zeros((24, 32), bool)
    blob[6:14, 2:10] = True
    for mode in ("gt_boxes", "detector"):
        write_json(Path(f"runs/bottle/sam/masks_test_{mode}.json"), [
            {"image_id": 1, "category_id": 1, "segmentation": to_json(encode(blob)), "score": 0.9}])


def test_the_report_sets_pixels_beside_images_with_figures(tmp_path):
    write_splits()
    write_anomaly()
    write_test_images()
    write_pixel_outputs()
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    section = md.split(VERSUS, 1)[1].split("\n## ", 1)[0]
    assert table_row(md, PIXEL, "PatchCore")[1:] == ["map ≥ 0.6, fitted on val + held-out train/good", "2",
                                                     "0.400 ± 0.141", "0.530 ± 0.099", "4", "0.450 ± 0.420",
                                                     "0.515 ± 0.413"]
    assert table_row(md, PIXEL, SAM_DET)[2:5] == ["2", "0.500 ± 0.424", "0.600 ± 0.424"]
    assert table_row(md, PIXEL, SAM_TRUE)[2:6] == ["2", "0.800 ± 0.141", "0.875 ± 0.106",
                                                    "– (a good image has no true box to prompt with)"]
    # the paragraph: image level, pixel level, and who wins where
    assert ("**Image level.** Only PatchCore (good-only) has an image AUROC on these 4 test images (2 defective, "
            "2 good): 0.750") in section
    assert f"**Pixel level.** By mean IoU on the 2 defective test images every method covered, {SAM_TRUE}" in section
    assert ("**Where each wins.** Ranking images (AUROC): PatchCore (good-only); deciding at its operating point "
            f"(F1): PatchCore (good-only); outlining defects (mean IoU on the defective images): {SAM_TRUE}, though "
            f"within one standard deviation of {SAM_DET}; outlining defects without being shown where they are: "
            f"{SAM_DET}, though within one standard deviation of PatchCore (good-only).") in section
    seg = summary["defect_segmentation"]
    assert seg["best_by_iou"] == ["sam_true_boxes"] and seg["good_images"] == 2
    assert seg["sam_detector"]["defective"]["iou"] == pytest.approx(0.5)
    assert summary["comparison_text"].startswith("**Image level.**")
    assert read_json(tmp_path / "summary.json")["defect_segmentation"] == seg
    # one figure per crack, four panels each, embedded full width in the self-contained HTML
    figures = sorted((tmp_path / "figures").glob("pixels_*.png"))
    assert [f.name for f in figures] == ["pixels_test_crack_000.png", "pixels_test_crack_001.png"]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in figures)
    assert "](figures/pixels_test_crack_000.png)" in section
    html = (tmp_path / "report.html").read_text()
    assert html.count('<figure class="wide">') == 1 and html.count("data:image/png;base64,") >= 3


def test_the_pixel_table_names_what_is_missing(tmp_path):
    write_splits()
    write_anomaly()  # without a per-image record: written before the stage kept one
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert table_row(md, PIXEL, "PatchCore")[1] == "no per-image record: `pipe anomaly bottle --force` writes one"
    assert table_row(md, PIXEL, SAM_DET)[1] == "not run: `pipe finetune sam bottle`"
    assert summary["defect_segmentation"]["patchcore"] is None
    assert not (tmp_path / "figures").is_dir() or not list((tmp_path / "figures").glob("pixels_*.png"))


def test_the_stages_records_reach_the_report(trained_runs, converted_dataset, tmp_path):
    """On the tiny trained runs: every pixel method has numbers, on the same images, and figures are drawn."""
    cfg = trained_config(trained_runs, f"paths.datasets={converted_dataset.parent}")
    summary = build_report(cfg, tmp_path)
    seg = summary["defect_segmentation"]
    splits = read_json(converted_dataset / "splits.json")
    bad = [r for r in splits["splits"]["test"] if splits["labels"][r] != "good"]
    assert seg["defective_images"] == len(bad) > 0
    for key in ("patchcore", "sam_detector", "sam_true_boxes"):
        assert seg[key]["defective"]["images"] == len(bad) and 0.0 <= seg[key]["defective"]["iou"] <= 1.0
    assert seg["all_images"] == len(splits["splits"]["test"]) and seg["sam_true_boxes"]["all_images"] is None
    assert 1 <= len(list((tmp_path / "figures").glob("pixels_*.png"))) <= 4
    assert "**Where each wins.**" in (tmp_path / "report.md").read_text()


def test_unreadable_anomaly_maps_stop_with_the_command_that_rewrites_them(tmp_path):
    from pipeline.errors import PipeError

    write_splits()
    write_anomaly()
    write_pixel_outputs()
    Path("runs/bottle/anomaly/maps_test.npz").write_bytes(b"not a zip")
    with pytest.raises(PipeError, match=r"maps_test\.npz: cannot read the anomaly maps .*`pipe anomaly bottle "
                                        "--force`"):
        build_report(load_config("bottle", "tiny"), tmp_path)
