"""`pipe finetune yolo --resume`: a killed run, resumed, ends exactly where an uninterrupted one does.

Three epochs on the tiny synthetic bottle (3 training images, batch 2: two batches per epoch), mosaic on,
and gradients accumulated over 3 batches, so optimizer steps straddle epoch boundaries (ultralytics' resume
alone would move them and drop the gradients pending at the kill). Every run writes to the same folder (the
reference is moved aside afterwards), so even the paths ultralytics records in its checkpoints agree.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import PipeError
from pipeline.stages.yolo.checkpoint import STATE
from pipeline.stages.yolo.run import run_finetune_yolo

OVERRIDES = ["yolo.epochs=3", "yolo.batch=2"]
VOLATILE = {"latency_ms", "detections", "timing_s", "results_csv", "file", "resumed_from_epoch", "finished_before"}


class Interrupt(Exception):
    pass


def _accumulate_3(trainer) -> None:
    trainer.accumulate = 3  # ultralytics derives it from nbs=64, which tiny data never reaches


def _keep_fp32(trainer) -> None:
    """on_model_save: the live and EMA weights at full precision (ultralytics' checkpoints round to float16,
    which would hide small differences)."""
    from ultralytics.utils.torch_utils import unwrap_model

    torch.save({"model": unwrap_model(trainer.model).state_dict(), "ema": trainer.ema.ema.state_dict()},
               trainer.save_dir / "fp32.pt")


def _callbacks(**extra: Any) -> dict[str, list]:
    return {"on_pretrain_routine_end": [_accumulate_3], "on_model_save": [_keep_fp32],
            **{k: [v] for k, v in extra.items()}}


def _kill_after_epoch(epoch: int):
    def kill(trainer) -> None:  # on_fit_epoch_end: last.pt of this epoch is on disk
        if trainer.epoch == epoch:
            raise Interrupt(f"simulated kill after epoch {epoch + 1}")
    return kill


def _kill_mid_first_epoch(trainer) -> None:  # on_train_batch_end: nothing saved yet
    raise Interrupt("simulated kill during the first epoch")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("model") or ckpt["ema"]).float().state_dict()


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def _stable(value: Any) -> Any:
    """Metrics without timings, latencies, paths and resume bookkeeping."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    return value


def _epochs_csv(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(path.open())]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(converted_dataset, tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    """An uninterrupted run, moved aside; returns (folder the runs use, reference copy, its metrics)."""
    base = tmp_path_factory.mktemp("yolo_resume")
    out, ref = base / "runs" / "bottle" / "yolo", base / "reference"
    m = run_finetune_yolo(load_config("bottle", "tiny", overrides=OVERRIDES), converted_dataset, out,
                          callbacks=_callbacks())
    shutil.move(out, ref)
    return out, ref, m


def _assert_equals_reference(out: Path, ref: Path, m: dict[str, Any], m_ref: dict[str, Any]) -> None:
    a, b = (torch.load(d / "train/fp32.pt", map_location="cpu") for d in (out, ref))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), f"final {part} weights differ"
    _assert_same_weights(out / "best.pt", ref / "best.pt")
    _assert_same_weights(out / "train/weights/last.pt", ref / "train/weights/last.pt")
    assert _sha(out / "best.pt") == _sha(ref / "best.pt")  # byte-identical: same seed, inputs and folder
    assert _epochs_csv(out / "train/results.csv") == _epochs_csv(ref / "train/results.csv")
    assert [int(float(r["epoch"])) for r in _epochs_csv(out / "train/results.csv")] == [1, 2, 3]
    if m["train"].get("finished_before"):  # a run that only had to be finalised has no training numbers
        m, m_ref = {**m, "train": None}, {**m_ref, "train": None}
    assert _stable(m) == _stable(m_ref)
    assert (out / "detections_test.json").read_bytes() == (ref / "detections_test.json").read_bytes()
    assert not list((out / "train/weights").glob(f"{STATE}.*.pt"))  # the exact-resume state goes with training


def test_resume_after_an_epoch_equals_uninterrupted_run(reference, converted_dataset):
    out, ref, m_ref = reference
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("bottle", "tiny", overrides=OVERRIDES)
    with pytest.raises(Interrupt):
        run_finetune_yolo(cfg, converted_dataset, out, callbacks=_callbacks(on_fit_epoch_end=_kill_after_epoch(1)))
    weights = out / "train" / "weights"
    assert torch.load(weights / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 1
    assert [p.name for p in weights.glob(f"{STATE}.*.pt")] == [f"{STATE}.1.pt"]
    assert not list(weights.glob(".*.tmp"))

    # another learning rate and seed: refused before anything in the folder changes, naming both keys
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    other = load_config("bottle", "tiny", overrides=[*OVERRIDES, "yolo.lr0=0.02", "seed=7"])  # scratch's is 0.01
    with pytest.raises(PipeError, match=r"run_inputs\.json: .*other values of seed, yolo\.lr0; ") as e:
        run_finetune_yolo(other, converted_dataset, out, resume=True, callbacks=_callbacks())
    assert "\n" not in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    m = run_finetune_yolo(cfg, converted_dataset, out, resume=True, callbacks=_callbacks())
    assert m["train"]["resumed_from_epoch"] == 2
    _assert_equals_reference(out, ref, m, m_ref)


def test_resume_after_a_kill_in_the_first_or_last_epoch(reference, converted_dataset, said):
    out, ref, m_ref = reference
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("bottle", "tiny", overrides=OVERRIDES)
    with pytest.raises(Interrupt):
        run_finetune_yolo(cfg, converted_dataset, out, callbacks=_callbacks(on_train_batch_end=_kill_mid_first_epoch))
    assert not (out / "train/weights/last.pt").exists()
    said = said("pipeline.stages.yolo.run")
    with pytest.raises(Interrupt):  # nothing to resume: a fresh run, killed after its last epoch's save
        run_finetune_yolo(cfg, converted_dataset, out, resume=True,
                          callbacks=_callbacks(on_fit_epoch_end=_kill_after_epoch(2)))
    assert f"nothing to resume in {out / 'train'}; starting afresh" in said
    assert torch.load(out / "train/weights/last.pt", map_location="cpu", weights_only=False)["epoch"] == 2

    m = run_finetune_yolo(cfg, converted_dataset, out, resume=True, callbacks=_callbacks())
    assert m["train"]["finished_before"] is True  # only ultralytics' final strip was missing
    _assert_equals_reference(out, ref, m, m_ref)
