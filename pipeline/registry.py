"""The stages of the pipeline, declared once: what each reads, writes and runs.

A stage is its name, its command, the config sections it reads (its up-to-date key and its ``--resume``
guard), its inputs and outputs (derived from the :class:`~pipeline.workspace.Workspace`), how it writes
(``in_place``, ``atomic`` or ``staged``), its own command-line options and its run function. The CLI
builds ``pipe <stage>`` and ``pipe all`` from these declarations and ``pipeline.runner`` runs them, so a
new stage is one :class:`Stage` in :data:`STAGES` plus the module that does the work.

Nothing here imports torch, NumPy or a stage's module: run functions are imported when the stage runs,
so ``--help`` and up-to-date skips stay instant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.workspace import (AnomalyFiles, ClassifyFiles, Dataset, ReportFiles, SamFiles, StatsFiles, Workspace,
                                YoloFiles)

if TYPE_CHECKING:
    from pipeline.config import Config


@dataclass(frozen=True)
class Option:
    """A stage's own command-line option: a config key it overrides (``key``), or a value for the run function."""

    name: str  # the parameter name; the flag is --name with dashes unless ``flag`` says otherwise
    type: Any
    help: str
    key: str | None = None
    default: Any = None
    flag: str | None = None
    parse: Callable[[Any], Any] | None = None  # command-line value -> config value
    forces: bool = False  # when set, the stage runs even if up to date (e.g. --json prints the card)


@dataclass(frozen=True)
class StageContext:
    """One command's request of a stage: the config, the workspace, its option values, and where it writes."""

    cfg: Config
    ws: Workspace
    folder: Path  # where the output ends up
    options: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False
    fallback_synthetic: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    command: tuple[str, ...]  # ("convert",) or ("finetune", "yolo")
    help: str
    sections: tuple[str, ...]  # the config it reads: a change anywhere else does not make it stale
    # (context, work folder): the work folder is the output itself, or its staging folder (``staged`` stages)
    run: Callable[[StageContext, Path], dict[str, Any] | None]
    inputs: Callable[[StageContext], list[Path]]  # what its up-to-date key hashes
    outputs: Callable[[Path], list[Path]]  # from the stage's folder: what must be present and unchanged to skip
    out_help: str
    done: Callable[[StageContext, dict[str, Any]], None] | None = None  # the lines said when it finishes
    result: Callable[[Path], Path] | None = None  # from the stage's folder: the file the report reads
    writes: Literal["in_place", "atomic", "staged"] = "in_place"  # see ``runner.guarded``
    reads_source: bool = False  # reads the MVTec category: --root and --fallback-synthetic
    reads_dataset: bool = False  # reads the converted dataset (which its output must then not overlap)
    trains: bool = False  # --device, --seed, --allow-random-init, --resume, --dataset; device in its key
    ddp: bool = False  # --nproc-per-node
    accepts: tuple[str, ...] = ()  # other commands' folders it may write into (the report: the workspace)
    options: tuple[Option, ...] = field(default_factory=tuple)
    resume_help: str = "Continue the interrupted run in the output folder from its last checkpoint."

    @property
    def cli_name(self) -> str:
        return " ".join(self.command)


# --- run functions: each imports its stage's module only when the stage runs --------------------------

def _stats(ctx: StageContext, work: Path) -> dict[str, Any]:
    import json
    import sys

    from pipeline.data.source import open_category
    from pipeline.data.stats import card_markdown, dataset_card, write_card
    from pipeline.device import environment
    from pipeline.runner import data_source

    card = dataset_card(open_category(data_source(ctx.cfg), ctx.fallback_synthetic), ctx.cfg.classes,
                        environment=environment("cpu"))  # measured on the CPU; recorded like every output
    write_card(card, work)
    if ctx.options.get("as_json"):
        sys.stdout.write(json.dumps(card, indent=2, sort_keys=True) + "\n")
    else:
        from rich.markdown import Markdown

        from pipeline.console import console

        console.print(Markdown(card_markdown(card)))
    return card


