"""The ``pipe`` command line. Each command is a thin shell over a module that does the work.

Every command takes the same configuration options (``--config``, ``--profile``, ``--set``), so any
value in ``configs/default.yaml`` can be changed for one run without editing a file.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.console import console, info
from pipeline.errors import PipeError

if TYPE_CHECKING:  # annotations only: the CLI imports these lazily, so `pipe --help` stays fast
    from pipeline.config import Config
    from pipeline.data.source import DataSource

app = typer.Typer(
    name="pipe",
    help="MVTec AD to a fine-tuned defect detector (YOLO-World) and segmenter (SAM), with a measured report.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
weights_app = typer.Typer(help="List and fetch pretrained weights (looked up in weights/ first).", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
finetune_app = typer.Typer(help="Fine-tune a model on a converted category: yolo (boxes) or sam (masks).",
                           no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")

Category = Annotated[str, typer.Argument(help="MVTec AD category, e.g. bottle, screw, zipper.")]
ConfigFiles = Annotated[
    Optional[list[Path]],
    typer.Option("--config", "-c", help="Extra YAML layered over configs/default.yaml and configs/<category>.yaml "
                                         "(repeatable; later files win)."),
]
Profile = Annotated[
    Optional[str], typer.Option("--profile", "-p", help="A profile from configs/profiles/: tiny, cpu or full; auto: full "
                                                      "when CUDA is present, else cpu.")
]
Sets = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override any config key for this run, e.g. --set synth.size=128 (repeatable)."),
]
Root = Annotated[
    Optional[Path],
    typer.Option("--root", help="MVTec AD root holding <category>/ (default: $MVTEC_ROOT, else datasets/mvtec)."),
]
FallbackSynthetic = Annotated[
    bool, typer.Option(help="If the category is not under the data root, generate and use the synthetic stand-in (loudly).")
]
Device = Annotated[
    Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N, or a GPU list 0,1.")
]
Seed = Annotated[Optional[int], typer.Option(help="Seed for splits, sampling and training (config: seed).")]
AllowRandomInit = Annotated[
    Optional[bool], typer.Option("--allow-random-init/--no-allow-random-init",
                                 help="Without pretrained weights, train from random init (recorded loudly) "
                                      "instead of stopping.", show_default=False)
]
Resume = Annotated[bool, typer.Option(help="Continue the interrupted run in the output folder from its last checkpoint.")]
Dataset = Annotated[Optional[Path], typer.Option(help="Converted dataset folder (default: datasets/<category>).")]
Out = Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/<category>/<stage>).")]
Epochs = Annotated[Optional[int], typer.Option(help="Training epochs (overrides the config).")]
Batch = Annotated[Optional[int], typer.Option(help="Batch size (overrides the config).")]
Force = Annotated[bool, typer.Option(help="Run even if the outputs are up to date with the inputs and config "
                                          "(also PIPE_FORCE=1).")]
NprocPerNode = Annotated[int, typer.Option("--nproc-per-node", help="Train with DDP in N processes (relaunches "
                                                                    "under torchrun; NCCL on CUDA, gloo on CPU).")]


def _config(category: str, config: list[Path] | None, profile: str | None, sets: list[str] | None, **direct):
    """Load the config with the direct options (--root, --device...) applied as the last overrides."""
    from pipeline.config import load_config

    keys = {"root": "data.root"}  # the rest are named by their dotted key, e.g. **{"yolo.epochs": 5}
    extra = [f"{keys.get(k, k)}={json.dumps(str(v) if isinstance(v, Path) else v)}"
             for k, v in direct.items() if v is not None]
    return load_config(category, profile, config or [], [*(sets or []), *extra])


@dataclass(frozen=True)
class StageRun:
    """Where a running stage writes: ``work`` is ``folder`` itself, or its staging folder for training stages."""

    folder: Path
    work: Path


def _protected(cfg, *datasets: Path) -> list[tuple[str, Path]]:
    """What no output may equal, contain or lie inside: the data roots, the stage's input datasets and the
    source category each dataset was converted from (which may sit under another root than this run's)."""
    from pipeline.data.categories import resolve_root
    from pipeline.io import read_json

    out = [("the MVTec AD data root", resolve_root(cfg.data.root)),
           ("the synthetic data root", Path(cfg.data.synthetic_root))]
    for d in datasets:
        out.append(("the input dataset", d))
        report = Path(d) / "convert_report.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            out.append(("the source category", Path(read_json(report)["data"]["root"])))
    return out


@contextlib.contextmanager
def _stage(cfg, stage: str, target: Path, inputs: list[Path], outputs: list[Path], force: bool,
           device: str = "", protected: list[tuple[str, Path]] | None = None, writes: str = "in_place",
           resume: bool = False, accepts: tuple[str, ...] = ()) -> Iterator[StageRun | None]:
    """Claim and lock the output, then yield None (and say so) when it is up to date; else run the stage under
    its log and stamp it on success.

    The output is refused before any work if pipe must not write it (``pipeline.outputs``). How the stage
    writes decides what an interruption leaves: ``staged`` (training stages) writes into a staging folder
    that replaces ``target`` only when complete, so a failed or interrupted re-run keeps the previous
    complete result, and ``resume`` continues in that staging folder; ``atomic`` (convert) replaces
    ``target`` in one rename itself; ``in_place`` (a few small files) loses its stamp first, so an
    interrupted run is redone. Under ``torchrun`` only rank 0 claims, locks, swaps and stamps.
    """
    import os
    import shutil

    from pipeline.config import dump
    from pipeline.console import logged
    from pipeline.io import clean_leftovers
    from pipeline.outputs import check_output, claim, empty, locked, owner, staging, swap_in
    from pipeline.uptodate import Freshness, unmark

    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    check_output(target, stage, protected or [], accepts)  # before the lock creates anything beside it
    workspace = Path(cfg.paths.runs) / cfg.category  # logs go here; the report writes beside the stage folders
    if main and (not workspace.exists() or empty(workspace)):
        claim(workspace, "workspace")
    with locked(target, stage) if main else contextlib.nullcontext():
        if main:
            claim(target, stage, protected or [], accepts)
            clean_leftovers(target)
        fresh = Freshness(stage, dump(cfg), device, target, inputs, outputs, force)
        if fresh.skip():
            info(f"[bold]{stage}[/] up to date ({target}); skipped. --force (or PIPE_FORCE=1) redoes it")
            yield None
            return
        staged = writes == "staged"
        work = staging(target) if staged else target
        if main and staged:
            if resume and not work.is_dir():
                info(f"{work}: no interrupted run to resume; starting afresh")
            if not resume and work.exists():
                if owner(work) != stage:  # a folder of that name pipe did not make is never removed
                    raise PipeError(f"{work}: pipe keeps an unfinished `{stage}` run here, but this folder was not "
                                    f"made by it; move it away and run again")
                shutil.rmtree(work)
            claim(work, stage)
        elif main and writes == "in_place":
            unmark(target)
        logs = workspace / "logs"
        start = time.perf_counter()
        with logged(logs / (f"{stage}.log" if main else f"{stage}.rank{rank}.log"), stage):
            yield StageRun(target, work)
        if main:
            if staged:
                swap_in(work, target, stage)
            fresh.mark(time.perf_counter() - start)


def data_source(cfg: Config) -> DataSource:
    """The configuration's answer to "which data": the one place ``Config`` becomes the data layer's plain values."""
    from pipeline.data.source import DataSource, SynthSpec

    s = cfg.synth
    return DataSource(cfg.category, cfg.data.root, cfg.data.synthetic_root, cfg.data.mask_threshold,
                      SynthSpec(s.size, s.train_good, s.test_good, s.test_per_defect, s.seed))


def _category_folder(cfg, fallback_synthetic: bool) -> Path:
    """The category folder a run will read (the synthetic stand-in's when the real one is absent and allowed)."""
    from pipeline.data.categories import resolve_root

    real = resolve_root(cfg.data.root) / cfg.category
    return real if real.is_dir() or not fallback_synthetic else Path(cfg.data.synthetic_root) / cfg.category


def _device(cfg) -> str:
    """The device a training stage will run on: part of its up-to-date key, so it is resolved before the stage
    decides to skip, without importing torch where CUDA is surely absent (``device.cuda_available``)."""
    from pipeline.device import select_device

    return select_device(cfg.device)


@app.command()
def stats(
    category: Category = "bottle",
    root: Root = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for card.md and card.json (default: runs/<category>/stats).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON on stdout instead of Markdown.")] = False,
    fallback_synthetic: FallbackSynthetic = False,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Validate a category and write its dataset card: classes, counts per split, image size, mask statistics."""
    cfg = _config(category, config, profile, set_, root=root)
    target = out or Path(cfg.paths.runs) / category / "stats"
    with _stage(cfg, "stats", target, [_category_folder(cfg, fallback_synthetic)],
                [target / "card.json", target / "card.md"], force or as_json,  # --json always prints the card
                protected=_protected(cfg)) as run:
        if not run:
            return
        from rich.markdown import Markdown

        from pipeline.data.source import open_category
        from pipeline.data.stats import card_markdown, dataset_card, write_card
        from pipeline.device import environment

        card = dataset_card(open_category(data_source(cfg), fallback_synthetic), cfg.classes,
                            environment=environment("cpu"))  # measured on the CPU; recorded like every output
        md_path = write_card(card, run.work)[1]
        if as_json:
            sys.stdout.write(json.dumps(card, indent=2, sort_keys=True) + "\n")
        else:
            console.print(Markdown(card_markdown(card)))
        info(f"wrote {md_path} and {md_path.with_suffix('.json')}")


@app.command()
def convert(
    category: Category = "bottle",
    root: Root = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: datasets/<category>).")] = None,
    preview: Annotated[Optional[int], typer.Option(help="Write this many overlays per defect class to <out>/preview/.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (0: one per core for large categories).")] = None,
    fallback_synthetic: FallbackSynthetic = False,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Convert masks to YOLO boxes, YOLO polygons and COCO instances, with the shared splits.json."""
    cfg = _config(category, config, profile, set_, root=root,
                  **{"convert.preview": preview, "convert.workers": workers})
    target = out or Path(cfg.paths.datasets) / category
    with _stage(cfg, "convert", target, [_category_folder(cfg, fallback_synthetic)], [target], force,
                protected=_protected(cfg), writes="atomic") as run:
        if run:
            from pipeline.data.source import open_category  # OpenCV, NumPy: only once the stage runs

            _convert(cfg, open_category(data_source(cfg), fallback_synthetic), run.work)


def _convert(cfg, cat, target: Path) -> None:
    from pipeline.convert.instances import ConvertParams
    from pipeline.convert.run import run_convert
    from pipeline.device import environment

    c = cfg.convert
    params = ConvertParams(c.merge_distance, c.min_area, c.simplify, c.coco_min_iou, c.yolo_seg_min_iou)
    # conversion runs on the CPU; environment("cpu") reads the versions without importing torch
    report = run_convert(cat, target, params, c.split.model_dump(), cfg.seed, c.add_train_good, c.link,
                         c.workers, c.preview, environment=environment("cpu"))
    f = report["fidelity"]
    info(f"{f['instances']} instances in {sum(report['images_per_split'].values())} images "
         f"({report['images_per_split']}); COCO IoU min {f['coco_iou_min']}, YOLO-seg IoU min "
         f"{f['yolo_seg_iou_min']}, boxes exact: {f['yolo_boxes_exact']}; {report['timing_s']['total']} s")
    info(f"wrote {target}/ (yolo-det, yolo-seg, coco, splits.json, convert_report.json)")


@app.command()
def synth(
    category: Category = "bottle",
    root: Annotated[Optional[Path], typer.Option(help="Where to write <category>/ (default: data.synthetic_root, datasets/synthetic).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels.")] = None,
    train_good: Annotated[Optional[int], typer.Option(help="Number of train/good images.")] = None,
    test_good: Annotated[Optional[int], typer.Option(help="Number of test/good images.")] = None,
    per_defect: Annotated[Optional[int], typer.Option(help="Number of test images per defect class.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed; the same seed gives identical files.")] = None,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Generate a deterministic synthetic category in the exact MVTec AD layout (for tests and the embedded default)."""
    from pipeline.data.synth import synthesize

    cfg = _config(category, config, profile, set_)
    s = cfg.synth
    path = synthesize(
        category, root or cfg.data.synthetic_root, size=size or s.size,
        train_good=s.train_good if train_good is None else train_good,
        test_good=s.test_good if test_good is None else test_good,
        test_per_defect=per_defect or s.test_per_defect, seed=s.seed if seed is None else seed,
    )
    info(f"wrote synthetic {category} to {path} (use it with --root {path.parent})")


@app.command()
def download(
    category: Category = "bottle",
    root: Root = None,
    from_: Annotated[Optional[Path], typer.Option("--from", help="Install from a local archive (.tar.xz/.zip) or an already-extracted folder (e.g. a Kaggle copy) instead of downloading.")] = None,
    full: Annotated[bool, typer.Option(help="Fetch the full 4.9 GB MVTec AD archive (published SHA-256) and install this category from it.")] = False,
    sha256: Annotated[Optional[str], typer.Option(help="Expected SHA-256 of the archive, if you have one.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing category folder.")] = False,
) -> None:
    """Download MVTec AD (resumable, checksum-verified) or install a local copy under the data root."""
    from pipeline.data.download import install
    from pipeline.data.categories import resolve_root

    path = install(category, resolve_root(root), source=from_, full=full, sha256=sha256, force=force)
    info(f"{category} is ready at {path}")


@weights_app.command("list")
def weights_list(
    weights_dir: Annotated[Path, typer.Option(help="Folder searched for weight files.")] = Path("weights"),
) -> None:
    """Show every model the registry knows, its file name, checksum and whether it is present locally."""
    from rich.table import Table

    from pipeline.weights import local_status

    table = Table("name", "family", "file", "present", "published checksum")
    for row in local_status(weights_dir):
        table.add_row(row["name"], row["family"], row["file"], "yes" if row["present"] else "no", row["checksum"])
    console.print(table)


@weights_app.command("fetch")
def weights_fetch(
    name: Annotated[str, typer.Argument(help="A registry name, e.g. yolov8s-worldv2, sam_vit_b, resnet50.")],
    weights_dir: Annotated[Path, typer.Option(help="Folder to download into.")] = Path("weights"),
) -> None:
    """Download one model's official weights into weights/ and verify them."""
    from pipeline.weights import resolve

    r = resolve(name, weights_dir)
    info(f"{r.spec.name}: {r.path} ({r.source}, sha256 {r.sha256})")


@finetune_app.command("yolo")
def finetune_yolo(
    category: Category = "bottle",
    model: Annotated[Optional[str], typer.Option(help="yolov8s-worldv2 (default), yolov8m-, yolov8l- or yolov8x-worldv2.")] = None,
    epochs: Epochs = None,
    imgsz: Annotated[Optional[int], typer.Option(help="Training and evaluation image size, a multiple of 32.")] = None,
    batch: Batch = None,
    resume: Resume = False,
    device: Device = None,
    seed: Seed = None,
    allow_random_init: AllowRandomInit = None,
    dataset: Dataset = None,
    out: Out = None,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Fine-tune YOLO-World on the yolo-det boxes; score the zero-shot baseline and the result on the test split."""
    cfg = _config(category, config, profile, set_, device=device, seed=seed, allow_random_init=allow_random_init,
                  **{"yolo.model": model, "yolo.epochs": epochs, "yolo.imgsz": imgsz, "yolo.batch": batch})
    target = out or Path(cfg.paths.runs) / category / "yolo"
    data = dataset or Path(cfg.paths.datasets) / category
    with _stage(cfg, "yolo", target, [*_converted(data), Path(cfg.paths.weights)], [target], force or resume,
                _device(cfg), _protected(cfg, data), writes="staged", resume=resume) as run:
        if not run:
            return
        from pipeline.stages.yolo.run import run_finetune_yolo

        metrics = run_finetune_yolo(cfg, data, run.work, resume=resume)
    _report_yolo(metrics, target)


def _converted(dataset: Path) -> list[Path]:
    """What a training stage reads from the converted dataset (its splits and labels, by content)."""
    return [dataset / "splits.json", dataset / "convert_report.json"]


def _report_yolo(m: dict, target: Path) -> None:
    info(f"test mAP50 zero-shot {m['zero_shot']['map50']:.3f} -> fine-tuned {m['finetuned']['map50']:.3f} "
         f"(mAP50-95 {m['zero_shot']['map50_95']:.3f} -> {m['finetuned']['map50_95']:.3f}); "
         f"{m['timing_s']['total']} s")
    info(f"wrote {target}/metrics.json, best.pt, detections_test.json, overlays/")


@finetune_app.command("sam")
def finetune_sam(
    category: Category = "bottle",
    model: Annotated[Optional[str], typer.Option(help="vit_b (default), vit_l, vit_h, or vit_tiny (random init, tests).")] = None,
    epochs: Epochs = None,
    batch: Batch = None,
    accumulate: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps.")] = None,
    unfreeze_blocks: Annotated[Optional[int], typer.Option(help="Also train the last N image-encoder blocks (disables the embedding cache).")] = None,
    detections: Annotated[Optional[Path], typer.Option(help="COCO detections to prompt with (default: runs/<category>/yolo/detections_test.json if present).")] = None,
    nproc_per_node: NprocPerNode = 1,
    resume: Resume = False,
    device: Device = None,
    seed: Seed = None,
    allow_random_init: AllowRandomInit = None,
    dataset: Dataset = None,
    out: Out = None,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Fine-tune SAM's mask decoder on the COCO instances; IoU, Dice and mask AP on test, zero-shot vs fine-tuned."""
    if _relaunched(nproc_per_node):
        return
    cfg = _config(category, config, profile, set_, device=device, seed=seed, allow_random_init=allow_random_init,
                  **{"sam.model": model, "sam.epochs": epochs, "sam.batch": batch, "sam.accumulate": accumulate,
                     "sam.unfreeze_blocks": unfreeze_blocks})
    target = out or Path(cfg.paths.runs) / category / "sam"
    data = dataset or Path(cfg.paths.datasets) / category
    dets = detections or Path(cfg.paths.runs) / category / "yolo" / "detections_test.json"
    with _stage(cfg, "sam", target, [*_converted(data), Path(cfg.paths.weights), dets], [target], force or resume,
                _device(cfg), _protected(cfg, data), writes="staged", resume=resume) as run:
        if not run:
            return
        from pipeline.stages.sam.run import run_finetune_sam  # heavy: imported only when the stage runs

        m = run_finetune_sam(cfg, data, run.work, resume=resume, detections=detections)
    if m is not None:
        info(f"test instance IoU zero-shot {m['zero_shot']['mean_iou']} -> fine-tuned {m['finetuned']['mean_iou']}; "
             f"{m['timing_s']['total']} s")
        info(f"wrote {target}/metrics.json, decoder.pt, overlays/")


@app.command()
def classify(
    category: Category = "bottle",
    attempts: Annotated[Optional[str], typer.Option(help="Comma-separated attempts from configs/classify/ (A,B,C,D) or YAML paths.")] = None,
    folds: Annotated[Optional[int], typer.Option(help="Stratified K-fold cross-validation over the labelled images (0: shared split only; K >= 3).")] = None,
    longtail: Annotated[Optional[str], typer.Option(help="none, balanced_sampling, effective_number or balanced_softmax for every attempt (default: each attempt's own).")] = None,
    epochs: Epochs = None,
    imgsz: Annotated[Optional[int], typer.Option(help="Square input side for every attempt (overrides the attempts' own).")] = None,
    batch: Batch = None,
    nproc_per_node: NprocPerNode = 1,
    resume: Annotated[bool, typer.Option(help="Reuse the finished (attempt, fold) runs in the output folder; redo the rest.")] = False,
    device: Device = None,
    seed: Seed = None,
    allow_random_init: AllowRandomInit = None,
    dataset: Dataset = None,
    out: Out = None,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Compare four backbone recipes (good vs each defect class): shared split, K-fold CV, long-tail comparison."""
    if _relaunched(nproc_per_node):
        return
    names = [a.strip() for a in attempts.split(",") if a.strip()] if attempts else None
    cfg = _config(category, config, profile, set_, device=device, seed=seed, allow_random_init=allow_random_init,
                  **{"classify.attempts": names, "classify.folds": folds, "classify.longtail": longtail,
                     "classify.epochs": epochs, "classify.imgsz": imgsz, "classify.batch": batch})
    target = out or Path(cfg.paths.runs) / category / "classify"
    data = dataset or Path(cfg.paths.datasets) / category
    from pipeline.stages.classify.attempts import ATTEMPT_DIR

    with _stage(cfg, "classify", target, [*_converted(data), Path(cfg.paths.weights), ATTEMPT_DIR,
                                          *(Path(a) for a in cfg.classify.attempts if a.endswith((".yaml", ".yml")))],
                [target], force or resume, _device(cfg), _protected(cfg, data), writes="staged", resume=resume) as run:
        if not run:
            return
        from pipeline.stages.classify.run import run_classify

        m = run_classify(cfg, data, run.work, resume=resume)
    if m is not None:
        console.print(m["summary_text"])
        info(f"wrote {target}/metrics.json, attempts.md, confusion/; {m['timing_s']['total']} s")


def _relaunched(nproc: int) -> bool:
    """With ``--nproc-per-node N`` outside torchrun, run this command under torchrun instead and say so."""
    import os

    if "WORLD_SIZE" in os.environ:  # a process of a DDP group: end with its launcher
        from pipeline.outputs import die_with_parent

        die_with_parent()
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(nproc)
        return True
    return False


def _relaunch_under_torchrun(nproc: int) -> None:
    """Run this same command in ``nproc`` DDP processes (what ``torchrun --nproc-per-node`` would do)."""
    import subprocess

    from pipeline.outputs import die_with_parent

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc-per-node":
            skip = True
            continue
        if a.startswith("--nproc-per-node="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "pipeline", *args]
    info("launching: " + " ".join(cmd))
    raise SystemExit(subprocess.call(cmd, preexec_fn=die_with_parent))


@app.command()
def report(
    category: Category = "bottle",
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.md, report.html and summary.json (default: runs/<category>).")] = None,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Gather every stage's numbers into report.md, a self-contained report.html and summary.json."""
    from pipeline.report.build import build_report, inputs

    cfg = _config(category, config, profile, set_)
    target = out or Path(cfg.paths.runs) / category
    with _stage(cfg, "report", target, list(inputs(cfg).values()),
                [target / "report.md", target / "report.html", target / "summary.json"], force,
                protected=_protected(cfg, Path(cfg.paths.datasets) / category), accepts=("workspace",)) as run:
        if run:
            summary = build_report(cfg, run.work)
            if not summary.get("measured"):
                info(f"[bold red]nothing measured yet[/]: run `just all` (or `pipe convert {category}` and the "
                     f"stages) first")
            for caveat in summary["caveats"]:
                info(f"[bold red]numbers from {caveat}[/]")
            info(f"wrote {target}/report.md, report.html, summary.json")


@app.command()
def env(device: Device = "auto") -> None:
    """Print the device that --device resolves to and the versions every output records."""
    from pipeline.device import environment, select_device

    sys.stdout.write(json.dumps(environment(select_device(device or "auto")), indent=2) + "\n")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (a kill, a CI timeout) unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    raise KeyboardInterrupt


def main() -> None:
    """Run the CLI: every user-fixable or OS failure is one line and exit code 2, never a traceback."""
    import signal

    from pipeline.errors import describe_os_error

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except PipeError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(describe_os_error(exc))
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: nothing half-written was left in place")
        raise SystemExit(130) from None


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise SystemExit(2) from None


if __name__ == "__main__":
    main()
