"""``pipe finetune yolo``: zero-shot baseline, fine-tuning with ultralytics' trainer, test-split evaluation.

Phases, each timed: resolve the weights and the prompt embeddings, and choose the recipe from them (fine-tuning
the pretrained checkpoint, or training a model built from its yaml from scratch: ``pipeline.training.recipes``);
score the untouched model on the test split (the baseline); train on train with val for model selection
(``PromptWorldTrainer``); score the best checkpoint on the same test split; write detections, overlays and
``metrics.json`` (last, atomically, so a metrics file always describes finished weights).

``resume=True`` continues the ``last.pt`` in ``out`` (or starts afresh when there is none) and reuses the
baseline already measured. It is refused, naming the keys, when the configuration or the data differ from
what the interrupted run recorded (``run_inputs.json``); with the same ones, the resumed run ends with the
same weights and numbers as an uninterrupted run (see ``checkpoint`` for the conditions).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, dump
from pipeline.console import LOUD
from pipeline.data.categories import get_category
from pipeline.device import select_device, torch_threads
from pipeline.errors import DataError, PipeError
from pipeline.fetch import file_digest
from pipeline.io import atomic_dir, read_json, write_json, write_text
from pipeline.provenance import STAND_IN_TEXT_EMBEDDINGS, untrained
from pipeline.stages.common import Phases, attest, guard_resume, require, stage_record, training_data
from pipeline.stages.yolo import checkpoint as ck, evaluate, model as world
from pipeline.stages.yolo.data import DetData, prepare
from pipeline.stages.yolo.prompts import TextEmbeddings, class_prompts, load_text_embeddings
from pipeline.stages.yolo.trainer import PromptWorldTrainer, set_prompts
from pipeline.training import recipes
from pipeline.training.state import save
from pipeline.weights import Resolved, resolve
from pipeline.workspace import Dataset, YoloFiles

log = logging.getLogger(__name__)


def ultralytics_device(spec: str, selected: str) -> str:
    """A GPU list (``0,1``) goes to ultralytics as is, which then trains with DDP; anything else as selected."""
    if "," in spec:
        return spec
    return selected.replace("cuda:", "") if selected.startswith("cuda") else selected


def train_overrides(cfg: Config, det: DetData, weights: Resolved, out: Path, device: str) -> dict[str, Any]:
    """Every knob of ``cfg.yolo`` as ultralytics trainer arguments: the one place they are mapped."""
    y = cfg.yolo
    return {
        "model": world.source(weights), "pretrained": not weights.random_init, "data": str(det.data_yaml),
        "epochs": y.epochs, "imgsz": y.imgsz, "batch": y.batch, "nbs": y.nbs, "optimizer": y.optimizer, "lr0": y.lr0,
        "lrf": y.lrf, "cos_lr": y.cos_lr, "weight_decay": y.weight_decay, "warmup_epochs": y.warmup_epochs,
        "freeze": y.freeze or None, "patience": y.patience, "amp": y.amp, "workers": y.workers,
        "seed": cfg.seed, "deterministic": True, "device": device, "project": str(Path(out).absolute()),
        "name": "train", "exist_ok": True, "plots": False, "verbose": False, "val": True,
        **y.augment.model_dump(),
    }


def _score(model: torch.nn.Module, feats: torch.Tensor, det: DetData, cfg: Config, device: str,
           tag: str, out: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Test-split metrics (ultralytics and pycocotools) and the raw boxes for one model."""
    y = cfg.yolo
    set_prompts(model, feats, det.names)
    metrics = evaluate.validate(model, det.data_yaml, det.names, y.imgsz, y.batch, y.eval_conf, y.iou, device)
    boxes, latency = evaluate.predict(model, det.images["test"], y.imgsz, y.eval_conf, y.iou, device)
    detections, coco = evaluate.score_detections(boxes, det.coco_test, det.names)
    path = write_json(YoloFiles(out).detections(tag), detections)
    metrics.update({"coco": coco, "latency_ms": round(latency, 3), "detections": str(path)})
    log.info(f"{tag.strip('_') or 'fine-tuned'}: test mAP50 {metrics['map50']:.3f}, mAP50-95 {metrics['map50_95']:.3f} "
             f"(pycocotools {coco['map50']:.3f} / {coco['map']:.3f})")
    return metrics, boxes


HISTORY = {"train/box_loss": "box_loss", "train/cls_loss": "cls_loss", "train/dfl_loss": "dfl_loss",
           "val/box_loss": "val_box_loss", "val/cls_loss": "val_cls_loss", "val/dfl_loss": "val_dfl_loss",
           "metrics/precision(B)": "val_precision", "metrics/recall(B)": "val_recall",
           "metrics/mAP50(B)": "val_map50", "metrics/mAP50-95(B)": "val_map50_95", "lr/pg0": "lr"}