def _convert(ctx: StageContext, work: Path) -> dict[str, Any]:
    from pipeline.convert.instances import ConvertParams
    from pipeline.convert.run import run_convert
    from pipeline.data.source import open_category
    from pipeline.device import environment
    from pipeline.runner import data_source

    c = ctx.cfg.convert
    params = ConvertParams(c.merge_distance, c.min_area, c.simplify, c.coco_min_iou, c.yolo_seg_min_iou)
    cat = open_category(data_source(ctx.cfg), ctx.fallback_synthetic)
    # conversion runs on the CPU; environment("cpu") reads the versions without importing torch
    return run_convert(cat, work, params, c.split.model_dump(), ctx.cfg.seed, c.add_train_good, c.link,
                       c.workers, c.preview, environment=environment("cpu"))


def _yolo(ctx: StageContext, work: Path) -> dict[str, Any]:
    from pipeline.stages.yolo.run import run_finetune_yolo

    return run_finetune_yolo(ctx.cfg, ctx.ws.dataset, work, resume=ctx.resume)


def _sam(ctx: StageContext, work: Path) -> dict[str, Any] | None:
    from pipeline.stages.sam.run import run_finetune_sam

    return run_finetune_sam(ctx.cfg, ctx.ws.dataset, work, resume=ctx.resume,
                            detections=_detections(ctx))


def _classify(ctx: StageContext, work: Path) -> dict[str, Any] | None:
    from pipeline.stages.classify.run import run_classify

    return run_classify(ctx.cfg, ctx.ws.dataset, work, resume=ctx.resume)


def _anomaly(ctx: StageContext, work: Path) -> dict[str, Any]:
    from pipeline.stages.anomaly.run import run_anomaly

    return run_anomaly(ctx.cfg, ctx.ws.dataset, work)


def _anomaly_inputs(ctx: StageContext) -> list[Path]:
    """The dataset, the weights, and the category it was converted from (its train/good images are the bank)."""
    source = ctx.ws.dataset.recorded_source()
    return [*_trained(ctx), *([source] if source is not None else [])]


def _report(ctx: StageContext, work: Path) -> dict[str, Any]:
    from pipeline.report.build import build_report

    return build_report(ctx.cfg, work, ctx.ws)


def _card(folder: Path) -> list[Path]:
    return [StatsFiles(folder).card_json, StatsFiles(folder).card_md]


def _source(ctx: StageContext) -> list[Path]:
    return [ctx.ws.source(ctx.fallback_synthetic)]


def _trained(ctx: StageContext) -> list[Path]:
    """What every training stage reads: the converted dataset's identity and the weights folder."""
    return [*ctx.ws.dataset.identity, ctx.ws.weights]


def _sam_inputs(ctx: StageContext) -> list[Path]:
    return [*_trained(ctx), _detections(ctx)]


def _detections(ctx: StageContext) -> Path:
    return Path(ctx.options["detections"]) if ctx.options.get("detections") else ctx.ws.yolo.detections()


def _classify_inputs(ctx: StageContext) -> list[Path]:
    from pipeline.stages.classify.attempts import ATTEMPT_DIR  # a path constant: no torch

    recipes = [Path(a) for a in ctx.cfg.classify.attempts if a.endswith((".yaml", ".yml"))]
    return [*_trained(ctx), ATTEMPT_DIR, *recipes]


def _say(message: str) -> None:
    logging.getLogger(__name__).info(message)


def _convert_done(ctx: StageContext, report: dict[str, Any]) -> None:
    f = report["fidelity"]
    _say(f"{f['instances']} instances in {sum(report['images_per_split'].values())} images "
         f"({report['images_per_split']}); COCO IoU min {f['coco_iou_min']}, YOLO-seg IoU min "
         f"{f['yolo_seg_iou_min']}, boxes exact: {f['yolo_boxes_exact']}; {report['timing_s']['total']} s")
    _say(f"wrote {ctx.folder}/ (yolo-det, yolo-seg, coco, splits.json, convert_report.json)")


def _stats_done(ctx: StageContext, card: dict[str, Any]) -> None:
    _say(f"wrote {ctx.folder}/card.md and card.json")


def _yolo_done(ctx: StageContext, m: dict[str, Any]) -> None:
    _say(f"test mAP50 zero-shot {m['zero_shot']['map50']:.3f} -> fine-tuned {m['finetuned']['map50']:.3f} "
         f"(mAP50-95 {m['zero_shot']['map50_95']:.3f} -> {m['finetuned']['map50_95']:.3f}); "
         f"{m['timing_s']['total']} s")
    _say(f"wrote {ctx.folder}/metrics.json, best.pt, detections_test.json, overlays/")


