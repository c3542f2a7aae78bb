"""``pipe finetune sam``: zero-shot SAM, decoder fine-tuning, and test-split IoU/Dice/mask AP per prompting mode.

Phases, each timed: load the splits' COCO instances and the model (the recipe, fine-tuning or from scratch, is
chosen from whether the configured model's checkpoint resolved: ``pipeline.training.recipes``); score the untouched model with
ground-truth boxes (the baseline, also filling the embedding cache for the test images); fine-tune
(``train.fit``); score the best decoder with ground-truth boxes and, when the YOLO stage has run, with
its detections; write overlays and ``metrics.json`` last. Under ``torchrun`` every process trains and
only rank 0 evaluates and writes. All three evaluations prompt one ``Predictor`` and score against the test
split's COCO ground truth loaded once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, dump
from pipeline.console import LOUD
from pipeline.fetch import file_digest
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.metrics.coco import load_truth
from pipeline.provenance import untrained
from pipeline.stages.common import Phases, attest, guard_resume, start, training_data
from pipeline.stages.sam import evaluate
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import load_split
from pipeline.stages.sam.model import SamSource, build, from_scratch, locate
from pipeline.stages.sam.predictor import Predictor
from pipeline.stages.sam.train import fit
from pipeline.training import distributed, recipes
from pipeline.training.state import seed_everything
from pipeline.workspace import Dataset, SamFiles, Workspace

log = logging.getLogger(__name__)


def _headline(tag: str, m: dict[str, Any]) -> None:
    log.info(f"SAM {tag}: instance IoU {m['mean_iou']}, Dice {m['mean_dice']}, mask AP50 {m['mask_ap']['map50']:.3f}")


def cache_dir(cfg: Config) -> Path:
    """The workspace's embedding cache (``sam.cache_dir``, else ``runs/<category>/cache/sam``): beside the stage's
    folder, not in it, so the embeddings outlive a run whose folder is replaced (keyed by content, never stale)."""
    return Workspace.from_config(cfg).sam_cache


def starting_point(cfg: Config) -> tuple[recipes.Recipe, SamSource]:
    """The recipe and the SAM it trains: the configured model's checkpoint is looked up first (e.g. vit_b); with it,
    fine-tuning; without it (a random initialisation), the from-scratch recipe and its model (vit_tiny by default)."""
    s = cfg.sam
    found = locate(s.model, Path(cfg.paths.weights), cfg.allow_random_init, cfg.seed)
    recipe = recipes.choose(s, bool(found.provenance.get("pretrained")))
    recipe.announce(log)
    model = recipe.section.model
    if recipe.unused_weights:
        return recipe, from_scratch(model, cfg.seed, f"pretrained {s.model} weights present ({found.checkpoint}) but "
                                                     f"not used: {recipe.why}")
    if model != s.model:
        return recipe, from_scratch(model, cfg.seed)
    return recipe, found


def run_finetune_sam(cfg: Config, dataset: Dataset | Path, out: Path, resume: bool = False,
                     detections: Path | None = None,
                     on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Run the stage; return the metrics written to ``out/metrics.json`` (None on ranks other than 0)."""
    out, dataset = Path(out), Dataset.of(dataset)
    files = SamFiles(out)
    phases = Phases()
    d, device, record = start("sam", cfg, dataset)
    seed_everything(cfg.seed)
    with phases("setup"):
        items = {split: load_split(dataset, split) for split in ("train", "val", "test")}
        names = items["test"][1]
        recipe, source = starting_point(cfg)
        cfg = cfg.model_copy(update={"sam": recipe.section})  # from here on, the settings of the recipe that runs
        s = cfg.sam
        record = {**record, "config": dump(cfg)}
        sam = build(source, cfg.seed).to(device).eval()
        predictor = Predictor(sam, s.amp)
        cache = EmbeddingCache(cache_dir(cfg), source.key, s.cache)
    # before anything in ``out`` is removed: a refused --resume leaves the interrupted run as it was
    guard_resume("sam", cfg, out, d.main, resume, {
        **training_data(dataset, [dataset.splits, *(dataset.coco.annotations(x) for x in items)],
                        ((f"{x}/{it.name}", it.digest) for x, (its, _) in items.items() for it in its)),
        "weights": source.key}, extra={"recipe": recipe.name}, ignore=["sam.cache_dir", "sam.scratch", "sam.recipe"])
    if d.main and not resume:
        for stale in (files.last, files.decoder):
            stale.unlink(missing_ok=True)
    if d.main:
        files.metrics.unlink(missing_ok=True)  # a metrics file must never outlive the weights it describes
    truth = load_truth(dataset.coco.annotations("test")) if d.main else None
    test = items["test"][0]

    caveats = untrained([source.provenance])  # in the provenance block's words
    baseline_file = files.zero_shot
    with phases("zero_shot"):
        if resume and baseline_file.is_file():
            zero_shot = read_json(baseline_file)
        elif d.main:
            zero_shot = evaluate.score(predictor, test, cache, names, truth).metrics
            zero_shot.update({"meaningful": not caveats, "caveats": caveats})
            write_json(baseline_file, zero_shot)
            _headline("zero-shot (GT boxes)", zero_shot)
    if caveats and d.main:
        log.warning("Zero-shot SAM measures an untrained model: " + "; ".join(caveats) + ".", extra=LOUD)

    with phases("train"):
        history = fit(sam, items["train"][0], items["val"][0], s, device, cfg.seed, cache, out, d, resume,
                      on_epoch_end)
    if not d.main:
        distributed.shutdown(d)
        return None
    decoder = files.decoder
    sam.load_state_dict(torch.load(decoder, map_location=device, weights_only=True), strict=False)
    sam.eval()
    if s.unfreeze_blocks:  # the encoder changed: its embeddings need their own key
        cache = EmbeddingCache(cache.folder, f"{source.key}|{file_digest(decoder)}", s.cache)

    with phases("evaluate"):
        finetuned, masks, results = evaluate.score(predictor, test, cache, names, truth)
        finetuned["masks"] = str(write_json(files.masks("gt_boxes"), results))
        _headline("fine-tuned (GT boxes)", finetuned)
        det_path = Path(detections) if detections else Workspace.from_config(cfg).yolo.detections()
        detector = None
        if det_path.is_file():
            detector, _, results = evaluate.score(predictor, test, cache, names, truth,
                                                  evaluate.detector_prompts(det_path, s.detector_conf))
            detector.update({"detections": str(det_path), "conf": s.detector_conf,
                             "masks": str(write_json(files.masks("detector"), results))})
            _headline("fine-tuned (YOLO boxes)", detector)
        else:
            log.info(f"{det_path}: no YOLO detections; run `pipe finetune yolo` first for the detect-then-segment result")
        with atomic_dir(files.overlays) as tmp:
            overlays = evaluate.write_overlays(tmp, test, masks, names, s.overlays)
    metrics = {
        **attest(record, [source.provenance]),
        "recipe": recipe.record,
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
        "overlays": [str(files.overlays / p.name) for p in overlays],
        "timing_s": phases.record(),
    }
    write_json(files.metrics, metrics)
    distributed.shutdown(d)
    return metrics
