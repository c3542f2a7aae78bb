"""pipe never destroys what it did not make, and every failure is one line with exit code 2 (issue: data safety).

Commands run in-process through ``pipeline.cli.main`` (what the ``pipe`` script calls), so the exit code
and the exact stderr are what a user sees.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import PipeError, describe_os_error
from pipeline.io import OLD_SENTINEL
from pipeline.outputs import MARKER, locked, owner


def pipe(capsys, *args: str) -> tuple[int, str]:
    """Run ``pipe ARGS`` in this process; return its exit code and stderr."""
    old = sys.argv
    sys.argv = ["pipe", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def convert(capsys, root: Path, *extra: str) -> tuple[int, str]:
    return pipe(capsys, "convert", "bottle", "--root", str(root), *extra)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. pipe removes or replaces only what pipe made ---------------------------------------------------------


def test_out_onto_a_user_folder_is_refused_and_its_files_kept(tiny_copy, tmp_path, capsys):
    user = tmp_path / "my_documents"
    user.mkdir()
    (user / "thesis.tex").write_text("months of work")
    code, err = convert(capsys, tiny_copy, "--out", str(user))
    assert code == 2
    assert "not made by pipe" in one_line_error(err) and str(user) in err
    assert tree(user) == {"thesis.tex": b"months of work"}


def test_out_onto_the_source_category_or_its_root_is_refused(tiny_copy, capsys):
    before = tree(tiny_copy)
    for out in (tiny_copy / "bottle", tiny_copy, tiny_copy / "bottle" / "converted", tiny_copy.parent):
        code, err = convert(capsys, tiny_copy, "--out", str(out))
        assert code == 2 and "data root" in one_line_error(err), (out, err)
    assert tree(tiny_copy) == before  # masks and train/good untouched


def test_out_onto_a_file_is_refused_and_the_file_untouched(tiny_copy, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    code, err = convert(capsys, tiny_copy, "--out", str(f))
    assert code == 2 and "is a file" in one_line_error(err)
    assert f.read_text() == "keep me" and not list(tmp_path.glob(".notes.txt*"))


def test_a_training_stage_may_not_write_into_the_source_category_of_its_dataset(tiny_copy, tmp_path, capsys):
    assert convert(capsys, tiny_copy, "--out", str(tmp_path / "ds"))[0] == 0
    code, err = pipe(capsys, "finetune", "sam", "bottle", "--dataset", str(tmp_path / "ds"),
                     "--out", str(tiny_copy / "bottle" / "sam"), "--profile", "tiny")
    assert code == 2 and "source category" in one_line_error(err)
    assert not (tiny_copy / "bottle" / "sam").exists()


def test_a_folder_made_by_another_command_is_refused(tiny_copy, tmp_path, capsys):
    assert convert(capsys, tiny_copy, "--out", str(tmp_path / "ds"))[0] == 0
    assert owner(tmp_path / "ds") == "convert"
    code, err = pipe(capsys, "stats", "bottle", "--root", str(tiny_copy), "--out", str(tmp_path / "ds"))
    assert code == 2 and "made by `pipe convert`" in one_line_error(err)


def test_convert_replaces_its_own_earlier_output(tiny_copy, tmp_path, capsys):
    out = tmp_path / "ds"
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    first = tree(out)
    (out / "yolo-det" / "stray.txt").write_text("left by an older run")
    assert convert(capsys, tiny_copy, "--out", str(out), "--force")[0] == 0
    assert "yolo-det/stray.txt" not in tree(out) and (out / "splits.json").read_bytes() == first["splits.json"]


def test_synth_never_writes_over_a_real_category(tiny_copy, tmp_path, capsys):
    (tiny_copy / "bottle" / "SYNTHETIC.json").unlink()  # now it is indistinguishable from a real category
    before = tree(tiny_copy)
    code, err = pipe(capsys, "synth", "bottle", "--root", str(tiny_copy), "--size", "48")
    assert code == 2 and "not synthetic" in one_line_error(err)
    assert tree(tiny_copy) == before
    # a synthetic category is regenerated in place
    assert pipe(capsys, "synth", "bottle", "--root", str(tmp_path / "syn"), "--size", "48")[0] == 0
    assert pipe(capsys, "synth", "bottle", "--root", str(tmp_path / "syn"), "--size", "40")[0] == 0


def test_download_keeps_an_existing_category_without_force(tiny_copy, tmp_path, capsys):
    before = tree(tiny_copy)
    code, err = pipe(capsys, "download", "bottle", "--root", str(tiny_copy), "--from", str(tmp_path / "nowhere"))
    assert code == 0 and "--force" in err
    assert tree(tiny_copy) == before


def test_download_force_keeps_the_old_category_until_the_new_one_is_verified(tiny_copy, tmp_path, capsys):
    import shutil

    before = tree(tiny_copy)
    broken = tmp_path / "broken" / "bottle"
    shutil.copytree(tiny_copy / "bottle", broken)
    next(broken.glob("ground_truth/*/*.png")).unlink()  # a defect image without its mask
    code, err = pipe(capsys, "download", "bottle", "--root", str(tiny_copy), "--from", str(broken.parent), "--force")
    assert code == 2 and "without its mask" in one_line_error(err)
    assert tree(tiny_copy) == before and not [p for p in tiny_copy.iterdir() if p.name.startswith(".")]


# --- 3. one line, exit 2, nothing half-written; leftovers; workers; permissions --------------------------------


@pytest.mark.parametrize("code, words", [
    (errno.EACCES, "permission denied; check its permissions"),
    (errno.EROFS, "read-only file system; the filesystem is read-only"),
    (errno.ENOSPC, "no space left on device; free some disk space"),
    (errno.ELOOP, "too many levels of symbolic links; a symbolic link leads back to itself"),
    (errno.EISDIR, "is a directory; a folder stands where a file is expected"),
])
def test_os_errors_are_described_with_path_reason_and_fix(code, words):
    line = describe_os_error(OSError(code, os.strerror(code), "/data/out/x.json"))
    assert line.startswith("/data/out/x.json: ") and words in line.lower() and "\n" not in line


def test_full_disk_during_linking_is_one_line_naming_the_cause(tiny_copy, tmp_path, capsys, monkeypatch):
    import pipeline.convert.writers as writers

    out = tmp_path / "ds"
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    before = tree(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for name in ("link", "symlink"):
        monkeypatch.setattr(writers.os, name, full)
    monkeypatch.setattr(writers.shutil, "copy2", full)
    code, err = convert(capsys, tiny_copy, "--out", str(out), "--force")
    line = one_line_error(err)
    assert code == 2 and "no space left on device" in line and str(out) in line and "cannot link" not in line
    assert tree(out) == before  # the previous complete output is still there
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.") and p.name.endswith(".partial")]


def test_symlink_loop_and_folder_in_place_of_an_image_are_one_line(tiny_copy, capsys):
    loop = tiny_copy / "bottle" / "train" / "good" / "loop.png"
    loop.symlink_to(loop)
    code, err = pipe(capsys, "stats", "bottle", "--root", str(tiny_copy))
    assert code == 2 and "loop.png" in one_line_error(err) and "symbolic link" in err.lower()
    loop.unlink()
    (tiny_copy / "bottle" / "train" / "good" / "dir.png").mkdir()
    code, err = pipe(capsys, "stats", "bottle", "--root", str(tiny_copy))
    assert code == 2 and "dir.png" in one_line_error(err)


def test_leftovers_of_killed_runs_are_removed_or_restored(tiny_copy, tmp_path, capsys):
    out = tmp_path / "ds"
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    dead = tmp_path / ".ds.999999999.partial"  # no such pid
    (dead / "yolo-det").mkdir(parents=True)
    old = tmp_path / ".ds.old"
    old.mkdir()
    (old / OLD_SENTINEL).touch()  # what pipe's swap puts in the previous version it moves aside
    assert convert(capsys, tiny_copy, "--out", str(out), "--force")[0] == 0
    assert not dead.exists() and not old.exists()
    # a kill between the two renames of a swap: the previous version comes back
    os.replace(out, old)
    (old / OLD_SENTINEL).touch()
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    assert out.is_dir() and not old.exists() and (out / "splits.json").is_file()
    assert not (out / OLD_SENTINEL).exists()


def test_user_folders_named_like_leftovers_are_never_removed(tiny_copy, tmp_path, capsys):
    out = tmp_path / "ds"
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    mine = {tmp_path / ".ds.old": "my backup", tmp_path / ".ds.backup.partial": "my draft"}
    for folder, text in mine.items():
        folder.mkdir()
        (folder / "notes.txt").write_text(text)
    code, err = convert(capsys, tiny_copy, "--out", str(out), "--force")
    assert code == 2 and ".ds.old" in one_line_error(err) and "move it away" in err
    assert all((f / "notes.txt").read_text() == t for f, t in mine.items())
    assert (out / "splits.json").is_file()  # the previous output is still in place


def test_a_folder_holding_only_dotfiles_is_not_taken_for_empty(tmp_path, tiny_copy, capsys):
    user = tmp_path / "results"
    user.mkdir()
    (user / ".notes.old").write_text("mine")
    code, err = convert(capsys, tiny_copy, "--out", str(user))
    assert code == 2 and "not made by pipe" in one_line_error(err)
    assert (user / ".notes.old").read_text() == "mine"


def test_converted_folders_get_the_users_normal_permissions(tiny_copy, tmp_path, capsys):
    mask = os.umask(0o022)
    try:
        assert convert(capsys, tiny_copy, "--out", str(tmp_path / "ds"))[0] == 0
    finally:
        os.umask(mask)
    for folder in (tmp_path / "ds", tmp_path / "ds" / "coco"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


def test_worker_processes_end_with_their_parent(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from pipeline.outputs import die_with_parent
        pool = ProcessPoolExecutor(2, initializer=die_with_parent)
        futures = [pool.submit(time.sleep, 60) for _ in range(2)]
        time.sleep(1.0)
        print(" ".join(str(p) for p in pool._processes), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "zombie" not in state

    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


# --- 4. concurrent runs ------------------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_output_refuses_with_one_line(tiny_copy, tmp_path, capsys):
    out = tmp_path / "ds"
    with locked(out, "convert"):
        code, err = convert(capsys, tiny_copy, "--out", str(out))
    assert code == 2 and "another pipe run" in one_line_error(err) and f"pid {os.getpid()}" in err
    assert not out.exists() or not any(p for p in out.iterdir() if p.name != MARKER)
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0  # the lock went with its holder


# --- 5. a staged stage keeps the previous complete result until the new one is complete --------------------------


def test_staged_stage_keeps_previous_result_until_complete_and_resumes_in_place(tmp_path):
    from dataclasses import replace

    from pipeline.config import load_config
    from pipeline.registry import get
    from pipeline.runner import guarded
    from pipeline.workspace import Workspace

    cfg = load_config("bottle", "tiny", [], [f"paths.runs={tmp_path / 'runs'}"])
    stage = replace(get("report"), writes="staged")
    target = tmp_path / "runs" / "bottle" / "toy"
    src = tmp_path / "input.txt"
    src.write_text("v1")

    def run(body, force=False, resume=False):
        with guarded(cfg, Workspace.from_config(cfg), stage, target, [src], [target], force, resume=resume) as run:
            if run is not None:
                body(run)

    def complete(run):
        (run.work / "result.json").write_text(f'{{"file": "{run.work / "result.json"}"}}')

    run(complete)
    first = (target / "result.json").read_text()
    assert str(target / "result.json") in first and ".run" not in first  # recorded paths point at the result

    def interrupted(run):
        (run.work / "partial.txt").write_text("epoch 1 of 2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(interrupted, force=True)
    assert (target / "result.json").read_text() == first and not (target / "partial.txt").exists()

    seen = {}

    def resumed(run):
        seen["partial"] = (run.work / "partial.txt").read_text()
        complete(run)

    run(resumed, force=True, resume=True)  # as the CLI passes --resume
    assert seen["partial"] == "epoch 1 of 2" and (target / "partial.txt").exists()

    # a folder of the staging folder's name that pipe did not make is never removed, resumed into or not
    users = target.with_name(".toy.run")
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(PipeError, match=r"\.toy\.run: .*not made by"):
            run(complete, force=True, resume=resume)
        assert (users / "notes.txt").read_text() == "mine"


# --- 6. the up-to-date check looks at every output ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["yolo-det", "coco/annotations", "coco/annotations/instances_test.json",
                                    "yolo-seg/labels"])
def test_a_deleted_output_reruns_convert(tiny_copy, tmp_path, capsys, damage):
    import shutil

    out = tmp_path / "ds"
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    code, err = convert(capsys, tiny_copy, "--out", str(out))
    assert code == 0 and "up to date" in err
    victim = out / damage
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    code, err = convert(capsys, tiny_copy, "--out", str(out))
    assert code == 0 and "up to date" not in err and victim.exists()


def test_a_training_stage_output_folder_is_checked_file_by_file(tmp_path):
    from pipeline.uptodate import Freshness

    out = tmp_path / "sam"
    (out / "overlays").mkdir(parents=True)
    (out / "decoder.pt").write_bytes(b"weights")
    (out / "overlays" / "a.png").write_bytes(b"png")
    src = tmp_path / "splits.json"
    src.write_text("{}")
    fresh = lambda: Freshness("sam", {"seed": 0}, "cpu", out, [src], [out])  # noqa: E731
    fresh().mark(1.0)
    assert fresh().skip()
    (out / "overlays" / "a.png").unlink()
    assert not fresh().skip()
    fresh().mark(1.0)
    (out / "decoder.pt").write_bytes(b"other weights")
    assert not fresh().skip()


def test_an_edited_output_reruns_convert(tiny_copy, tmp_path, capsys):
    out = tmp_path / "ds"
    assert convert(capsys, tiny_copy, "--out", str(out))[0] == 0
    splits = out / "splits.json"
    good = splits.read_bytes()
    time.sleep(0.01)
    splits.write_text("{}")
    code, err = convert(capsys, tiny_copy, "--out", str(out))
    assert code == 0 and "up to date" not in err and splits.read_bytes() == good