def _sam_done(ctx: StageContext, m: dict[str, Any]) -> None:
    _say(f"test instance IoU zero-shot {m['zero_shot']['mean_iou']} -> fine-tuned {m['finetuned']['mean_iou']}; "
         f"{m['timing_s']['total']} s")
    _say(f"wrote {ctx.folder}/metrics.json, decoder.pt, overlays/")


def _classify_done(ctx: StageContext, m: dict[str, Any]) -> None:
    from pipeline.console import console

    console.print(m["summary_text"])
    _say(f"wrote {ctx.folder}/metrics.json, attempts.md, confusion/; {m['timing_s']['total']} s")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _anomaly_done(ctx: StageContext, m: dict[str, Any]) -> None:
    w, s = m["whole_test"], m["split"]["test"]
    _say(f"MVTec test set: image AUROC {w['image_auroc']:.3f}, pixel AUROC {w['pixel_auroc']:.3f}, AUPRO@0.3 "
         f"{w['aupro']:.3f}; shared test split at the val-fitted threshold: F1 {s['image']['f1']:.3f}, "
         f"pixel IoU {_num(s['pixel']['mean_iou'])}; {m['timing_s']['total']} s")
    _say(f"wrote {ctx.folder}/metrics.json, patchcore.pt, overlays/")


def _report_done(ctx: StageContext, summary: dict[str, Any]) -> None:
    if not summary.get("measured"):
        _say(f"[bold red]nothing measured yet[/]: run `just all` (or `pipe convert {ctx.cfg.category}` and the "
             f"stages) first")
    for caveat in summary["caveats"]:
        _say(f"[bold red]numbers from {caveat}[/]")
    _say(f"wrote {ctx.folder}/report.md, report.html, summary.json")


def _csv(value: str | None) -> list[str] | None:
    return [a.strip() for a in value.split(",") if a.strip()] if value else None


EPOCHS = Option("epochs", int, "Training epochs (overrides the config).")
BATCH = Option("batch", int, "Batch size (overrides the config).")