def history(csv_path: Path) -> list[dict[str, Any]]:
    """Per-epoch training losses and val metrics from ultralytics' ``results.csv`` (empty when there is none)."""
    import csv

    if not csv_path.is_file():
        return []
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            r = {k.strip(): v.strip() for k, v in raw.items() if k and v is not None}
            row: dict[str, Any] = {"epoch": int(float(r["epoch"]))}
            for col, key in HISTORY.items():
                if r.get(col):
                    row[key] = round(float(r[col]), 5)
            rows.append(row)
    return rows


def _own_caveats(embeddings: TextEmbeddings) -> list[str]:
    """What only this stage can say about its numbers (the provenance block adds data and weights)."""
    return [] if embeddings.meaningful else [STAND_IN_TEXT_EMBEDDINGS]


def _zero_shot_caveats(weights: dict[str, Any], embeddings: TextEmbeddings) -> list[str]:
    """Why the untouched model's numbers mean nothing, in the provenance block's words: its weights, its prompts."""
    return untrained([weights]) + _own_caveats(embeddings)


def data_identity(dataset: Dataset, weights: Resolved, embeddings: TextEmbeddings) -> dict[str, Any]:
    """What training reads besides the config: the splits, the boxes (labels by content, images by name and
    size; not the ``labels/*.cache`` ultralytics writes beside them), the starting weights and the text
    embeddings. A resume under other ones is refused."""
    det = dataset.yolo_det
    require(det.data_yaml, "converted YOLO dataset", f"run `pipe convert {dataset.root.name}` first")
    files = [*det.labels_root.rglob("*.txt"), *(p for p in det.images_root.rglob("*") if p.is_file())]
    boxes = ((str(f.relative_to(det.root)), file_digest(f) if f.suffix == ".txt" else str(f.stat().st_size))
             for f in files)
    return {**training_data(dataset, [dataset.splits, det.data_yaml], boxes),
            "weights": {"source": weights.source, "sha256": weights.sha256},
            "text_embeddings": {"source": embeddings.source, "sha256": embeddings.sha256}}


def _read_checkpoint(last: Path) -> dict[str, Any]:
    from ultralytics.utils.patches import torch_load

    try:
        return torch_load(last, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise PipeError(f"{last}: not a readable checkpoint ({type(e).__name__}); run without --resume to start "
                        f"afresh") from None


def _trim_results(csv_path: Path, epochs_done: int) -> None:
    """Drop rows of epochs after the checkpoint (written before a kill that came ahead of the save)."""
    if not csv_path.is_file():
        return
    lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(float(ln.split(",")[0])) <= epochs_done]
    if kept != lines:
        write_text(csv_path, "".join(kept))


def _train(overrides: dict[str, Any], files: YoloFiles, resume: bool,
           callbacks: dict[str, list[Callable]] | None, threads: int) -> dict[str, Any]:
    train_dir, last = files.train, files.last
    resumed_from = None
    if resume:
        ckpt = _read_checkpoint(last)
        epoch = int(ckpt.get("epoch", -1))
        if epoch == -1 or ck.loop_done(ckpt, overrides["epochs"]):
            ck.finalize(last.parent)  # a kill may have come between the last save and ultralytics' final strip
            log.info(f"{last}: training had already finished; going on to evaluation")
            return {"resumed_from_epoch": None, "finished_before": True}
        resumed_from = epoch + 1
        _trim_results(files.results_csv, resumed_from)
        overrides = {**overrides, "resume": str(last), "save_dir": str(train_dir.absolute())}
    trainer = PromptWorldTrainer(overrides=overrides)
    torch.set_num_threads(threads)  # its select_device left cpu_count - 1: 1.5x slower epochs on 2 cores
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    trainer.train()
    return {"resumed_from_epoch": resumed_from, "epochs_run": trainer.epoch + 1,
            "best_fitness": None if trainer.best_fitness is None else round(float(trainer.best_fitness), 5),
            "stopped_early": bool(getattr(trainer.stopper, "possible_stop", False))}


def _publish(src: Path, dst: Path, start: str) -> Path:
    """The best checkpoint as the stage's result, without what changes from run to run whatever the seed:
    ultralytics' save date, per-epoch wall times and, after a resume, the ``last.pt`` it was reloaded from
    (recorded as the model trained, and as where the module was loaded from). Same seed and inputs, same bytes,
    resumed or not."""
    from ultralytics.utils.patches import torch_load

    ckpt = torch_load(src, map_location="cpu")
    ckpt["date"] = None
    if isinstance(results := ckpt.get("train_results"), dict):
        ckpt["train_results"] = {k: v for k, v in results.items() if k != "time"}
    model = ckpt.get("model")
    vars(model).pop("pt_path", None)
    for args in (ckpt.get("train_args"), getattr(model, "args", None)):
        if isinstance(args, dict):
            args.update(model=start, resume=False)
    return save(dst, ckpt)


