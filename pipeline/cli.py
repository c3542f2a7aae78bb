"""The ``pipe`` command line. Each command is a thin shell over a module that does the work.

Every command takes the same configuration options (``--config``, ``--profile``, ``--set``), so any
value in ``configs/default.yaml`` can be changed for one run without editing a file.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pipeline.console import console, info, setup_logging
from pipeline.errors import PipeError

setup_logging()  # the CLI is the application: it sends pipe's log records to the rich console

if TYPE_CHECKING:  # annotations only: the CLI imports these lazily, so `pipe --help` stays fast
    from pipeline.config import Config
    from pipeline.registry import Option, Stage

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

CategoryArg = Annotated[str, typer.Argument(help="MVTec AD category, e.g. bottle, screw, zipper.")]
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
    bool, typer.Option("--fallback-synthetic/--no-fallback-synthetic", help="If the category is not under the data root, generate and use the "
                                                     "synthetic stand-in (loudly).")
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
DatasetOpt = Annotated[Optional[Path], typer.Option("--dataset", help="Converted dataset folder (default: where "
                                                                      "`pipe convert` last wrote it, datasets/<category>).")]
Force = Annotated[bool, typer.Option("--force/--no-force", help="Run even if the outputs are up to date with the inputs and config "
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


@app.command()
def synth(
    category: CategoryArg = "bottle",
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
    category: CategoryArg = "bottle",
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


# --- the stage commands, built from the registry --------------------------------------------------------

def _parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


def _shared(stage: Stage | None) -> list[inspect.Parameter]:
    """The options every stage of its kind takes, in the order ``--help`` lists them."""
    trains = stage is None or stage.trains
    out: list[inspect.Parameter] = []
    if stage is not None and stage.ddp:
        out.append(_parameter("nproc_per_node", NprocPerNode, 1))
    if stage is not None and stage.trains:
        resume = Annotated[bool, typer.Option("--resume/--no-resume", help=stage.resume_help)]
        out += [_parameter("resume", resume, False), _parameter("dataset", DatasetOpt, None)]
    if trains:
        out += [_parameter("device", Device, None), _parameter("seed", Seed, None),
                _parameter("allow_random_init", AllowRandomInit, None)]
    if stage is None or stage.reads_source:
        out += [_parameter("root", Root, None), _parameter("fallback_synthetic", FallbackSynthetic, False)]
    if stage is not None:
        out.append(_parameter("out", Annotated[Optional[Path], typer.Option(help=stage.out_help)], None))
    return out + [_parameter("force", Force, False), _parameter("config", ConfigFiles, None),
                  _parameter("profile", Profile, None), _parameter("set_", Sets, None)]


def _own(option: Option) -> inspect.Parameter:
    flag = option.flag or "--" + option.name.replace("_", "-")
    kind = option.type if option.type is bool else Optional[option.type]
    return _parameter(option.name, Annotated[kind, typer.Option(flag, help=option.help)], option.default)


def _signed(fn: Callable[..., None], name: str, doc: str, params: list[inspect.Parameter]) -> Callable[..., None]:
    """Give ``fn`` the signature typer reads to build the command's options and its ``--help``."""
    fn.__signature__ = inspect.Signature([_parameter("category", CategoryArg, "bottle"), *params])  # type: ignore[attr-defined]
    fn.__annotations__ = {"category": CategoryArg, **{p.name: p.annotation for p in params}}
    fn.__name__, fn.__doc__ = name, doc
    return fn


def _command_config(category: str, values: dict[str, Any], keys: dict[str, Any]) -> Config:
    """The config for one command: files, profile and --set, then the direct options as the last overrides."""
    direct = {"root": values.get("root"), "device": values.get("device"), "seed": values.get("seed"),
              "allow_random_init": values.get("allow_random_init"), **keys}
    return _config(category, values.get("config"), values.get("profile"), values.get("set_"), **direct)