STAGES: tuple[Stage, ...] = (
    Stage("stats", ("stats",),
          "Validate a category and write its dataset card: classes, counts per split, image size, mask statistics.",
          ("data", "synth", "classes"), _stats, _source, _card,
          "Folder for card.md and card.json (default: runs/<category>/stats).", _stats_done,
          lambda folder: StatsFiles(folder).card_json, reads_source=True,
          options=(Option("as_json", bool, "Print the card as JSON on stdout instead of Markdown.", default=False,
                          flag="--json", forces=True),)),
    Stage("convert", ("convert",),
          "Convert masks to YOLO boxes, YOLO polygons and COCO instances, with the shared splits.json.",
          ("seed", "data", "synth", "convert"), _convert, _source, lambda folder: [folder],
          "Output folder (default: datasets/<category>).", _convert_done, lambda folder: Dataset(folder).report,
          writes="atomic", reads_source=True,
          options=(Option("preview", int, "Write this many overlays per defect class to <out>/preview/.",
                          "convert.preview"),
                   Option("workers", int, "Worker processes (0: one per core for large categories).",
                          "convert.workers"))),
    Stage("yolo", ("finetune", "yolo"),
          "Fine-tune YOLO-World on the yolo-det boxes; score the zero-shot baseline and the result on the test split.",
          ("seed", "allow_random_init", "classes", "paths", "yolo"), _yolo, _trained, lambda folder: [folder],
          "Output folder (default: runs/<category>/yolo).", _yolo_done, lambda folder: YoloFiles(folder).metrics,
          writes="staged", reads_dataset=True, trains=True,
          options=(Option("model", str, "yolov8s-worldv2 (default), yolov8m-, yolov8l- or yolov8x-worldv2.",
                          "yolo.model"),
                   Option("epochs", int, EPOCHS.help, "yolo.epochs"),
                   Option("imgsz", int, "Training and evaluation image size, a multiple of 32.", "yolo.imgsz"),
                   Option("batch", int, BATCH.help, "yolo.batch"))),
    Stage("sam", ("finetune", "sam"),
          "Fine-tune SAM's mask decoder on the COCO instances; IoU, Dice and mask AP on test, zero-shot vs fine-tuned.",
          ("seed", "allow_random_init", "paths", "sam"), _sam, _sam_inputs, lambda folder: [folder],
          "Output folder (default: runs/<category>/sam).", _sam_done, lambda folder: SamFiles(folder).metrics,
          writes="staged", reads_dataset=True, trains=True, ddp=True,
          options=(Option("model", str, "vit_b (default), vit_l, vit_h, or vit_tiny (random init, tests).",
                          "sam.model"),
                   Option("epochs", int, EPOCHS.help, "sam.epochs"),
                   Option("batch", int, BATCH.help, "sam.batch"),
                   Option("accumulate", int, "Gradient accumulation steps.", "sam.accumulate"),
                   Option("unfreeze_blocks", int, "Also train the last N image-encoder blocks (disables the "
                          "embedding cache).", "sam.unfreeze_blocks"),
                   Option("detections", Path, "COCO detections to prompt with (default: the yolo stage's "
                          "detections_test.json if present)."))),
    Stage("classify", ("classify",),
          "Compare four backbone recipes (good vs each defect class): shared split, K-fold CV, long-tail comparison.",
          ("seed", "allow_random_init", "paths", "classify"), _classify, _classify_inputs, lambda folder: [folder],
          "Output folder (default: runs/<category>/classify).", _classify_done,
          lambda folder: ClassifyFiles(folder).metrics, writes="staged", reads_dataset=True, trains=True, ddp=True,
          resume_help="Reuse the finished (attempt, fold) runs in the output folder; redo the rest.",
          options=(Option("attempts", str, "Comma-separated attempts from configs/classify/ (A,B,C,D) or YAML paths.",
                          "classify.attempts", parse=_csv),
                   Option("folds", int, "Stratified K-fold cross-validation over the labelled images (0: shared "
                          "split only; K >= 3).", "classify.folds"),
                   Option("longtail", str, "none, balanced_sampling, effective_number or balanced_softmax for every "
                          "attempt (default: each attempt's own).", "classify.longtail"),
                   Option("epochs", int, EPOCHS.help, "classify.epochs"),
                   Option("imgsz", int, "Square input side for every attempt (overrides the attempts' own).",
                          "classify.imgsz"),
                   Option("batch", int, BATCH.help, "classify.batch"))),
    Stage("anomaly", ("anomaly",),
          "Good-only defect detection: PatchCore fitted on train/good, image/pixel AUROC and AUPRO on MVTec's test "
          "set, and the shared split at a threshold fitted without test images.",
          # data.mask_threshold matters too, through the dataset it converted (an input): not data.root
          ("seed", "allow_random_init", "paths", "anomaly"), _anomaly, _anomaly_inputs, lambda folder: [folder],
          "Output folder (default: runs/<category>/anomaly).", _anomaly_done,
          lambda folder: AnomalyFiles(folder).metrics, writes="staged", reads_dataset=True, trains=True,
          options=(Option("backbone", str, "wide_resnet50_2 (default) or resnet18 (the cpu profile's).",
                          "anomaly.backbone"),
                   Option("coreset_ratio", float, "Share of the memory bank kept by greedy coreset subsampling.",
                          "anomaly.coreset_ratio"),
                   Option("imgsz", int, "Square image side the features are computed at.", "anomaly.imgsz"))),
    Stage("report", ("report",),
          "Gather every stage's numbers into report.md, a self-contained report.html and summary.json.",
          ("paths",), _report, lambda ctx: list(results(ctx.ws).values()),
          lambda folder: [ReportFiles(folder).markdown, ReportFiles(folder).html, ReportFiles(folder).summary],
          "Folder for report.md, report.html and summary.json (default: runs/<category>).", _report_done,
          reads_dataset=True, accepts=("workspace",)),
)

REGISTRY: dict[str, Stage] = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    return REGISTRY[name]


def results(ws: Workspace) -> dict[str, Path]:
    """The file each stage leaves for the report, by stage, in pipeline order, wherever the workspace has it."""
    return {s.name: s.result(ws.folder(s.name)) for s in STAGES if s.result is not None}


def sections(name: str) -> tuple[str, ...]:
    """The config sections ``name`` reads (its up-to-date key and what ``--resume`` compares)."""
    return REGISTRY[name].sections

