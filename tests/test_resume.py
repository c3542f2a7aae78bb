"""`--resume` after a kill at any point of the SAM and classification stages ends exactly where an uninterrupted run
ends; a resume under other settings or data is refused naming the keys; equal seeds give equal files.

Each test kills a run several times in one staging folder (a KeyboardInterrupt raised from inside the stage, as
Ctrl-C would), resumes it to the end, and compares what it wrote with an uninterrupted run in another folder:
metrics without wall times, cache counters and the folder's own path, and the weight files by sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.convert.instances import ConvertParams
from pipeline.convert.run import run_convert
from pipeline.data.layout import load_category
from pipeline.data.synth import synthesize
from pipeline.errors import PipeError
from pipeline.io import read_json
from pipeline.stages.classify import run as classify_run
from pipeline.stages.classify import train as classify_train
from pipeline.stages.classify.run import run_classify
from pipeline.stages.sam import evaluate as sam_evaluate
from pipeline.stages.sam import train as sam_train
from pipeline.stages.sam.run import cache_dir, run_finetune_sam
from pipeline.training.state import save

# what legitimately differs between two runs of the same thing: clocks, cache counters (warm or cold)
VOLATILE = {"timing_s", "wall_s", "images_per_s", "seconds", "embedding_pass_s", "embedding_pass_cache",
            "cache_hits", "cache_misses", "cache"}


def stable(value: Any, out: Path) -> Any:
    """``value`` without its volatile keys, with the run's own folder written as ``<out>``."""
    if isinstance(value, dict):
        return {k: stable(v, out) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v, out) for v in value]
    return value.replace(str(out), "<out>") if isinstance(value, str) else value


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def kill_at(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, when: Callable[..., bool]) -> None:
    """Make ``owner.name`` raise KeyboardInterrupt (as Ctrl-C) on the first call for which ``when(n, *args, **kw)``
    holds, ``n`` counting calls from 1."""
    real, calls = getattr(owner, name), [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if when(calls[0], *args, **kwargs):
            raise KeyboardInterrupt(f"simulated kill in {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def kill_after_epoch_1(row: dict[str, Any]) -> None:
    """An ``on_epoch_end`` that kills the run once epoch 1's checkpoint is written."""
    if row["epoch"] == 1:
        raise KeyboardInterrupt("simulated kill after epoch 1")


def test_checkpoints_of_equal_state_are_equal_files(tmp_path):
    import torch

    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    a, b = save(tmp_path / "a.pt", state), save(tmp_path / "sub" / "b.pt", state)
    assert sha(a) == sha(b)  # the archive's inner folder no longer follows the (random) temporary file name
    assert torch.equal(torch.load(b, weights_only=True)["w"], state["w"])


# --- SAM ---------------------------------------------------------------------------------------------------------

def test_sam_resume_after_kills_anywhere_equals_an_uninterrupted_run_warm_or_cold(converted_dataset, tmp_path,
                                                                                   monkeypatch):
    cfg = load_config("bottle", "tiny")
    ref_out = tmp_path / "ref"
    ref = run_finetune_sam(cfg, converted_dataset, ref_out)
    assert ref["train"]["embedding_pass_cache"]["misses"] > 0  # cold: every embedding computed in this run
    assert (tmp_path / "runs/bottle/cache/sam").is_dir() and not (ref_out / "cache").exists()  # kept outside
    warm = run_finetune_sam(cfg, converted_dataset, tmp_path / "warm")
    assert warm["train"]["embedding_pass_cache"]["misses"] == 0 and warm["zero_shot"]["instances"] > 0
    assert sha(tmp_path / "warm/decoder.pt") == sha(ref_out / "decoder.pt")  # same numbers from disk as computed
    assert stable(warm, tmp_path / "warm") == stable(ref, ref_out)

    shutil.rmtree(cache_dir(cfg))  # the interrupted run starts cold, like the reference
    out = tmp_path / "runs/bottle/.sam.run"
    kills = [  # (where, what kills it): every phase, including before the first checkpoint
        ("zero-shot, second test image", sam_evaluate, "segment", lambda n, *a, **k: n == 2),
        ("epoch 1, after its steps, before last.pt", sam_train, "val_iou", lambda n, *a, **k: n == 1),
        ("after epoch 1's checkpoint", None, None, None),
        ("final evaluation", sam_evaluate, "write_overlays", lambda n, *a, **k: True),
    ]
    for i, (where, owner, name, when) in enumerate(kills):
        with monkeypatch.context() as m:
            if owner is not None:
                kill_at(m, owner, name, when)
            with pytest.raises(KeyboardInterrupt):
                run_finetune_sam(cfg, converted_dataset, out, resume=i > 0,
                                 on_epoch_end=kill_after_epoch_1 if owner is None else None)
        assert not (out / "metrics.json").exists(), where
    final = run_finetune_sam(cfg, converted_dataset, out, resume=True)
    assert [h["epoch"] for h in final["train"]["history"]] == [1, 2]
    assert sha(out / "decoder.pt") == sha(ref_out / "decoder.pt") == final["decoder_weights"]["sha256"]
    assert stable(final, out) == stable(ref, ref_out)
    assert stable(read_json(out / "metrics.json"), out) == stable(read_json(ref_out / "metrics.json"), ref_out)
    for same in ("zero_shot.json", "run_inputs.json", *(f"overlays/{Path(p).name}" for p in ref["overlays"])):
        assert (out / same).read_bytes() == (ref_out / same).read_bytes(), same

    # resuming under other values is refused before anything is touched, naming every differing key
    before = {p.name: sha(p) for p in (out / "decoder.pt", out / "last.pt", out / "metrics.json")}
    other = load_config("bottle", "tiny", overrides=["sam.lr=0.5", "seed=7"])
    with pytest.raises(PipeError) as refused:
        run_finetune_sam(other, converted_dataset, out, resume=True)
    message = str(refused.value)
    assert "sam.lr" in message and "seed" in message and "\n" not in message and "--resume" in message
    assert {p.name: sha(p) for p in (out / "decoder.pt", out / "last.pt", out / "metrics.json")} == before
    # where the embeddings are kept does not change what is learnt: that resume goes ahead
    moved = load_config("bottle", "tiny", overrides=[f"sam.cache_dir={tmp_path / 'elsewhere'}"])
    assert stable(run_finetune_sam(moved, converted_dataset, out, resume=True)["finetuned"], out) == \
        stable(ref["finetuned"], ref_out)


def test_sam_resume_on_other_data_is_refused(converted_dataset, tmp_path):
    data = tmp_path / "bottle"
    shutil.copytree(converted_dataset, data, symlinks=True)
    cfg = load_config("bottle", "tiny", overrides=["sam.epochs=1"])
    out = tmp_path / "sam"
    with pytest.raises(KeyboardInterrupt):
        run_finetune_sam(cfg, data, out, on_epoch_end=kill_after_epoch_1)
    path = data / "coco/annotations/instances_train.json"
    doc = json.loads(path.read_text())
    doc["annotations"] = doc["annotations"][1:]  # one training instance fewer
    path.write_text(json.dumps(doc))
    with pytest.raises(PipeError, match=r"other values of data\.coco/annotations/instances_train\.json;"):
        run_finetune_sam(cfg, data, out, resume=True)
    assert (out / "last.pt").is_file()

    # a damaged checkpoint (or one from another pipe version) is one line, not a traceback
    (out / "run_inputs.json").unlink()
    (out / "last.pt").write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(PipeError, match=r"last\.pt: cannot resume from this checkpoint .*without --resume"):
        run_finetune_sam(cfg, data, out, resume=True)


# --- classification --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folds_dataset(tmp_path_factory) -> Path:
    """A converted synthetic bottle with 3 labelled images per class: just enough for 3 stratified folds."""
    root = tmp_path_factory.mktemp("resume-synth")
    synthesize("bottle", root, size=40, train_good=2, test_good=3, test_per_defect=3, seed=2)
    out = tmp_path_factory.mktemp("resume-converted") / "bottle"
    run_convert(load_category(root, "bottle"), out, ConvertParams(), {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    return out


CLS = ["classify.attempts=[A,B]", "classify.folds=3", "classify.epochs=2", "classify.imgsz=32", "classify.batch=4",
       "classify.compare=null"]


def test_classify_resume_after_kills_inside_a_fold_and_after_an_attempt_equals_an_uninterrupted_run(
        folds_dataset, tmp_path, monkeypatch):
    cfg = load_config("bottle", "tiny", overrides=CLS)
    ref_out, out = tmp_path / "ref", tmp_path / "runs/bottle/.classify.run"
    run_classify(cfg, folds_dataset, ref_out)

    # 1: inside A's first fold, between its two epochs (a job's predict calls: val per epoch, then train and test)
    with monkeypatch.context() as m:
        kill_at(m, classify_train, "predict", lambda n, *a, **k: n == (2 + 2) + 1)
        with pytest.raises(KeyboardInterrupt):
            run_classify(cfg, folds_dataset, out)
    assert (out / "runs/A/split.json").is_file() and not (out / "runs/A/fold-0.json").exists()
    # 2: once attempt A has finished, as B starts (the resume that used to fail with KeyError: 'resnet18')
    with monkeypatch.context() as m:
        kill_at(m, classify_run, "fit", lambda n, *a, label="", **k: label.startswith("B "))
        with pytest.raises(KeyboardInterrupt):
            run_classify(cfg, folds_dataset, out, resume=True)
    assert (out / "runs/A/fold-2.json").is_file() and not (out / "runs/B").exists()
    assert not (out / "metrics.json").exists()
    final = run_classify(cfg, folds_dataset, out, resume=True)

    assert [a["id"] for a in final["attempts"]] == ["A", "B"]
    assert stable(read_json(out / "metrics.json"), out) == stable(read_json(ref_out / "metrics.json"), ref_out)
    for same in ("attempts.md", "run_inputs.json", "confusion/A.png", "confusion/B-cv.png"):
        assert (out / same).read_bytes() == (ref_out / same).read_bytes(), same
    for tag in ("A", "B"):
        assert sha(out / tag / "best.pt") == sha(ref_out / tag / "best.pt")
        for fold in ("split", "fold-0", "fold-1", "fold-2"):
            job = f"runs/{tag}/{fold}.json"
            assert stable(read_json(out / job), out) == stable(read_json(ref_out / job), ref_out), job
    entry = next(a for a in final["attempts"] if a["id"] == "A")
    assert entry["best_weights"]["sha256"] == sha(out / "A" / "best.pt")
    assert [w["name"] for w in entry["weights"]] == ["resnet18"]

    # other settings: refused before anything is removed, naming the keys
    other = load_config("bottle", "tiny", overrides=[*CLS, "seed=7", "classify.select=loss"])
    with pytest.raises(PipeError) as refused:
        run_classify(other, folds_dataset, out, resume=True)
    message = str(refused.value)
    assert "classify.select" in message and "seed" in message and "\n" not in message
    assert (out / "metrics.json").is_file() and (out / "runs/B/fold-2.json").is_file()