def _stage_command(stage: Stage) -> Callable[..., None]:
    def command(category: str = "bottle", **values: Any) -> None:
        if stage.ddp and _relaunched(values.pop("nproc_per_node", 1)):
            return
        from pipeline.registry import StageContext
        from pipeline.runner import run_stage
        from pipeline.workspace import Workspace

        keys = {o.key: (o.parse(values[o.name]) if o.parse else values[o.name])
                for o in stage.options if o.key and values.get(o.name) is not None}
        cfg = _command_config(category, values, keys)
        ws = Workspace.from_config(cfg, {stage.name: values.get("out"), "dataset": values.get("dataset")})
        ctx = StageContext(cfg, ws, ws.target(stage.name), {o.name: values.get(o.name) for o in stage.options},
                           values.get("resume", False), values.get("fallback_synthetic", False))
        run_stage(stage, ctx, values["force"])

    return _signed(command, stage.name, stage.help, [*(_own(o) for o in stage.options), *_shared(stage)])


def _all(category: str = "bottle", **values: Any) -> None:
    import os

    from pipeline.registry import STAGES, StageContext
    from pipeline.runner import run_stage
    from pipeline.workspace import Workspace

    if "WORLD_SIZE" in os.environ:
        raise PipeError("pipe all runs every stage in one process and cannot run under torchrun; run the training "
                        "stages with --nproc-per-node N instead (e.g. `pipe finetune sam bottle --nproc-per-node 2`)")
    cfg = _command_config(category, values, {})
    ws = Workspace.from_config(cfg)
    start = time.perf_counter()
    for stage in STAGES:
        ctx = StageContext(cfg, ws, ws.target(stage.name), {o.name: o.default for o in stage.options},
                           fallback_synthetic=values["fallback_synthetic"])
        run_stage(stage, ctx, values["force"])
    info(f"[bold]pipe all {category}[/]: {len(STAGES)} stages in {time.perf_counter() - start:.1f} s; "
         f"report: {ws.report.markdown}")


def _register_stages() -> None:
    from pipeline.registry import STAGES

    groups = {"finetune": finetune_app}
    for stage in STAGES:
        group = groups[stage.command[0]] if len(stage.command) > 1 else app
        group.command(stage.command[-1])(_stage_command(stage))
    app.command("all")(_signed(_all, "all", "Run every stage in order in one process (each skipped when up to date): "
                               + ", ".join(s.cli_name for s in STAGES) + ".", _shared(None)))


_register_stages()


