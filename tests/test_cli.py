import json
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def _walk(cmd, path=()):
    if hasattr(cmd, "commands"):  # a group
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))
    else:
        yield path, cmd


def test_every_command_and_option_has_help():
    import typer.main

    root = typer.main.get_command(app)
    found = list(_walk(root))
    names = {" ".join(p) for p, _ in found}
    assert {"stats", "synth", "download", "env", "weights list", "weights fetch"} <= names
    for path, cmd in found:
        assert cmd.help and len(cmd.help.split()) >= 5, path
        for param in cmd.params:
            if param.name in ("help",):
                continue
            assert getattr(param, "help", None) and len(param.help.split()) >= 3, (path, param.name)
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_synth_then_stats(tmp_path):
    data = tmp_path / "data"  # outputs may not lie inside a data root
    r = runner.invoke(app, ["synth", "bottle", "--root", str(data), "--size", "48", "--train-good", "3",
                            "--test-good", "1", "--per-defect", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["stats", "bottle", "--root", str(data), "--out", str(tmp_path / "card"), "--json"])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "card/card.json").read_text())
    assert card["counts"]["test"]["broken_small"] == 2 and card["data"]["kind"] == "synthetic"


def test_config_error_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pipeline", "stats", "bottle", "--set", "synth.bogus=1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and "synth.bogus: unknown key" in err[0]
    assert "Traceback" not in proc.stderr


def test_missing_data_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pipeline", "stats", "bottle", "--root", str(tmp_path / "data")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "no such category folder" in proc.stderr and "Traceback" not in proc.stderr


def test_env_reports_versions():
    r = runner.invoke(app, ["env", "--device", "cpu"])
    assert r.exit_code == 0
    env = json.loads(r.stdout)
    assert env["device"] == "cpu" and env["torch"] and "cuda" in env and env["packages"]["ultralytics"]
