"""`pipe finetune yolo` on CPU: a tiny synthetic bottle, a randomly initialised YOLO-World, imgsz 64."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.errors import ConfigError, DataError, PipeError, WeightsError
from pipeline.metrics.coco import coco_ap
from pipeline.provenance import STAND_IN_TEXT_EMBEDDINGS, provenance
from pipeline.stages.yolo import run as yolo_run
from pipeline.stages.yolo.checkpoint import STATE, PassSampler, loop_done
from pipeline.stages.yolo.data import prepare
from pipeline.stages.yolo.prompts import (DIM, ULTRALYTICS_CACHE, TextEmbeddings, class_prompts, clip_vectors,
                                          fallback_vector, load_text_embeddings)
from pipeline.stages.yolo.run import run_finetune_yolo, train_overrides, ultralytics_device

PHASES = {"setup", "zero_shot", "train", "evaluate", "total"}
SCORES = {"map50", "map50_95", "precision", "recall", "ap50_per_class", "pr_curve", "coco", "latency_ms", "detections"}


class Interrupt(Exception):
    pass


def _stop_after_first_epoch(trainer) -> None:
    if trainer.epoch == 0:
        raise Interrupt("simulated Ctrl-C after epoch 1")


def test_end_to_end_interrupted_then_resumed(converted_dataset, tmp_path, said):
    cfg = load_config("bottle", "tiny")
    out = tmp_path / "runs" / "bottle" / "yolo"
    with pytest.raises(Interrupt):
        run_finetune_yolo(cfg, converted_dataset, out, callbacks={"on_fit_epoch_end": [_stop_after_first_epoch]})
    assert (out / "train" / "weights" / "last.pt").is_file()
    assert not (out / "metrics.json").exists()  # nothing claims a result for unfinished training
    baseline = json.loads((out / "zero_shot.json").read_text())
    state = out / "train" / "weights" / f"{STATE}.0.pt"
    state.write_bytes(b"damaged")  # the exact state is unusable: resume from last.pt alone, with a warning
    warned = said("pipeline.stages.yolo.trainer")

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # a count ultralytics' select_device (cpu_count - 1, at most 8) changes
    try:
        epochs_threads: list[int] = []
        m = run_finetune_yolo(cfg, converted_dataset, out, resume=True, callbacks={
            "on_train_epoch_start": [lambda trainer: epochs_threads.append(torch.get_num_threads())]})
        # training used the process's threads, and the rest of the process (pipe all) keeps them
        assert epochs_threads == [threads + 1] and torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
    assert len(warned) == 1 and str(state) in warned[0] and "differ slightly" in warned[0]
    assert m["train"]["resumed_from_epoch"] == 1
    rows = list(csv.DictReader((out / "train" / "results.csv").open()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert m["zero_shot"] == baseline  # the baseline is measured once, before any training

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["finetuned"]["map50"] == m["finetuned"]["map50"]
    for phase in ("zero_shot", "finetuned"):
        assert SCORES <= set(m[phase])
        assert 0.0 <= m[phase]["map50_95"] <= m[phase]["map50"] <= 1.0
        assert set(m[phase]["ap50_per_class"]) == {"broken_large", "broken_small", "contamination"}
        assert len(m[phase]["pr_curve"]["recall"]) == 101
        assert Path(m[phase]["detections"]).is_file()
    assert m["zero_shot"]["meaningful"] is False and len(m["zero_shot"]["caveats"]) == 2
    assert m["provenance"] == provenance("synthetic", [m["weights"]], [STAND_IN_TEXT_EMBEDDINGS])
    assert set(m["zero_shot"]["caveats"]) <= set(m["provenance"]["caveats"])  # in the block's words
    assert m["weights"]["source"] == "random-init" and m["weights"]["pretrained"] is False
    assert m["text_embeddings"]["source"] == "deterministic-fallback"
    assert m["data"]["provenance"] == "synthetic" and m["device"] == "cpu"
    assert m["environment"]["torch"] == torch.__version__
    assert PHASES <= set(m["timing_s"]) and m["timing_s"]["train"] > 0
    best = Path(m["best_weights"]["file"])
    assert best.is_file() and best.parent == out and len(m["best_weights"]["sha256"]) == 64
    assert m["overlays"] and all(Path(p).is_file() for p in m["overlays"])
    dets = json.loads(Path(m["finetuned"]["detections"]).read_text())
    coco = json.loads((converted_dataset / "coco/annotations/instances_test.json").read_text())
    ids = {im["id"] for im in coco["images"]}
    assert all(d["image_id"] in ids and d["category_id"] in {1, 2, 3} and len(d["bbox"]) == 4 for d in dets)

    # resuming a finished run goes straight to evaluation, with the same weights
    again = run_finetune_yolo(cfg, converted_dataset, out, resume=True)
    assert again["train"]["finished_before"] is True
    assert again["best_weights"]["sha256"] == m["best_weights"]["sha256"]


def test_missing_dataset_fails_with_the_fix(tmp_path):
    result = CliRunner().invoke(app, ["finetune", "yolo", "bottle", "--profile", "tiny"])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)
    assert "splits.json" in str(result.exception) and "pipe convert" in str(result.exception)


def test_missing_weights_without_random_init(converted_dataset, tmp_path):
    cfg = load_config("bottle", "tiny", overrides=["allow_random_init=false"])
    with pytest.raises(WeightsError, match=r"yolov8s-worldv2\.pt.*--allow-random-init"):
        run_finetune_yolo(cfg, converted_dataset, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_unknown_class_in_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  broken_neck: [a cracked neck]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: classes\.broken_neck: bottle has no defect class"):
        load_config("bottle", "tiny", files=[bad])
    with pytest.raises(ConfigError, match="without '/'"):
        load_config("bottle", overrides=["classes.broken_large=[broken/rim]"])


def test_resume_without_checkpoint_starts_afresh(converted_dataset, tmp_path, said):
    said = said("pipeline.stages.yolo.run")
    started: list[tuple[bool, int]] = []

    def stop(trainer) -> None:
        started.append((trainer.resume, trainer.start_epoch))
        raise Interrupt("seen enough")

    with pytest.raises(Interrupt):
        run_finetune_yolo(load_config("bottle", "tiny"), converted_dataset, tmp_path / "out", resume=True,
                          callbacks={"on_train_start": [stop]})
    assert f"nothing to resume in {tmp_path / 'out' / 'train'}; starting afresh" in said
    assert started == [(False, 0)]


def test_unreadable_checkpoint_is_one_line(tmp_path):
    last = tmp_path / "last.pt"
    last.write_bytes(b"\x80 half a pickle")
    with pytest.raises(PipeError, match=r"last\.pt: not a readable checkpoint .*run without --resume") as e:
        yolo_run._read_checkpoint(last)
    assert "\n" not in str(e.value)


def test_results_of_epochs_after_the_checkpoint_are_dropped(tmp_path):
    csv_file = tmp_path / "results.csv"
    csv_file.write_text("epoch,time,loss\n1,2.0,0.5\n2,4.0,0.4\n3,6.0,0.3\n")
    yolo_run._trim_results(csv_file, 2)
    assert csv_file.read_text() == "epoch,time,loss\n1,2.0,0.5\n2,4.0,0.4\n"


def test_pass_sampler_order_depends_on_seed_and_pass_only():
    a, b = PassSampler(10, seed=0), PassSampler(10, seed=0)
    first, second = list(a), list(a)
    assert sorted(first) == list(range(10)) and first != second and a.passes == 2
    b.passes = 1  # what a run resumed at epoch 2 sets
    assert list(b) == second and list(PassSampler(10, seed=1)) != first


def test_loop_done_after_last_epoch_or_early_stop():
    ckpt = {"epoch": 1, "train_args": {"patience": 0}, "stopper": {"best_epoch": 1}}
    assert not loop_done(ckpt, epochs=3) and loop_done({**ckpt, "epoch": 2}, epochs=3)
    stopped = {"epoch": 4, "train_args": {"patience": 3}, "stopper": {"best_epoch": 2}}
    assert loop_done(stopped, epochs=10) and not loop_done({**stopped, "epoch": 3}, epochs=10)


def test_bad_label_names_the_file(converted_dataset, tmp_path):
    broken = tmp_path / "bottle"
    shutil.copytree(converted_dataset, broken, symlinks=True)
    label = sorted((broken / "yolo-det/labels/train").glob("*.txt"))[0]
    label.write_text("7 0.5 0.5 0.1 0.1\n")
    prompts = class_prompts({}, ("broken_large", "broken_small", "contamination"))
    emb = TextEmbeddings({p: fallback_vector(p) for ps in prompts.values() for p in ps}, "deterministic-fallback",
                         None, None)
    with pytest.raises(DataError, match=rf"{label.name}:1: .*class < 3"):
        prepare(broken, tmp_path / "out", prompts, emb)


def test_config_reaches_the_trainer(converted_dataset, tmp_path):
    cfg = load_config("bottle", "tiny", overrides=["yolo.lr0=0.005", "yolo.freeze=10", "yolo.augment.flipud=0.25"])
    prompts = class_prompts(cfg.classes, ("broken_large", "broken_small", "contamination"))
    emb = TextEmbeddings({p: fallback_vector(p) for ps in prompts.values() for p in ps}, "deterministic-fallback",
                         None, None)
    det = prepare(converted_dataset, tmp_path, prompts, emb)
    from pipeline.weights import resolve

    args = train_overrides(cfg, det, resolve("yolov8s-worldv2", tmp_path, True, download=False), tmp_path, "cpu")
    assert (args["lr0"], args["freeze"], args["flipud"], args["seed"]) == (0.005, 10, 0.25, 0)
    assert args["model"] == "yolov8s-worldv2.yaml" and args["pretrained"] is False
    names = (tmp_path / "data" / "data.yaml").read_text()
    assert "large broken chunk missing from the bottle rim/broken bottle rim" in names
    from ultralytics.cfg import get_cfg

    get_cfg(overrides=args)  # ultralytics accepts every key
    assert ultralytics_device("0,1", "cuda:0") == "0,1" and ultralytics_device("auto", "cuda:0") == "0"


def test_prompts_default_to_folder_names():
    assert class_prompts({"broken_small": ["chip"]}, ("broken_large", "broken_small")) == {
        "broken_large": ["broken large"], "broken_small": ["chip"]}


def test_fallback_embeddings_are_deterministic_and_distinct():
    a, b = fallback_vector("broken bottle rim"), fallback_vector("chipped glass")
    assert torch.equal(a, fallback_vector("broken bottle rim"))
    assert a.shape == (DIM,) and abs(float(a.norm()) - 1) < 1e-5
    assert abs(float(a @ b)) < 0.3
    emb = TextEmbeddings({"x": a, "y": b}, "deterministic-fallback", None, None)
    feats = emb.classes({"c1": ["x", "y"], "c2": ["y"]})
    assert feats.shape == (1, 2, DIM) and torch.allclose(feats.norm(dim=-1), torch.ones(1, 2))
    assert torch.allclose(feats[0, 1], b)


def test_cache_file_is_used_and_checked(tmp_path):
    cache = tmp_path / ULTRALYTICS_CACHE
    torch.save({"broken rim": fallback_vector("q"), "chip": fallback_vector("r")}, cache)
    emb = load_text_embeddings(["chip", "broken rim"], tmp_path)
    assert emb.source == "cache" and emb.meaningful and torch.equal(emb.phrases["chip"], fallback_vector("r"))
    with pytest.raises(WeightsError, match=r"no embedding for 'dirt'"):
        load_text_embeddings(["chip", "dirt"], tmp_path)
    with pytest.raises(WeightsError, match="--allow-random-init"):
        load_text_embeddings(["chip"], tmp_path / "empty")
    cache.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a readable text-embeddings cache"):
        load_text_embeddings(["chip"], tmp_path)


def test_clip_checkpoint_encodes_like_clip(tmp_path):
    import clip
    from clip.model import CLIP

    torch.manual_seed(0)
    tiny = CLIP(embed_dim=DIM, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)
    torch.save(tiny.state_dict(), tmp_path / "ViT-B-32.pt")
    vecs = clip_vectors(tmp_path / "ViT-B-32.pt", ["broken bottle rim", "chipped glass"])
    model, _ = clip.load(str(tmp_path / "ViT-B-32.pt"), device="cpu", jit=False)
    with torch.no_grad():
        ref = model.encode_text(clip.tokenize(["chipped glass"])).float()[0]
    assert torch.allclose(vecs["chipped glass"], ref / ref.norm(), atol=1e-5)
    assert vecs["broken bottle rim"].shape == (DIM,)


def _gt() -> dict:
    return {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"},
                       {"id": 2, "width": 100, "height": 100, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}


def test_coco_ap_perfect_partial_and_empty():
    perfect = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
               {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.8}]
    r = coco_ap(_gt(), perfect)
    assert r["map50"] == pytest.approx(1.0) and r["map"] == pytest.approx(1.0)
    assert r["ap50_per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": None}
    shifted = [perfect[0], {**perfect[1], "bbox": [60, 60, 20, 20]}]  # IoU 1/7 with the truth
    r = coco_ap(_gt(), shifted)
    assert r["ap50_per_class"]["b"] == pytest.approx(0.0) and 0.4 < r["map50"] < 0.6
    empty = coco_ap(_gt(), [])
    assert empty["map50"] == 0.0 and empty["ap50_per_class"] == {"a": 0.0, "b": 0.0, "c": None}