def run_finetune_yolo(cfg: Config, dataset: Dataset | Path, out: Path, resume: bool = False,
                      callbacks: dict[str, list[Callable]] | None = None) -> dict[str, Any]:
    """Run the stage end to end and return what it wrote to ``out/metrics.json``."""
    with torch_threads() as threads:  # ultralytics would leave the rest of the process (pipe all) one thread
        return _finetune(cfg, dataset, out, resume, callbacks, threads)


def _finetune(cfg: Config, dataset: Dataset | Path, out: Path, resume: bool,
              callbacks: dict[str, list[Callable]] | None, threads: int) -> dict[str, Any]:
    phases = Phases()
    out, dataset = Path(out), Dataset.of(dataset)
    files = YoloFiles(out)
    device = select_device(cfg.device)
    record = stage_record("yolo", cfg, device, dataset)  # fails first on a missing converted dataset
    prompts = class_prompts(cfg.classes, get_category(cfg.category).defects)
    with phases("setup"):
        found = resolve(cfg.yolo.model, cfg.paths.weights, cfg.allow_random_init)
        recipe = recipes.choose(cfg.yolo, not found.random_init)
        recipe.announce(log)
        cfg = cfg.model_copy(update={"yolo": recipe.section})  # from here on, the settings of the recipe that runs
        y = cfg.yolo
        record = {**record, "config": dump(cfg)}
        weights, weights_record = world.start(found, recipe.random_init, y.scale, recipe.why)
        if recipe.random_init:
            log.info(f"yolo: training {weights.spec.arch} (scale {weights_record['scale']}) from a random "
                     f"initialisation, built from {weights_record['built_from']}")
        embeddings = load_text_embeddings([p for ps in prompts.values() for p in ps], Path(cfg.paths.weights),
                                          y.text_embeddings, cfg.allow_random_init, device)
        train_dir = files.train
        if resume and not files.last.is_file():
            log.info(f"nothing to resume in {train_dir}; starting afresh")
            resume = False
        # before anything in out changes: a resume under other settings or data is refused with their names
        # the settings compared are those that train: the recipe's (its scratch block is applied, not compared)
        guard_resume("yolo", cfg, out, True, resume, data_identity(dataset, weights, embeddings),
                     extra={"recipe": recipe.name}, ignore=["yolo.scratch", "yolo.recipe"])
        det = prepare(dataset, out, prompts, embeddings)
        feats = embeddings.classes(prompts)
    if not resume:
        shutil.rmtree(train_dir, ignore_errors=True)
    files.metrics.unlink(missing_ok=True)  # a metrics file must never outlive the weights it describes

    caveats = _zero_shot_caveats(weights_record, embeddings)
    baseline_file = files.zero_shot
    with phases("zero_shot"):
        if resume and baseline_file.is_file():
            zero_shot = read_json(baseline_file)
        else:
            base = world.load(world.source(weights), cfg.seed)
            zero_shot, _ = _score(base, feats, det, cfg, device, "_zero_shot", out)
            zero_shot.update({"meaningful": not caveats, "caveats": caveats})
            write_json(baseline_file, zero_shot)
    if caveats:
        log.warning("Zero-shot baseline measures an untrained model: " + "; ".join(caveats) + ".", extra=LOUD)

    with phases("train"):
        training = _train(train_overrides(cfg, det, weights, out, ultralytics_device(cfg.device, device)),
                          files, resume, callbacks, threads)
    best_src = files.last.with_name("best.pt")
    if not best_src.is_file():
        raise DataError(f"{best_src}: training wrote no best checkpoint; see {train_dir} for ultralytics' log")
    best = _publish(best_src, files.best, world.source(weights))

    with phases("evaluate"):
        tuned_model = world.load(best)
        finetuned, boxes = _score(tuned_model, feats, det, cfg, device, "", out)
        finetuned["from_pretrained"] = not weights.random_init
        truth = evaluate.truth_boxes(det.coco_test)
        with atomic_dir(files.overlays) as tmp:
            overlays = evaluate.write_overlays(tmp, boxes, {p.name: p for p in det.images["test"]}, truth,
                                               det.names, y.conf, y.overlays)
    metrics = {
        **attest(record, [weights_record], _own_caveats(embeddings)),
        "recipe": recipe.record,
        "weights": weights_record,
        "text_embeddings": embeddings.provenance,
        "prompts": prompts,
        "zero_shot": zero_shot,
        "finetuned": finetuned,
        "delta_map50": round(finetuned["map50"] - zero_shot["map50"], 5),
        "train": {**training, "images": len(det.images["train"]), "val_images": len(det.images["val"]),
                  "results_csv": str(files.results_csv), "history": history(files.results_csv)},
        "best_weights": {"file": str(best), "sha256": file_digest(best)},
        "overlays": [str(files.overlays / p.name) for p in overlays],
        "timing_s": phases.record(),
    }
    write_json(files.metrics, metrics)
    return metrics
