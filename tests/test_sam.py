"""`pipe finetune sam` on CPU: a tiny SAM from segment-anything's own modules, random init, synthetic data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.errors import DataError, WeightsError
from pipeline.metrics import coco as coco_metrics
from pipeline.metrics.coco import coco_ap, load_truth
from pipeline.provenance import provenance
from pipeline.stages.sam import run as sam_run
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import load_split, prepare
from pipeline.stages.sam.loss import sam_loss
from pipeline.stages.sam.model import build, build_tiny, locate, set_trainable, trainable_state
from pipeline.stages.sam.run import run_finetune_sam
from pipeline.stages.sam.train import PromptedSam, fit
from pipeline.training import distributed

MODE = {"instances", "mean_iou", "mean_dice", "per_class", "per_image", "mask_ap"}
CLASSES = {"broken_large", "broken_small", "contamination"}


class Interrupt(Exception):
    pass


def _interrupt(row: dict) -> None:
    if row["epoch"] == 1:
        raise Interrupt("simulated Ctrl-C after epoch 1")


def test_stage_end_to_end_with_cache_and_resume(converted_dataset, tmp_path):
    # a frozen encoder, whose embeddings the cache serves (the from-scratch recipe trains the tiny encoder too)
    cfg = load_config("bottle", "tiny", overrides=["sam.scratch.unfreeze_blocks=0"])
    out = tmp_path / "runs/bottle/sam"
    with pytest.raises(Interrupt):
        run_finetune_sam(cfg, converted_dataset, out, on_epoch_end=_interrupt)
    assert (out / "last.pt").is_file() and not (out / "metrics.json").exists()

    m = run_finetune_sam(cfg, converted_dataset, out, resume=True)
    history = m["train"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    n_train = m["train"]["train_images"]
    # the resumed run's embedding pass found every embedding on disk, and epoch 2 only hit the cache
    assert m["train"]["embedding_pass_cache"]["misses"] == 0
    assert history[1]["cache_hits"] >= n_train and history[1]["cache_misses"] == 0  # train + val lookups
    for mode in ("zero_shot", "finetuned"):
        assert MODE <= set(m[mode])
        assert set(m[mode]["per_class"]) == CLASSES
        assert 0.0 <= m[mode]["mean_iou"] <= 1.0 and 0.0 <= m[mode]["mean_dice"] <= 1.0
        assert m[mode]["mean_iou"] <= m[mode]["mean_dice"] + 1e-9  # Dice >= IoU for every mask
        assert m[mode]["instances"] == sum(c["instances"] for c in m[mode]["per_class"].values()) > 0
    assert m["detector_prompted"] is None  # the YOLO stage has not run in this folder
    coco = json.loads((converted_dataset / "coco/annotations/instances_test.json").read_text())
    defective = {im["source"] for im in coco["images"] if any(a["image_id"] == im["id"] for a in coco["annotations"])}
    for mode in ("zero_shot", "finetuned"):
        _per_image_consistent(m[mode])
        assert set(m[mode]["per_image_scores"]) == defective  # true boxes prompt only images with a defect
    assert m["weights"]["source"] == "random-init" and m["zero_shot"]["meaningful"] is False
    assert m["provenance"] == provenance("synthetic", [m["weights"]]) and m["provenance"]["meaningful"] is False
    assert m["data"]["provenance"] == "synthetic" and m["device"] == "cpu"
    assert {"setup", "zero_shot", "train", "evaluate", "total"} <= set(m["timing_s"])
    assert all(Path(p).is_file() for p in m["overlays"]) and m["overlays"]
    assert json.loads((out / "metrics.json").read_text())["finetuned"] == m["finetuned"]

    # the decoder checkpoint is small and loads into a stock SAM of the same architecture
    state = torch.load(out / "decoder.pt", weights_only=True)
    stock = build_tiny()
    missing, unexpected = stock.load_state_dict(state, strict=False)
    trained = {n for n, _ in stock.named_parameters() if n.startswith(("mask_decoder.", "prompt_encoder."))}
    assert not unexpected and trained == set(state) and not trained & set(missing)
    assert all(k.startswith(("mask_decoder.", "prompt_encoder.")) for k in state)


def test_detector_boxes_prompt_the_end_to_end_score(converted_dataset, tmp_path, monkeypatch):
    coco = json.loads((converted_dataset / "coco/annotations/instances_test.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in coco["annotations"]]
    good = next(im["id"] for im in coco["images"] if "_good_" in im["file_name"])
    dets.append({"image_id": good, "category_id": 1, "bbox": [2, 2, 20, 20], "score": 0.8})  # spurious
    dets.append({"image_id": good, "category_id": 1, "bbox": [30, 30, 10, 10], "score": 0.01})  # below conf
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    cfg = load_config("bottle", "tiny", overrides=["sam.epochs=1"])
    loads = []  # every COCO ground-truth load, by the stage or inside coco_ap
    real_load = coco_metrics.load_truth
    for owner in (coco_metrics, sam_run):
        monkeypatch.setattr(owner, "load_truth", lambda gt: loads.append(gt) or real_load(gt))
    m = run_finetune_sam(cfg, converted_dataset, tmp_path / "sam", detections=path)
    assert len(loads) == 1  # one load serves the zero-shot, fine-tuned and detector-prompted evaluations
    e2e = m["detector_prompted"]
    assert MODE <= set(e2e) and e2e["boxes"] == len(dets) - 1
    assert e2e["per_image"]["per_label"]["good"]["iou"] < 1.0  # the spurious box is counted against the good image
    assert e2e["per_image"]["images"] == len(coco["images"])
    _per_image_consistent(e2e)
    assert set(e2e["per_image_scores"]) == {im["source"] for im in coco["images"]}  # good images too
    good_rel = next(im["source"] for im in coco["images"] if im["id"] == good)
    assert e2e["per_image_scores"][good_rel]["iou"] == 0.0  # the spurious box's mask, where there is no defect


def _per_image_consistent(mode: dict) -> None:
    """Each image's record (keyed by its MVTec path) averages to the mode's per-image summary."""
    scores = mode["per_image_scores"]
    assert len(scores) == mode["per_image"]["images"] > 0
    assert all(k.startswith("test/") and k.endswith(".png") for k in scores)
    for k in ("iou", "dice"):
        assert sum(v[k] for v in scores.values()) / len(scores) == pytest.approx(mode["per_image"][f"mean_{k}"],
                                                                                  abs=1e-5)
    assert all(0.0 <= v["iou"] <= v["dice"] + 1e-9 <= 1.0 + 1e-9 for v in scores.values())


def test_ground_truth_loaded_once_scores_like_a_fresh_load_each_time(converted_dataset):
    path = converted_dataset / "coco/annotations/instances_test.json"
    doc = json.loads(path.read_text())
    before = json.dumps(doc, sort_keys=True)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "bbox": a["bbox"], "score": 0.9} for a in doc["annotations"]]
    half = perfect[::2]
    shared = load_truth(path)
    for dets, iou_type in ((perfect, "segm"), (half, "segm"), (perfect, "segm"), (half, "bbox"), ([], "segm")):
        again = coco_ap(shared, dets, iou_type)
        assert again == coco_ap(path, dets, iou_type) == coco_ap(doc, dets, iou_type), (len(dets), iou_type)
    assert coco_ap(shared, perfect, "segm")["map50"] > 0.99 > coco_ap(shared, half, "segm")["map50"] > 0
    assert json.dumps(doc, sort_keys=True) == before  # a document passed as a dict is not changed


def test_training_lowers_the_loss_on_a_fixed_batch(converted_dataset):
    items, _ = load_split(converted_dataset, "train")
    item = next(it for it in items if len(it.boxes))
    torch.manual_seed(0)
    sam = build_tiny()
    set_trainable(sam, 0)
    model = PromptedSam(sam, encode=False)
    prep = prepare(item, 0, 256)
    with torch.no_grad():
        emb = sam.image_encoder(sam.preprocess(prepare(item, 0, 256, True)["image"].float())[None])
    opt = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(60):
        low, iou = model([emb], [prep["boxes"]], [None])[0]
        loss, _ = sam_loss(low, iou, prep["target"], 1.0, 1.0, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0] and min(losses[-5:]) < min(losses[:5])
    assert not any(p.requires_grad for p in sam.image_encoder.parameters())


def test_cache_key_and_hits(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(1, 4, 2, 2)

    cache = EmbeddingCache(tmp_path, "vit_tiny|seed-0")
    cache.get("img-a", 0, compute, "cpu")
    cache.get("img-a", 0, compute, "cpu")
    cache.get("img-a", 1, compute, "cpu")  # another view is another embedding
    assert len(calls) == 2 and cache.counts() == {"hits": 1, "misses": 2}
    fresh = EmbeddingCache(tmp_path, "vit_tiny|seed-0")  # a new process reads the files
    assert torch.equal(fresh.get("img-a", 1, compute, "cpu"), torch.ones(1, 4, 2, 2)) and len(calls) == 2
    other = EmbeddingCache(tmp_path, "vit_b|abc")  # another checkpoint never sees these embeddings
    other.get("img-a", 0, compute, "cpu")
    assert len(calls) == 3


def test_missing_dataset(tmp_path):
    result = CliRunner().invoke(app, ["finetune", "sam", "bottle", "--profile", "tiny"])
    assert isinstance(result.exception, DataError) and "pipe convert" in str(result.exception)


def test_annotation_outside_its_image(converted_dataset, tmp_path):
    broken = tmp_path / "bottle"
    shutil.copytree(converted_dataset, broken, symlinks=True)
    path = broken / "coco/annotations/instances_train.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["bbox"] = [50, 50, 40, 40]  # 64 px images
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"instances_train\.json: annotation \d+ box .* lies outside its image"):
        run_finetune_sam(load_config("bottle", "tiny"), broken, tmp_path / "out")


def test_missing_checkpoint_without_random_init(converted_dataset, tmp_path):
    cfg = load_config("bottle", "tiny", overrides=["sam.model=vit_b", "allow_random_init=false"])
    with pytest.raises(WeightsError, match=r"sam_vit_b_01ec64\.pth.*--allow-random-init"):
        run_finetune_sam(cfg, converted_dataset, tmp_path / "out")
    src = locate("vit_b", tmp_path, True, 0)
    assert src.checkpoint is None and src.provenance["source"] == "random-init"


def _ddp_worker(rank: int, world: int, port: int, dataset: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = load_config("bottle", "tiny", overrides=["sam.epochs=2", "sam.batch=1"]).sam
    d = distributed.init("cpu")
    src = locate("vit_tiny", Path(out), True, 0)
    sam = build(src, 0)
    items = {s: load_split(Path(dataset), s)[0] for s in ("train", "val")}
    cache = EmbeddingCache(Path(out) / "cache", src.key)
    fit(sam, items["train"], items["val"], cfg, "cpu", 0, cache, Path(out) / f"rank{rank}", d)
    torch.save(trainable_state(sam), Path(out) / f"final{rank}.pt")
    distributed.shutdown(d)


def test_ddp_two_gloo_processes_end_identical(converted_dataset, tmp_path, free_port):
    mp.spawn(_ddp_worker, args=(2, free_port, str(converted_dataset), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"final{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    init = trainable_state(build_tiny())
    assert any(not torch.equal(a[k], init[k]) for k in a)  # they trained, and stayed in step


def test_nproc_per_node_relaunches_under_torchrun(monkeypatch):
    import subprocess
    import sys

    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: seen.setdefault("cmd", cmd) and 0)
    monkeypatch.setattr(sys, "argv", ["pipe", "finetune", "sam", "bottle", "--nproc-per-node", "2", "--epochs", "1"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(app, ["finetune", "sam", "bottle", "--nproc-per-node", "2", "--epochs", "1"])
    cmd = seen["cmd"]
    assert result.exit_code == 0
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:] == ["-m", "pipeline", "finetune", "sam", "bottle", "--epochs", "1"]
