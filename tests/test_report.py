"""`pipe report`, the up-to-date logic and `just all` on the embedded default (tiny profile) end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import dump, load_config
from pipeline.io import read_json
from pipeline.report.build import build_report
from pipeline.report.document import Document
from pipeline.uptodate import Freshness

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["## Dataset", "## Converted dataset", "## Detection (YOLO-World)", "## Segmentation (SAM)",
            "## Classification (good vs each defect)", "### Long tail: attempt A without and with balanced_softmax",
            "## Good-only detection (PatchCore)", "## Good-only against supervised, on the same test images",
            "## Predictions on test images", "## Environment and timing", "## Provenance"]


def _just() -> str:
    found = shutil.which("just", path=str(Path(sys.executable).parent)) or shutil.which("just")
    if not found:
        pytest.skip("the `just` binary (rust-just) is not installed")
    return found


def _fresh(tmp_path: Path, cfg, **kw) -> Freshness:
    args = {"stage": "yolo", "config": dump(cfg), "device": "cpu", "folder": tmp_path / "out",
            "inputs": [tmp_path / "in.json", tmp_path / "folder"], "outputs": [tmp_path / "out" / "metrics.json"]}
    return Freshness(**{**args, **kw})


def test_freshness_tracks_inputs_config_outputs_and_force(tmp_path, monkeypatch):
    cfg = load_config("bottle", "tiny")
    (tmp_path / "in.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.png").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    assert not _fresh(tmp_path, cfg).skip()  # never ran
    _fresh(tmp_path, cfg).mark()
    assert _fresh(tmp_path, cfg).skip()
    assert not _fresh(tmp_path, cfg, force=True).skip()
    monkeypatch.setenv("PIPE_FORCE", "1")
    assert not _fresh(tmp_path, cfg).skip()
    monkeypatch.delenv("PIPE_FORCE")
    assert _fresh(tmp_path, load_config("bottle", "tiny", overrides=["sam.epochs=9"])).skip()  # not yolo's section
    assert not _fresh(tmp_path, load_config("bottle", "tiny", overrides=["yolo.epochs=9"])).skip()
    assert not _fresh(tmp_path, cfg, device="cuda:0").skip()
    (tmp_path / "folder" / ".hidden.json").write_text("stamp")  # dot files (our own stamps) do not count
    assert _fresh(tmp_path, cfg).skip()
    (tmp_path / "folder" / "b.png").write_bytes(b"y")
    assert not _fresh(tmp_path, cfg).skip()
    _fresh(tmp_path, cfg).mark()
    (tmp_path / "in.json").write_text('{"changed": 1}')
    assert not _fresh(tmp_path, cfg).skip()
    _fresh(tmp_path, cfg).mark()
    (tmp_path / "out" / "metrics.json").unlink()
    assert not _fresh(tmp_path, cfg).skip()  # an output is missing


def test_convert_is_skipped_when_up_to_date_and_redone_with_force(tiny_root):
    args = ["convert", "bottle", "--root", str(tiny_root), "-s", "convert.split={train: 0.4, val: 0.3, test: 0.3}"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    report = Path("datasets/bottle/convert_report.json")
    stamp = report.stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "convert up to date" in again.output and report.stat().st_mtime_ns == stamp
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0 and "up to date" not in forced.output and report.stat().st_mtime_ns != stamp
    changed = CliRunner().invoke(app, [*args, "-s", "convert.min_area=3"])
    assert "up to date" not in changed.output and read_json(report)["params"]["min_area"] == 3
    log = Path("runs/bottle/logs/convert.log").read_text()
    assert log.count("convert started") == 3 and "convert finished after" in log


def test_report_without_stage_outputs_says_what_to_run(tmp_path):
    cfg = load_config("bottle", "tiny")
    summary = build_report(cfg, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Not run: `pipe finetune yolo bottle` produces" in md and "Not run: `pipe classify bottle` produces" in md
    assert summary["detection"] is None and summary["classification"] is None


def test_document_renders_markdown_and_self_contained_html(tmp_path):
    png = tmp_path / "figs" / "a.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    doc = Document("t <1>")
    doc.callout("numbers come from **synthetic data**")
    doc.table(["k", "v"], [["x", 0.12345], ["y", None], ["<b>", True]])
    doc.images([png, tmp_path / "missing.png"], "caption")
    md, html = doc.markdown(tmp_path), doc.html()
    assert "| x | 0.123 |" in md and "| y | – |" in md and "![caption](figs/a.png)" in md
    assert "missing.png" not in md and 'src="data:image/png;base64,' in html and "figs/a.png" not in html
    assert "<b>synthetic data</b>" in html and "&lt;b&gt;" in html and "t &lt;1&gt;" in html


@pytest.mark.slow
def test_just_all_tiny_end_to_end_then_everything_is_skipped(tmp_path):
    just = _just()
    env = {**os.environ, "PROFILE": "tiny", "PIPE_OFFLINE": "1", "MVTEC_ROOT": str(tmp_path / "no-data")}
    env.pop("PIPE_FORCE", None)
    run = subprocess.run([just, "--justfile", str(REPO / "Justfile"), "--working-directory", str(tmp_path), "all"],
                         env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = tmp_path / "runs" / "bottle"
    md = (runs / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in md, heading
    first = md.split("\n\n")[1]
    assert first.startswith("> **These numbers come from synthetic data") and "randomly initialised" in first
    html = (runs / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 3 and 'src="runs/' not in html and "<img src=\"/" not in html
    summary = read_json(runs / "summary.json")
    assert summary["meaningful"] is False and summary["device"] == "cpu" and summary["not_run"] == []
    assert summary["measured"] == ["stats", "convert", "yolo", "sam", "classify", "anomaly"] and "Not run:" not in md
    assert summary["anomaly"]["image_auroc"] is not None and "not run" not in md.split("## Good-only against")[1]
    assert summary["classification"]["best_attempt"] in "ABCD" and summary["detection"]["map50_finetuned"] >= 0
    assert all(summary["wall_s"][k] > 0 for k in ("stats", "convert", "yolo", "sam", "classify", "anomaly"))
    for stage in ("stats", "convert", "yolo", "sam", "classify", "anomaly", "report"):
        assert f"{stage} finished after" in (runs / "logs" / f"{stage}.log").read_text()
    metrics = runs / "classify" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    again = subprocess.run([just, "--justfile", str(REPO / "Justfile"), "--working-directory", str(tmp_path), "all"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("up to date") == 7 and metrics.stat().st_mtime_ns == before
