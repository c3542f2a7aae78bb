"""One provenance block per stage, written from facts by the shared record and only merged by the report."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import load_config
from pipeline.data.layout import load_category
from pipeline.data.stats import dataset_card, write_card
from pipeline.device import environment
from pipeline.io import read_json, write_json
from pipeline.provenance import STAND_IN_TEXT_EMBEDDINGS, SYNTHETIC, provenance
from pipeline.report.build import build_report, caveats, stage_provenance
from pipeline.stages.common import attest, stage_record

RANDOM = {"name": "resnet18", "pretrained": False, "source": "random-init", "file": None, "sha256": None}
PRETRAINED = {"name": "sam_vit_b", "pretrained": True, "source": "local", "file": "/w/sam.pth", "sha256": "ab" * 32}


def test_block_follows_from_the_facts():
    real = provenance("real", [PRETRAINED])
    assert real == {"data": "real", "weights": [{"name": "sam_vit_b", "pretrained": True, "source": "local",
                                                  "sha256": "ab" * 32}], "meaningful": True, "caveats": []}
    assert provenance("real") == {"data": "real", "weights": [], "meaningful": True, "caveats": []}

    synthetic = provenance("synthetic", [PRETRAINED])
    assert synthetic["caveats"] == [SYNTHETIC] and synthetic["meaningful"] is False

    untrained = provenance("real", [RANDOM, PRETRAINED, {**RANDOM, "name": "vit_b_16"}, RANDOM])
    assert untrained["caveats"] == ["untrained, randomly initialised weights for resnet18, vit_b_16"]
    assert untrained["meaningful"] is False and [w["name"] for w in untrained["weights"]] == [
        "resnet18", "sam_vit_b", "vit_b_16"]  # each weight once

    extra = provenance("real", [PRETRAINED], [STAND_IN_TEXT_EMBEDDINGS, STAND_IN_TEXT_EMBEDDINGS])
    assert extra["caveats"] == [STAND_IN_TEXT_EMBEDDINGS] and extra["meaningful"] is False

    everything = provenance("synthetic", [RANDOM], ["own"])
    assert everything["caveats"] == [SYNTHETIC, "untrained, randomly initialised weights for resnet18", "own"]

    for kind in (None, "", "Real", "mvtec"):  # what is not recorded as real or synthetic is unknown, never real
        unknown = provenance(kind, [PRETRAINED])
        assert unknown["data"] == "unknown" and unknown["caveats"] == [] and unknown["meaningful"] is False


def test_stage_record_carries_the_block(converted_dataset):
    cfg = load_config("bottle", "tiny")
    record = stage_record("sam", cfg, "cpu", converted_dataset)
    assert record["data"]["provenance"] == "synthetic"
    assert record["provenance"] == provenance("synthetic") and record["provenance"]["caveats"] == [SYNTHETIC]

    with_weights = stage_record("yolo", cfg, "cpu", converted_dataset, [RANDOM], ["own"])
    assert with_weights["provenance"] == provenance("synthetic", [RANDOM], ["own"])
    # a stage that learns its weights later attests again: the block is replaced, the record kept
    later = attest(record, [PRETRAINED])
    assert later["provenance"] == provenance("synthetic", [PRETRAINED]) and later["config"] == record["config"]
    assert "provenance" in read_json(converted_dataset / "convert_report.json")


def _sam_metrics(block: dict, legacy_pretrained: bool) -> dict:
    """A minimal ``sam/metrics.json``; its old ``weights`` field is ``legacy_pretrained``, its block ``block``."""
    mode = {"mean_iou": 0.5, "mean_dice": 0.6, "mask_ap": {"map50": 0.1, "map": 0.05}, "instances": 1,
            "missed_instances": 0, "per_class": {"broken_large": {"iou": 0.5, "dice": 0.6}}, "caveats": []}
    return {"stage": "sam", "category": "bottle", "device": "cpu", "environment": environment("cpu"),
            "data": {"provenance": block["data"]}, "provenance": block,
            "weights": {"name": "sam_vit_b", "source": "local", "pretrained": legacy_pretrained},
            "zero_shot": mode, "finetuned": mode, "detector_prompted": None, "overlays": []}


def test_report_caveats_are_exactly_the_merged_stage_blocks(tiny_root, converted_dataset, tmp_path):
    card = dataset_card(load_category(tiny_root, "bottle"), environment=environment("cpu"))
    card["provenance"] = provenance("synthetic", caveats=["a card caveat"])
    write_card(card, Path("runs/bottle/stats"))
    report = read_json(converted_dataset / "convert_report.json")
    report["provenance"] = provenance("synthetic", caveats=["a card caveat", "a converter caveat"])
    write_json(Path("datasets/bottle/convert_report.json"), report)
    # the block, not the old fields, is what counts: the old weights field says pretrained, the block says not
    write_json(Path("runs/bottle/sam/metrics.json"),
               _sam_metrics(provenance("synthetic", [{**PRETRAINED, "pretrained": False}], ["a sam caveat"]), True))

    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    merged = [SYNTHETIC, "a card caveat", "a converter caveat", "untrained, randomly initialised weights for sam_vit_b",
              "a sam caveat"]  # the union, in pipeline order, each once
    assert summary["caveats"] == merged and read_json(tmp_path / "summary.json")["caveats"] == merged
    assert summary["meaningful"] is False and summary["measured"] == ["stats", "convert", "sam"]
    first = (tmp_path / "report.md").read_text().split("\n\n")[1]
    assert first.startswith(f"> **These numbers come from {SYNTHETIC}; a card caveat; a converter caveat; untrained")
    assert "; and a sam caveat. They show that the pipeline runs end to end" in first


def test_report_is_meaningful_only_when_every_block_is(tiny_root, converted_dataset, tmp_path):
    card = dataset_card(load_category(tiny_root, "bottle"), environment=environment("cpu"))
    card["data"]["kind"], card["provenance"] = "real", provenance("real")
    write_card(card, Path("runs/bottle/stats"))
    write_json(Path("runs/bottle/sam/metrics.json"), _sam_metrics(provenance("real", [PRETRAINED]), True))
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    assert summary["caveats"] == [] and summary["meaningful"] is True
    assert "measured on the genuine MVTec AD images with pretrained weights" in (tmp_path / "report.md").read_text()

    # a block that says meaningful on data that is not real is not believed
    write_json(Path("runs/bottle/sam/metrics.json"),
               _sam_metrics({**provenance("real", [PRETRAINED]), "data": "unknown"}, True))
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    assert summary["caveats"] == [] and summary["meaningful"] is False
    assert "do not all record real MVTec AD data" in (tmp_path / "report.md").read_text()


def test_outputs_written_before_the_block_get_one_from_their_old_fields():
    old_yolo = {"data": {"provenance": "real"}, "weights": {"name": "yolov8s-worldv2", "pretrained": True},
                "text_embeddings": {"meaningful": False}}
    old_classify = {"data": {"provenance": "real"},
                    "attempts": [{"weights": [RANDOM]}, {"weights": [{**PRETRAINED, "name": "resnet50"}]}]}
    assert stage_provenance(old_yolo) == provenance("real", [old_yolo["weights"]], [STAND_IN_TEXT_EMBEDDINGS])
    assert stage_provenance(old_classify)["caveats"] == ["untrained, randomly initialised weights for resnet18"]
    assert stage_provenance({"data": {}}) == provenance(None)  # nothing recorded: unknown data, not meaningful
    assert caveats({"stats": {"data": {"kind": "synthetic"}}, "yolo": old_yolo, "classify": old_classify}) == [
        SYNTHETIC, STAND_IN_TEXT_EMBEDDINGS, "untrained, randomly initialised weights for resnet18"]
