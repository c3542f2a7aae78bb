"""``pipe finetune sam``: zero-shot SAM, decoder fine-tuning, and test-split IoU/Dice/mask AP per prompting mode.

Phases, each timed: load the splits' COCO instances and the model; score the untouched model with
ground-truth boxes (the baseline, also filling the embedding cache for the test images); fine-tune
(``train.fit``); score the best decoder with ground-truth boxes and, when the YOLO stage has run, with
its detections; write overlays and ``metrics.json`` last. Under ``torchrun`` every process trains and
only rank 0 evaluates and writes. All three evaluations prompt one ``Predictor`` and score against the test
split's COCO ground truth loaded once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.console import info, loud
from pipeline.fetch import file_digest
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.metrics.coco import load_truth
from pipeline.stages.common import Phases, guard_resume, start, training_data
from pipeline.stages.sam import evaluate
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import load_split
from pipeline.stages.sam.model import build, locate
from pipeline.stages.sam.predictor import Predictor
from pipeline.stages.sam.train import fit
from pipeline.training import distributed
from pipeline.training.state import seed_everything


def _headline(tag: str, m: dict[str, Any]) -> None:
    info(f"SAM {tag}: instance IoU {m['mean_iou']}, Dice {m['mean_dice']}, mask AP50 {m['mask_ap']['map50']:.3f}")


def cache_dir(cfg: Config) -> Path:
    """``sam.cache_dir``, else ``<paths.runs>/<category>/cache/sam``: beside the stage's folder, not in it, so the
    embeddings outlive a run whose folder is replaced (they are keyed by content and never go stale)."""
    return Path(cfg.sam.cache_dir) if cfg.sam.cache_dir else Path(cfg.paths.runs) / cfg.category / "cache" / "sam"


def run_finetune_sam(cfg: Config, dataset_dir: Path, out: Path, resume: bool = False,
                     detections: Path | None = None,
                     on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Run the stage; return the metrics written to ``out/metrics.json`` (None on ranks other than 0)."""
    s = cfg.sam
    out = Path(out)
    phases = Phases()
    d, device, record = start("sam", cfg, dataset_dir)
    seed_everything(cfg.seed)
    with phases("setup"):
        items = {split: load_split(dataset_dir, split) for split in ("train", "val", "test")}
        names = items["test"][1]
        source = locate(s.model, Path(cfg.paths.weights), cfg.allow_random_init, cfg.seed)
        sam = build(source, cfg.seed).to(device).eval()
        predictor = Predictor(sam, s.amp)
        cache = EmbeddingCache(cache_dir(cfg), source.key, s.cache)
    # before anything in ``out`` is removed: a refused --resume leaves the interrupted run as it was
    guard_resume("sam", cfg, out, d.main, resume, {
        **training_data(dataset_dir, ["splits.json", *(f"coco/annotations/instances_{x}.json" for x in items)],
                        ((f"{x}/{it.name}", it.digest) for x, (its, _) in items.items() for it in its)),
        "weights": source.key}, ignore=["sam.cache_dir"])
    if d.main and not resume:
        for stale in ("last.pt", "decoder.pt"):
            (out / stale).unlink(missing_ok=True)
    if d.main:
        (out / "metrics.json").unlink(missing_ok=True)  # a metrics file must never outlive the weights it describes
    truth = load_truth(Path(dataset_dir) / "coco" / "annotations" / "instances_test.json") if d.main else None
    test = items["test"][0]

    caveats = [] if source.provenance["pretrained"] else [
        f"SAM {s.model} is randomly initialised (no pretrained checkpoint): zero-shot numbers measure an untrained "
        f"network"]
    baseline_file = out / "zero_shot.json"
    with phases("zero_shot"):
        if resume and baseline_file.is_file():
            zero_shot = read_json(baseline_file)
        elif d.main:
            zero_shot = evaluate.score(predictor, test, cache, names, truth)[0]
            zero_shot.update({"meaningful": not caveats, "caveats": caveats})
            write_json(baseline_file, zero_shot)
            _headline("zero-shot (GT boxes)", zero_shot)
    if caveats and d.main:
        loud("Zero-shot SAM: " + "; ".join(caveats) + ".")

    with phases("train"):
        history = fit(sam, items["train"][0], items["val"][0], s, device, cfg.seed, cache, out, d, resume,
                      on_epoch_end)
    if not d.main:
        distributed.shutdown(d)
        return None
    decoder = out / "decoder.pt"
    sam.load_state_dict(torch.load(decoder, map_location=device, weights_only=True), strict=False)
    sam.eval()
    if s.unfreeze_blocks:  # the encoder changed: its embeddings need their own key
        cache = EmbeddingCache(cache.folder, f"{source.key}|{file_digest(decoder)}", s.cache)

    with phases("evaluate"):
        finetuned, masks = evaluate.score(predictor, test, cache, names, truth)
        _headline("fine-tuned (GT boxes)", finetuned)
        det_path = Path(detections) if detections else Path(cfg.paths.runs) / cfg.category / "yolo" / "detections_test.json"
        detector = None
        if det_path.is_file():
            detector, _ = evaluate.score(predictor, test, cache, names, truth,
                                         evaluate.detector_prompts(det_path, s.detector_conf))
            detector.update({"detections": str(det_path), "conf": s.detector_conf})
            _headline("fine-tuned (YOLO boxes)", detector)
        else:
            info(f"{det_path}: no YOLO detections; run `pipe finetune yolo` first for the detect-then-segment result")
        with atomic_dir(out / "overlays") as tmp:
            overlays = evaluate.write_overlays(tmp, test, masks, names, s.overlays)
    metrics = {
        **record,
        "weights": source.provenance,
        "zero_shot": zero_shot,
        "finetuned": finetuned,
        "detector_prompted": detector,
        "delta_iou": None if finetuned["mean_iou"] is None or zero_shot["mean_iou"] is None
        else round(finetuned["mean_iou"] - zero_shot["mean_iou"], 5),
        "train": history,
        "processes": d.world,
        "decoder_weights": {"file": str(decoder), "sha256": file_digest(decoder),
                            "load": "sam.load_state_dict(torch.load(file), strict=False)"},
        "cache": {"dir": str(cache.folder), "enabled": cache.enabled, **cache.counts()},
        "overlays": [str(out / "overlays" / p.name) for p in overlays],
        "timing_s": phases.record(),
    }
    write_json(out / "metrics.json", metrics)
    distributed.shutdown(d)
    return metrics