@app.command("anomaly-all")
def anomaly_all(
    root: Root = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for anomaly-all.md and anomaly-all.json (default: "
                                                     "paths.runs, runs/).")] = None,
    device: Device = None,
    seed: Seed = None,
    allow_random_init: AllowRandomInit = None,
    force: Force = False,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Convert and run `pipe anomaly` on every MVTec AD category present under the data root (each skipped when up
    to date), then write one table with the mean, as published tables report it."""
    from pipeline.data.categories import CATEGORIES, resolve_root
    from pipeline.io import read_json
    from pipeline.registry import REGISTRY, StageContext
    from pipeline.runner import run_stage
    from pipeline.stages.anomaly import table
    from pipeline.workspace import Workspace

    values = {"root": root, "device": device, "seed": seed, "allow_random_init": allow_random_init,
              "config": config, "profile": profile, "set_": set_}
    first = _command_config("bottle", values, {})
    data_root = resolve_root(first.data.root)
    present = [c for c in CATEGORIES if (data_root / c).is_dir()]
    if not present:
        raise PipeError(f"{data_root}: no MVTec AD category here; `pipe download <category>` or set --root / "
                        f"$MVTEC_ROOT")
    rows: dict[str, dict[str, Any] | None] = {c: None for c in CATEGORIES}
    for category in present:
        cfg = _command_config(category, values, {})
        ws = Workspace.from_config(cfg)
        for name in ("convert", "anomaly"):
            run_stage(REGISTRY[name], StageContext(cfg, ws, ws.target(name)), force)
        rows[category] = table.row(read_json(ws.anomaly.metrics))
    doc = table.table(rows)
    js, md = table.write(doc, out or Path(first.paths.runs))
    console.print(table.markdown(doc))
    info(f"wrote {md} and {js} ({len(present)} of {len(CATEGORIES)} categories present under {data_root})")


ModelFile = Optional[Path]


def _input_paths(sources: list[str]) -> list[tuple[str, Path]]:
    """What a predict output must not overlap, from the sources as expanded: each folder searched recursively
    for images (an output inside one would be read back as input by the next run over it) and each input image
    (no output may hold one). Not a pattern's literal root: ``pipe predict bottle '*.png'`` from a project reads
    the PNGs there, and its default output under ``runs/`` holds none of them."""
    from pipeline.predict.sources import expand, walked

    images, _ = expand(sources)
    return [*(("the input folder", f) for f in walked(sources)), *(("the input image", p) for p in images)]


@app.command()
def predict(
    category: CategoryArg,
    sources: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively for PNG, JPEG, "
                                                      "BMP and TIFF) or glob patterns (quote them).")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/<category>/predict/<name>); "
                                                     "a previous `pipe predict` result there is replaced, if it "
                                                     "holds nothing but what that run wrote.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the run under runs/<category>/predict/ (default: "
                                                     "the first free of predict, predict2, predict3, ...).")] = None,
    detector: Annotated[ModelFile, typer.Option(help="YOLO-World checkpoint (default: the yolo stage's best.pt).")] = None,
    segmenter: Annotated[ModelFile, typer.Option(help="SAM decoder (default: the sam stage's decoder.pt; with "
                                                      "--backend onnx an exported sam_decoder.onnx, its encoder beside "
                                                      "it).")] = None,
    classifier: Annotated[ModelFile, typer.Option(help="Classifier checkpoint (default: the best attempt's best.pt).")] = None,
    anomaly: Annotated[ModelFile, typer.Option(help="PatchCore model (default: the anomaly stage's patchcore.pt).")] = None,
    conf: Annotated[Optional[float], typer.Option(help="Box score threshold (config: predict.conf, else "
                                                       "sam.detector_conf).")] = None,
    iou: Annotated[Optional[float], typer.Option(help="NMS IoU threshold (config: predict.iou, else yolo.iou).")] = None,
    mask_threshold: Annotated[Optional[float], typer.Option(help="SAM mask logit threshold (config: "
                                                                 "predict.mask_threshold).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Images per batch (config: predict.batch).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="torch, or onnx to run the files `pipe export --format "
                                                        "onnx` wrote (config: predict.backend).")] = None,
    save_overlays: Annotated[bool, typer.Option(help="Draw boxes, masks, label (and the anomaly map) per image "
                                                     "into overlays/.")] = False,
    save_masks: Annotated[bool, typer.Option(help="One binary PNG per image in masks/ (0/255, <name>_mask.png), "
                                                  "as MVTec's ground truth.")] = False,
    save_maps: Annotated[bool, typer.Option(help="The good-only detector's anomaly map per image in maps/ (float16 "
                                                 ".npy at the image's size; its path in the JSON line).")] = False,
    coco_gt: Annotated[Optional[Path], typer.Option("--coco-gt", help="A COCO ground truth (e.g. <dataset>/coco/"
                                                    "annotations/instances_test.json): results use its image ids "
                                                    "(matched by file name) and category ids.")] = None,
    device: Device = None,
    dataset: DatasetOpt = None,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Run the trained detector, SAM, the best classifier and the good-only detector on new images: one JSON line
    per image (predictions.jsonl), COCO results, and optional overlays and masks."""
    from pipeline.device import select_device
    from pipeline.outputs import check_output, locked
    from pipeline.predict.models import load_anomaly, load_trained
    from pipeline.predict.run import (PredictOptions, categories, check_replaceable, failure_line, read_coco_gt,
                                      run_predict)
    from pipeline.runner import protected
    from pipeline.workspace import ExportFiles, Workspace, check_run_name

    cfg = _config(category, config, profile, set_, device=device, **{
        "predict.conf": conf, "predict.iou": iou, "predict.mask_threshold": mask_threshold, "predict.batch": batch,
        "predict.backend": backend})
    p = cfg.predict
    ws = Workspace.from_config(cfg, {"dataset": dataset})
    # a default name is a new folder every run; a folder named explicitly is replaced only if it holds nothing
    # but what its predict run wrote
    if name is not None:
        check_run_name(name)  # refused even beside --out: a name like ../x is a mistake either way
    target = out or (ws.predict(name) if name is not None else ws.new_predict()).folder
    check_output(target, "predict", [*protected(ws), *_input_paths(sources)])
    check_replaceable(target)
    gt = read_coco_gt(coco_gt) if coco_gt is not None else None
    dev = select_device(cfg.device)
    files = {"detector": detector, "segmenter": segmenter, "classifier": classifier, "anomaly": anomaly}
    if p.backend == "onnx":
        from pipeline.export.runtime import load_exported

        parts: dict[str, Path | None] = {"detector": detector, "classifier": classifier, "sam_decoder": segmenter}
        if segmenter:  # the decoder's encoder is the one exported beside it
            parts["sam_encoder"] = ExportFiles(segmenter.parent).part("sam_encoder", "onnx")
        models = load_exported(ws, cfg, parts, "onnx", dev, p.mask_threshold)
        if anomaly or ws.anomaly.model.is_file():  # PatchCore is not exported: it runs in PyTorch beside them
            models.anomaly = load_anomaly(ws, cfg, dev, anomaly)
    else:
        models = load_trained(ws, cfg, dev, files, mask_threshold=p.mask_threshold)
    if save_maps and models.anomaly is None:
        info(f"--save-maps: no anomaly model (`pipe anomaly {category}` has not run), so no maps are written")
    o = PredictOptions(p.box_conf(cfg), p.nms_iou(cfg), p.batch, save_overlays, save_masks, p.backend, save_maps)
    meta = {"category": category, "device": dev, "models": models.files()}
    names = models.detector.names if models.detector else []
    with locked(target, "predict"):
        if out is None and name is None and target.exists():  # a run started alongside took the same new name
            raise PipeError(f"{target}: another `pipe predict` run wrote this new folder meanwhile; run again "
                            f"(the next free name is taken then)")
        check_replaceable(target)  # again under the lock: another run may have finished there meanwhile
        summary = run_predict(models, sources, target, o, categories(names, ws.dataset.coco.annotations("test")),
                              meta, gt)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in summary["ms_per_image"].items())
    info(f"{summary['images']} images in {summary['wall_s']:.1f} s ({summary['images_per_s'] or 0:.2f}/s; ms per "
         f"image: {parts}) -> {target}")
    failed = failure_line(summary)
    if failed:
        console.print(f"[bold red]error:[/] {failed}", soft_wrap=True, highlight=False)
        raise SystemExit(1)


