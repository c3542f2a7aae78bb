"""The report never overstates: its first line describes only what was measured, missing stages say so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.data.layout import load_category
from pipeline.data.stats import dataset_card, write_card
from pipeline.device import environment
from pipeline.errors import PipeError
from pipeline.io import read_json, write_json
from pipeline.provenance import provenance
from pipeline.report import sections
from pipeline.report.build import build_report, data_kinds
from pipeline.report.document import Document

CLAIM = "measured on the genuine MVTec AD images with pretrained weights"
NOT_RUN = {"stats": "`pipe stats bottle`", "convert": "`pipe convert bottle`", "yolo": "`pipe finetune yolo bottle`",
           "sam": "`pipe finetune sam bottle`", "classify": "`pipe classify bottle`", "anomaly": "`pipe anomaly bottle`"}


def _first_line(out: Path) -> str:
    return (out / "report.md").read_text().split("\n\n")[1]


def _stats_and_convert(tiny_root: Path, converted_dataset: Path, kind: str) -> None:
    """The outputs of `pipe stats` and `pipe convert` where the report looks for them, recording data ``kind``."""
    card = dataset_card(load_category(tiny_root, "bottle"), environment=environment("cpu"))  # as `pipe stats` does
    card["data"]["kind"], card["provenance"] = kind, provenance(kind)
    write_card(card, Path("runs/bottle/stats"))
    report = read_json(converted_dataset / "convert_report.json")
    report["data"]["kind"], report["provenance"] = kind, provenance(kind)
    write_json(Path("datasets/bottle/convert_report.json"), report)


def test_nothing_run_claims_nothing(tmp_path):
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    first = _first_line(tmp_path)
    assert first.startswith("> **Nothing has been measured yet: no stage outputs for bottle")
    assert "MVTec AD" not in first and "pretrained" not in first and "`just all`" in first
    md = (tmp_path / "report.md").read_text()
    for command in NOT_RUN.values():
        assert f"Not run: {command} produces" in md
    assert summary["measured"] == [] and summary["not_run"] == list(NOT_RUN) and summary["meaningful"] is False
    assert json.loads((tmp_path / "summary.json").read_text())["measured"] == []


def test_real_data_without_models_claims_no_weights(tiny_root, converted_dataset, tmp_path):
    _stats_and_convert(tiny_root, converted_dataset, "real")
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    first = _first_line(tmp_path)
    assert "genuine MVTec AD images; no model has been evaluated yet" in first and "pretrained" not in first
    assert "Measured: the dataset card, the converted dataset; not run: the detection metrics" in first
    md = (tmp_path / "report.md").read_text()
    assert all(f"Not run: {NOT_RUN[s]}" in md for s in ("yolo", "sam", "classify", "anomaly"))
    assert "Not run: `pipe stats" not in md and "Not run: `pipe convert" not in md
    assert summary["measured"] == ["stats", "convert"] and summary["meaningful"] is True


def test_synthetic_data_is_the_first_thing_said_and_only_of_what_ran(tiny_root, converted_dataset, tmp_path):
    _stats_and_convert(tiny_root, converted_dataset, "synthetic")
    shutil.rmtree("datasets/bottle")  # the dataset card alone
    summary = build_report(load_config("bottle", "tiny"), tmp_path)
    first = _first_line(tmp_path)
    assert first.startswith("> **These numbers come from synthetic data") and CLAIM not in first
    assert "Measured: the dataset card; not run: the converted dataset, the detection metrics" in first
    assert "weights" not in first  # no stage that uses weights ran, so none is mentioned
    assert summary["measured"] == ["stats"] and summary["meaningful"] is False


def test_headline_claims_real_data_and_pretrained_weights_only_when_every_stage_says_so():
    def first(measured: list[str], caveats: list[str], real: bool) -> str:
        doc = Document("t")
        sections.headline(doc, "bottle", measured, caveats, real)
        return doc.blocks[0][1]

    everything = ["stats", "convert", "yolo", "sam", "classify", "anomaly"]
    assert list(sections.ORDER) == everything  # the registry's stages with a result file, in pipeline order
    assert first(everything, [], True).startswith(f"All numbers below were {CLAIM}.")
    assert "not run" not in first(everything, [], True)
    assert CLAIM not in first(everything, [], False)  # a stage did not record real data
    untrained = first(["stats", "yolo"], ["untrained, randomly initialised weights for yolo (x)"], True)
    assert CLAIM not in untrained and "untrained" in untrained
    assert "not run: the converted dataset, the segmentation metrics, the classification metrics" in untrained
    # a stage that recorded no data kind is "unknown", which never counts as real
    assert data_kinds({"stats": {"data": {"kind": "real"}}, "yolo": {"data": {}}, "sam": None}) == {"real", "unknown"}


def test_unreadable_stage_output_is_one_line(tmp_path):
    metrics = Path("runs/bottle/yolo/metrics.json")
    metrics.parent.mkdir(parents=True)
    metrics.write_text("{truncated")
    with pytest.raises(PipeError, match=r"yolo/metrics.json: cannot read the yolo output \(.*\); rerun "
                                        r"`pipe finetune yolo bottle --force`") as exc:
        build_report(load_config("bottle", "tiny"), tmp_path)
    assert "\n" not in str(exc.value)
