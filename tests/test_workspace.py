"""The workspace derives every path of a run; the registry declares every stage; `pipe all` runs them in one process."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.io import read_json, write_json
from pipeline.registry import REGISTRY, STAGES
from pipeline.report.build import build_report
from pipeline.workspace import Dataset, Workspace, flat_name

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"


def _ws(tmp_path: Path, **folders: Path) -> Workspace:
    cfg = load_config("bottle", "tiny", [], [f"paths.runs={tmp_path / 'runs'}", f"paths.datasets={tmp_path / 'ds'}",
                                             f"data.synthetic_root={tmp_path / 'synth'}", f"data.root={tmp_path / 'mvtec'}"])
    return Workspace.from_config(cfg, folders)


def test_default_layout_of_a_category(tmp_path):
    ws = _ws(tmp_path)
    assert ws.dataset.root == tmp_path / "ds" / "bottle"
    assert ws.dataset.coco.annotations("val") == tmp_path / "ds" / "bottle" / "coco" / "annotations" / "instances_val.json"
    assert ws.dataset.yolo_seg.labels("test") == tmp_path / "ds" / "bottle" / "yolo-seg" / "labels" / "test"
    assert ws.dataset.coco.image("train", "test/crack/001.png").name == flat_name("test/crack/001.png")
    assert ws.yolo.best == tmp_path / "runs" / "bottle" / "yolo" / "best.pt"
    assert ws.sam.decoder.parent == ws.folder("sam") == tmp_path / "runs" / "bottle" / "sam"
    assert ws.report.summary == tmp_path / "runs" / "bottle" / "summary.json"
    assert ws.log("sam", rank=1) == tmp_path / "runs" / "bottle" / "logs" / "sam.rank1.log"
    assert ws.sam_cache == tmp_path / "runs" / "bottle" / "cache" / "sam"
    # the real category when present, else the synthetic stand-in (only when allowed)
    assert ws.source(fallback_synthetic=True) == tmp_path / "synth" / "bottle"
    assert ws.source(fallback_synthetic=False) == tmp_path / "mvtec" / "bottle"
    (tmp_path / "mvtec" / "bottle").mkdir(parents=True)
    assert ws.source(fallback_synthetic=True) == tmp_path / "mvtec" / "bottle"


def test_a_stage_is_found_where_it_last_finished_but_later_runs_write_to_the_default(tmp_path):
    ws = _ws(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "yolo"
    elsewhere.mkdir(parents=True)
    ws.record("yolo", elsewhere)
    assert ws.folder("yolo") == elsewhere and ws.yolo.detections() == elsewhere / "detections_test.json"
    assert ws.target("yolo") == tmp_path / "runs" / "bottle" / "yolo"  # a one-off --out does not move later runs
    assert _ws(tmp_path, yolo=tmp_path / "x").folder("yolo") == tmp_path / "x"  # this command's --out wins
    fresh = _ws(tmp_path)  # a command reads the record once, when it first asks
    fresh.record("yolo", fresh.default_folder("yolo"))  # finishing (or found current) in the default place...
    assert "yolo" not in read_json(ws.index)["stages"]  # ...clears the record: the config's paths decide again
    assert fresh.folder("yolo") == _ws(tmp_path).folder("yolo") == tmp_path / "runs" / "bottle" / "yolo"
    ws.record("yolo", elsewhere)
    shutil.rmtree(elsewhere)
    assert _ws(tmp_path).folder("yolo") == tmp_path / "runs" / "bottle" / "yolo"  # a removed folder is ignored
    (ws.index).write_text("{not json")
    assert ws.folder("sam") == tmp_path / "runs" / "bottle" / "sam"  # a damaged record is no record


def test_the_report_reads_a_stage_run_with_out_elsewhere(tmp_path):
    """The defect the workspace fixes: a stage run with --out used to be invisible to the report."""
    ws = _ws(tmp_path)
    out = tmp_path / "stats-elsewhere"
    result = CliRunner().invoke(app, ["stats", "bottle", "--fallback-synthetic", "--out", str(out), "-p", "tiny",
                                      "--set", f"paths.runs={tmp_path / 'runs'}", "--set", f"paths.datasets={tmp_path / 'ds'}",
                                      "--set", f"data.synthetic_root={tmp_path / 'synth'}",
                                      "--set", f"data.root={tmp_path / 'mvtec'}"])
    assert result.exit_code == 0, result.output
    assert read_json(ws.index)["stages"]["stats"] == str(out.absolute())
    assert not (tmp_path / "runs" / "bottle" / "stats").exists()
    cfg = load_config("bottle", "tiny", [], [f"paths.runs={tmp_path / 'runs'}", f"paths.datasets={tmp_path / 'ds'}"])
    summary = build_report(cfg)
    assert summary["measured"] == ["stats"]  # the card exists only under --out: the report found it there
    assert (tmp_path / "runs" / "bottle" / "report.md").is_file()


def test_sam_is_prompted_by_the_detections_where_the_yolo_stage_finished(tmp_path):
    from pipeline.registry import StageContext

    ws = _ws(tmp_path)
    moved = tmp_path / "y2"
    moved.mkdir()
    ws.record("yolo", moved)
    cfg = load_config("bottle", "tiny")
    sam = REGISTRY["sam"]
    assert moved / "detections_test.json" in sam.inputs(StageContext(cfg, ws, ws.target("sam")))
    given = tmp_path / "mine.json"
    assert given in sam.inputs(StageContext(cfg, ws, ws.target("sam"), {"detections": given}))


def test_a_converted_dataset_knows_its_source(tmp_path):
    d = Dataset(tmp_path / "d")
    assert d.recorded_source() is None  # no report yet
    write_json(d.report, {"data": {"root": str(tmp_path / "src" / "bottle")}})
    assert d.recorded_source() == tmp_path / "src" / "bottle"
    assert Dataset.of(tmp_path / "d") == d and Dataset.of(d) is d


def test_every_stage_declares_sections_that_exist_and_a_command():
    from pipeline.config import Config

    fields = set(Config.model_fields) | {"category"}
    assert [s.name for s in STAGES] == ["stats", "convert", "yolo", "sam", "classify", "anomaly", "report"]
    for stage in STAGES:
        assert set(stage.sections) <= fields, stage.name
        assert stage.writes in ("in_place", "atomic", "staged")
        assert callable(stage.run) and callable(stage.inputs) and callable(stage.outputs)
        names = [o.name for o in stage.options]
        assert len(names) == len(set(names)), stage.name


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_registered_stage_is_a_command_with_its_options(stage):
    result = CliRunner().invoke(app, [*stage.command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    flags = [o.flag or "--" + o.name.replace("_", "-") for o in stage.options]
    shared = ["--force", "--config", "--profile", "--set", "--out"]
    shared += ["--device", "--seed", "--resume", "--dataset"] if stage.trains else []
    shared += ["--root", "--fallback-synthetic"] if stage.reads_source else []
    shared += ["--nproc-per-node"] if stage.ddp else []
    for flag in flags + shared:
        assert flag in text, (stage.name, flag)


def test_unknown_option_is_refused_per_stage():
    result = CliRunner().invoke(app, ["report", "bottle", "--epochs", "3"])
    assert result.exit_code != 0 and "--epochs" in result.output


def test_path_joins_live_in_the_workspace():
    """The CLI, the stage machinery, the registry, the report builder and every stage's run module ask the
    workspace for paths instead of joining literal path pieces."""
    files = [PIPELINE / "cli.py", PIPELINE / "runner.py", PIPELINE / "registry.py", PIPELINE / "report" / "build.py",
             PIPELINE / "stages" / "common.py", PIPELINE / "convert" / "run.py",
             *sorted((PIPELINE / "stages").glob("*/run.py")), *sorted((PIPELINE / "stages").glob("*/data.py"))]
    joins = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(
                    node.right, (ast.Constant, ast.JoinedStr)) and not isinstance(node.left, ast.Constant):
                if not (isinstance(node.right, ast.Constant) and not isinstance(node.right.value, str)):
                    joins.append(f"{f.relative_to(PIPELINE)}:{node.lineno}")
    assert not joins, joins


def test_pipe_all_runs_every_stage_in_one_process_then_skips_them_all(tmp_path, monkeypatch):
    """Stats and convert for real, the training stages stubbed (each has its own end-to-end test): `pipe all`
    runs them in order in this process, records them in the workspace, and a second run skips every one."""
    import pipeline.registry as registry

    calls: list[str] = []

    def fake(name):
        def run(ctx, work):
            calls.append(name)
            write_json(work / "trained.json", {"stage": name})  # not metrics.json: the report skips them
            return None
        return run

    from dataclasses import replace
    stages = tuple(replace(s, run=fake(s.name)) if s.trains else s for s in STAGES)
    monkeypatch.setattr(registry, "STAGES", stages)
    args = ["all", "bottle", "--fallback-synthetic", "-p", "tiny", "--set", f"paths.runs={tmp_path / 'runs'}",
            "--set", f"paths.datasets={tmp_path / 'ds'}", "--set", f"data.synthetic_root={tmp_path / 'synth'}",
            "--set", f"data.root={tmp_path / 'mvtec'}"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert calls == ["yolo", "sam", "classify", "anomaly"]
    assert not (tmp_path / "runs" / "bottle" / "workspace.json").exists()  # every stage in its default place
    assert (tmp_path / "ds" / "bottle" / "splits.json").is_file()
    assert (tmp_path / "runs" / "bottle" / "report.md").is_file()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert calls == ["yolo", "sam", "classify", "anomaly"]  # nothing ran again
    assert " ".join(second.output.split()).count("up to date") == len(STAGES)
    logs = json.dumps(sorted(p.name for p in (tmp_path / "runs" / "bottle" / "logs").iterdir()))
    assert all(f"{s.name}.log" in logs for s in STAGES)