@app.command()
def export(
    category: CategoryArg,
    format_: Annotated[list[str], typer.Option("--format", "-f", help="onnx and/or torchscript (repeatable).")] = ["onnx"],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/<category>/export).")] = None,
    conf: Annotated[Optional[float], typer.Option(help="Box score threshold the detections are compared above "
                                                       "(config: predict.conf, else sam.detector_conf).")] = None,
    images: Annotated[int, typer.Option(help="Test-split images each export is verified on.")] = 8,
    device: Device = None,
    dataset: DatasetOpt = None,
    config: ConfigFiles = None,
    profile: Profile = None,
    set_: Sets = None,
) -> None:
    """Export the fine-tuned YOLO-World (classes baked in), SAM's encoder and decoder and the best classifier, then
    check each file against PyTorch on test images (export_report.json); fails if a check fails."""
    from pipeline.device import select_device
    from pipeline.export.run import run_export
    from pipeline.outputs import claim, locked
    from pipeline.runner import protected
    from pipeline.workspace import Workspace

    bad = [f for f in format_ if f not in ("onnx", "torchscript")]
    if bad:
        raise PipeError(f"--format {bad[0]}: unknown export format; use onnx or torchscript")
    cfg = _config(category, config, profile, set_, device=device, **{"predict.conf": conf})
    ws = Workspace.from_config(cfg, {"dataset": dataset, "export": out})
    claim(ws.export.folder, "export", protected(ws, ws.dataset.root))
    with locked(ws.export.folder, "export"):
        report = run_export(cfg, ws, list(dict.fromkeys(format_)), select_device(cfg.device),
                            cfg.predict.box_conf(cfg), images)
    info(f"exported and verified {', '.join(sorted(report['parts']))} -> {ws.export.folder} "
         f"(report: {ws.export.report})")


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
