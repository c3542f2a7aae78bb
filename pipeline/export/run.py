"""``pipe export``: write the fine-tuned models as ONNX or TorchScript, and prove they still answer as PyTorch does.

Parts: the YOLO-World detector with its class vocabulary baked in (ultralytics' own exporter, so its predictor
runs the file as it runs the module), SAM's image encoder and its prompt encoder + mask decoder (two graphs,
so an image is encoded once for all its boxes), and the best classifier (the ensemble's mean softmax).

Nothing ships unverified: every file is written to a staging folder, run through ``runtime`` (the very classes
``pipe predict --backend onnx`` uses) on test-split images and compared with the PyTorch models on the same
inputs. Only when every check passes do the files replace those in the export folder; otherwise they are kept
in ``rejected/`` for inspection, and the command fails naming ``export_report.json``, which holds every
measured value either way.

A check must compare something to pass. The sample takes defective images first, one class after another, so
SAM is always compared on their true boxes (and on the detector's); a sample without any box at all prompts
SAM with each image's whole frame. The detector's check is the one that may compare nothing and still pass:
when neither runtime finds a box above the threshold on any sample image, they agree that there is none, which
is recorded (``compared: 0`` with a note). Every other check that compared nothing fails the command.

Files are traced on a CPU copy of each model whatever ``--device`` is: a trace freezes the device of every
tensor the model makes while running (segment-anything's ``get_dense_pe`` builds its grid on the model's
device), so a file traced on CUDA would run only there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.stages.yolo import offline  # before any ultralytics import: no online checks
from pipeline.errors import PipeError
from pipeline.export import runtime
from pipeline.export.modules import BOX_LABELS, ClassifierProbs, SamDecoder, SamEncoder
from pipeline.io import clean_leftovers, read_json, replace_dir, write_json
from pipeline.predict.models import TRAINED_BY, Trained, load_trained
from pipeline.workspace import ExportFiles, Workspace

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
TASKS = ("detector", "segmenter", "classifier")
OPSET = 17  # segment-anything's export script's; the detector's opset is ultralytics' choice


class ExportError(PipeError):
    """An export did not reproduce its PyTorch model, or cannot be made."""


@dataclass(frozen=True)
class Tolerances:
    """How close an export must come. ``score``: a box this close to the confidence threshold may fall on
    either side of it in the other runtime, so it is not asked to be found there."""

    box_iou: float = 0.99
    mask_iou: float = 0.99
    prob: float = 1e-3
    score: float = 1e-3


# --- writing the files -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tracing's and ultralytics' chatter (deprecations, TracerWarnings, "export not supported" for any
    YOLO-World) says nothing the verification does not settle; errors still raise."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        LOGGER.setLevel(level)


def _add_meta(path: Path, meta: dict[str, Any]) -> None:
    """Put the ``pipe`` record into an exported file (beside ultralytics' own metadata, if any)."""
    text = json.dumps(meta, sort_keys=True)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)  # a >2 GB model's weights stay beside it
        prop = model.metadata_props.add()
        prop.key, prop.value = runtime.META_KEY, text
        onnx.save(model, str(path))
    else:
        extra = {"config.txt": ""}  # ultralytics' metadata, kept
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        module.save(str(path), _extra_files={**{k: v for k, v in extra.items() if v}, runtime.TS_META: text})


def export_detector(detector: Any, fmt: str, dst: Path, meta: dict[str, Any]) -> Path:
    """The YOLO-World with its vocabulary (``txt_feats``) baked in, through ultralytics' ``Exporter``: fixed
    size and batch 1, raw outputs (NMS stays in the predictor, as for the PyTorch model).

    ultralytics names its output after the model's ``pt_path``, beside it: pointed into ``dst``'s folder for
    the call, so nothing is written next to the trained checkpoint."""
    from ultralytics.engine.exporter import Exporter

    from pipeline.device import torch_threads

    model = detector.model
    saved = vars(model).get("pt_path"), model.names
    args = {"onnx": {"dynamic": False, "simplify": False, "nms": False}, "torchscript": {"nms": False}}[fmt]
    try:
        model.pt_path, model.names = str(dst.with_suffix(".pt")), dict(enumerate(detector.names))
        with _quiet(), torch_threads():  # its select_device would leave the other exports one thread
            written = Exporter(overrides=dict(format=fmt, imgsz=detector.imgsz, batch=1, device="cpu",
                                              verbose=False, **args))(model)
    finally:
        model.pt_path, model.names = saved
        if saved[0] is None:
            vars(model).pop("pt_path", None)
    os.replace(written, dst)
    with _quiet():
        _add_meta(dst, {**meta, "names": list(detector.names), "imgsz": int(detector.imgsz)})
    return dst


def _on_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` itself when it is on the CPU, else a CPU copy (the model the command verifies against stays
    where it is)."""
    tensors = [*module.parameters(), *module.buffers()]
    return module if all(t.device.type == "cpu" for t in tensors) else copy.deepcopy(module).cpu()


def export_module(module: torch.nn.Module, example: tuple[torch.Tensor, ...], fmt: str, dst: Path,
                  inputs: list[str], outputs: list[str], dynamic: dict[str, dict[int, str]],
                  meta: dict[str, Any]) -> Path:
    """One of ``modules``' graphs: ``torch.onnx.export`` (the TorchScript-based exporter, opset 17) or a
    ``torch.jit.trace``, with the ``pipe`` record inside."""
    meta = {**meta, "inputs": inputs, "outputs": outputs}
    module = module.eval()
    # nn.MultiheadAttention's eval-mode fast path (one fused op, e.g. in torchvision's ViT) has no ONNX symbolic
    # and traces into an op TorchScript files then depend on: export the plain, numerically equal path
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _export(module, example, fmt, dst, inputs, outputs, dynamic, meta)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], fmt: str, dst: Path, inputs: list[str],
            outputs: list[str], dynamic: dict[str, dict[int, str]], meta: dict[str, Any]) -> Path:
    with _quiet(), torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(module, example, str(dst), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
            _add_meta(dst, meta)
        else:
            traced = torch.jit.trace(module, example, check_trace=False)
            traced.save(str(dst), _extra_files={runtime.TS_META: json.dumps(meta, sort_keys=True)})
    return dst


def export_segmenter(segmenter: Any, fmt: str, folder: ExportFiles, meta: dict[str, Any]) -> list[Path]:
    """SAM's encoder (any input h, w; its embedding rounded as the PyTorch segmenter rounds it) and decoder (any
    number of boxes, any original size)."""
    from pipeline.stages.sam.predictor import to_input_image

    sam = _on_cpu(segmenter.predictor.model)
    size = segmenter.img_size
    image = to_input_image(np.zeros((size, size * 3 // 4, 3), np.uint8), size)[None].float()
    rounded = bool(getattr(segmenter, "rounded", False))
    encoder = export_module(SamEncoder(sam, rounded), (image,), fmt, folder.part("sam_encoder", fmt), ["image"],
                            ["image_embeddings"], {"image": {2: "height", 3: "width"}},
                            {**meta, "img_size": size, "rounded": rounded})
    c, e = sam.prompt_encoder.embed_dim, sam.prompt_encoder.image_embedding_size[0]
    example = (torch.randn(1, c, e, e), torch.rand(3, 2, 2) * size, torch.tensor([BOX_LABELS] * 3),
               torch.zeros(1, 1, 4 * e, 4 * e), torch.zeros(1), torch.tensor([1500.0, 2250.0]))
    decoder = export_module(SamDecoder(sam), example, fmt,
                            folder.part("sam_decoder", fmt),
                            ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                             "orig_im_size"], ["masks", "iou_predictions"],
                            {"point_coords": {0: "boxes"}, "point_labels": {0: "boxes"}, "masks": {0: "boxes"},
                             "iou_predictions": {0: "boxes"}},
                            {**meta, "img_size": size, "mask_input_size": 4 * e})
    return [encoder, decoder]


def export_classifier(classifier: Any, fmt: str, dst: Path, meta: dict[str, Any]) -> Path:
    """The ensemble's mean softmax for any batch of normalised squares."""
    example = torch.zeros(2, 3, classifier.imgsz, classifier.imgsz)
    return export_module(ClassifierProbs(_on_cpu(classifier.model)), (example,), fmt, dst, ["images"], ["probs"],
                         {"images": {0: "batch"}, "probs": {0: "batch"}},
                         {**meta, "classes": list(classifier.classes), "imgsz": int(classifier.imgsz),
                          "attempt": classifier.attempt})


def export_task(task: str, model: Any, fmt: str, folder: ExportFiles, category: str) -> list[Path]:
    """Every file of ``task`` in ``fmt``, each recording what it came from."""
    from pipeline.fetch import file_digest

    meta = {"category": category, "task": task, "format": fmt, "source": str(model.file),
            "source_sha256": file_digest(model.file)}
    if task == "detector":
        return [export_detector(model, fmt, folder.part("detector", fmt), {**meta, "part": "detector"})]
    if task == "segmenter":
        return export_segmenter(model, fmt, folder, meta)
    return [export_classifier(model, fmt, folder.part("classifier", fmt), {**meta, "part": "classifier"})]


# --- what PyTorch says -------------------------------------------------------------------------------------

@dataclass
class Sample:
    """The verification images (test split), decoded, with their labels and true boxes (xyxy)."""

    names: list[str]
    images: list[np.ndarray]
    truth: list[np.ndarray]
    labels: list[str] = field(default_factory=list)


def _label(image: dict[str, Any], annotated: set[int]) -> str:
    """An image's MVTec class: the folder of its source (``test/<class>/000.png``, as ``pipe convert`` records
    it), else ``defective`` when it has annotations and ``good`` when it has none."""
    parts = Path(str(image.get("source") or "")).parts
    if len(parts) >= 2:
        return parts[-2]
    return "defective" if image["id"] in annotated else "good"


def pick(by_label: dict[str, list[Any]], limit: int) -> list[Any]:
    """Up to ``limit`` items taken round-robin over the labels, the defect classes (sorted) before ``good`` in
    each round: so a handful of images holds every defect class, and good ones once each class has one. Taking
    the first images in file order instead gave, for a category whose defects all sort after ``good``, only
    good images: nothing for the detector or SAM to be compared on."""
    order = sorted(by_label, key=lambda k: (k == "good", k))
    queues = [list(by_label[k]) for k in order]
    out: list[Any] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def sample_images(ws: Workspace, category: str, limit: int) -> Sample:
    """Up to ``limit`` test-split images, defective ones first across their classes (``pick``)."""
    from pipeline.coco import xywh_to_xyxy
    from pipeline.data.images import read_image

    path = ws.dataset.coco.annotations("test")
    if not path.is_file():
        raise ExportError(f"{path}: no test split to verify the export on; run `pipe convert {category}` first")
    coco = read_json(path)
    boxes: dict[int, list[list[float]]] = {}
    for ann in coco["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    by_label: dict[str, list[dict[str, Any]]] = {}
    for im in coco["images"]:
        by_label.setdefault(_label(im, set(boxes)), []).append(im)
    chosen = pick(by_label, limit)
    if not chosen:
        raise ExportError(f"{path}: the test split has no images to verify the export on; re-run "
                          f"`pipe convert {category}`")
    return Sample([im["file_name"] for im in chosen],
                  [read_image(ws.dataset.coco.images("test") / im["file_name"]) for im in chosen],
                  [xywh_to_xyxy(boxes.get(im["id"], [])).reshape(-1, 4) for im in chosen],
                  [_label(im, set(boxes)) for im in chosen])


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@dataclass
class Outputs:
    """What one backend gave on the sample, and how long it took per image (ms, by part)."""

    detections: list[list[dict[str, Any]]] | None = None
    prompts: list[np.ndarray] | None = None  # SAM's boxes per image (xyxy)
    embeddings: list[np.ndarray] | None = None
    masks: list[np.ndarray] | None = None
    probs: np.ndarray | None = None
    ms: dict[str, float] = field(default_factory=dict)


def run_models(models: Trained, sample: Sample, conf: float, iou: float, prompt_conf: float,
               prompts: list[np.ndarray] | None = None) -> Outputs:
    """Every model of ``models`` on the sample, each run on the first image once before it is timed (warm-up).

    SAM is prompted with ``prompts`` (the reference's, when verifying an export), else with this detector's
    boxes at ``prompt_conf`` (what ``pipe predict`` prompts with) and the true boxes, so that every image with
    a defect has masks to compare whatever the detector finds."""
    images, n = sample.images, len(sample.images)
    out = Outputs()
    if models.detector is not None:
        models.detector.detect(images[:1], conf, iou)
        out.detections, t = _timed(lambda: models.detector.detect(images, conf, iou))
        out.ms["detector"] = 1000 * t / n
    if models.segmenter is not None:
        out.prompts = prompts if prompts is not None else _prompts(out.detections, sample, prompt_conf)
        seg, encode, decode = models.segmenter, 0.0, 0.0
        seg.set_image(images[0])
        seg.segment(out.prompts[0])
        out.embeddings, out.masks = [], []
        for image, boxes in zip(images, out.prompts):
            _, t = _timed(lambda: seg.set_image(image))  # noqa: B023 - called at once
            encode += t
            (masks, _), t = _timed(lambda: seg.segment(boxes))  # noqa: B023
            decode += t
            out.masks.append(masks)
            out.embeddings.append(_embedding(seg))
        out.ms["sam_encoder"], out.ms["sam_decoder"] = 1000 * encode / n, 1000 * decode / n
    if models.classifier is not None:
        models.classifier.probs(images[:1])
        out.probs, t = _timed(lambda: models.classifier.probs(images))
        out.ms["classifier"] = 1000 * t / n
    return out


def _embedding(segmenter: Any) -> np.ndarray:
    """The current image's embedding, from either backend's segmenter."""
    if isinstance(segmenter, runtime.OnnxSegmenter):
        assert segmenter.embedding is not None
        return segmenter.embedding
    return segmenter.predictor.features.float().cpu().numpy()


def _prompts(detections: list[list[dict[str, Any]]] | None, sample: Sample, conf: float) -> list[np.ndarray]:
    """SAM's boxes per image: the detector's at ``conf`` and the true ones. When that leaves no box on any image
    (no defective image in the sample, no detection), each image's whole frame, so SAM is never left unchecked."""
    from pipeline.coco import xywh_to_xyxy

    detections = detections or [[] for _ in sample.images]
    prompts = [np.concatenate([xywh_to_xyxy([d["bbox"] for d in ds if d["score"] >= conf]).reshape(-1, 4), truth])
               for ds, truth in zip(detections, sample.truth)]
    if not any(len(p) for p in prompts):
        prompts = [np.array([[0, 0, im.shape[1], im.shape[0]]], np.float32) for im in sample.images]
    return prompts


# --- comparing ---------------------------------------------------------------------------------------------

def _found(dets: list[dict[str, Any]], other: list[dict[str, Any]], conf: float, tol: float) -> list[float]:
    """For each box of ``dets`` clearly above ``conf``, the best IoU with a box of its class in ``other`` that
    is not clearly below it (0 when there is none)."""
    from pipeline.coco import box_iou, xywh_to_xyxy

    mine = [d for d in dets if d["score"] >= conf + tol]
    theirs = [d for d in other if d["score"] >= conf - tol]
    if not mine:
        return []
    if not theirs:
        return [0.0] * len(mine)
    ious = box_iou(xywh_to_xyxy([d["bbox"] for d in mine]).reshape(-1, 4),
                   xywh_to_xyxy([d["bbox"] for d in theirs]).reshape(-1, 4))
    same = np.array([[a["class"] == b["class"] for b in theirs] for a in mine])
    return np.where(same, ious, 0.0).max(axis=1).tolist()


NOT_VERIFIED = "nothing was compared, so the export is not verified"


def check(worst: float | None, threshold: float, higher_is_better: bool, compared: int, what: str,
          nothing: str | None = None) -> dict[str, Any]:
    """One verification entry: the worst measured value against its threshold.

    A check that compared nothing verified nothing (``verified: false``) and fails, unless ``nothing`` says why
    there was genuinely nothing to compare: then it passes with that note."""
    if not compared or worst is None:
        return {"what": what, "worst": None, "threshold": threshold, "compared": 0, "verified": False,
                "passed": nothing is not None, "note": nothing or NOT_VERIFIED}
    passed = worst >= threshold if higher_is_better else worst <= threshold
    return {"what": what, "worst": round(float(worst), 8), "threshold": threshold, "compared": compared,
            "verified": True, "passed": bool(passed)}


def compare(task: str, ref: Outputs, got: Outputs, conf: float, tol: Tolerances) -> dict[str, dict[str, Any]]:
    """Each part's checks of ``task``: part -> check name -> entry."""
    if task == "detector":
        assert ref.detections is not None and got.detections is not None
        ious = [v for a, b in zip(ref.detections, got.detections)
                for v in _found(a, b, conf, tol.score) + _found(b, a, conf, tol.score)]
        # no IoU at all means neither side has a box clearly above the threshold (a box on one side only would
        # have scored 0): both agree that there is nothing here, the one empty result that is an answer
        agree = (f"no box scored {conf + tol.score:g} or more on any of the {len(ref.detections)} images in either "
                 f"runtime: both agree there is none, so no box was compared")
        return {"detector": {"boxes": check(min(ious, default=None), tol.box_iou, True, len(ious),
                                            "IoU of each box above the threshold with the other runtime's box "
                                            "of the same class (both ways)", nothing=agree)}}
    if task == "segmenter":
        from pipeline.coco import batch_iou

        assert ref.masks is not None and got.masks is not None and ref.embeddings and got.embeddings
        ious = [float(v) for a, b in zip(ref.masks, got.masks)
                for v in (batch_iou(a, b) if a.shape == b.shape else np.zeros(len(a)))]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref.embeddings, got.embeddings))
        masks = check(min(ious, default=None), tol.mask_iou, True, len(ious),
                      "IoU of each mask with the other runtime's for the same box (encoder and decoder together)")
        return {"sam_encoder": {"embedding": {"what": "max abs difference of the image embeddings (recorded)",
                                              "worst": round(diff, 8), "threshold": None,
                                              "compared": len(ref.embeddings), "passed": True},
                                "masks": masks},
                "sam_decoder": {"masks": masks}}
    assert ref.probs is not None and got.probs is not None
    diff = float(np.abs(ref.probs - got.probs).max()) if ref.probs.shape == got.probs.shape else float("inf")
    return {"classifier": {"probs": check(diff, tol.prob, False, int(ref.probs.size),
                                          "max abs difference of the class probabilities")}}


# --- the command -------------------------------------------------------------------------------------------

def load_task(task: str, paths: list[Path], trained: Any, device: str) -> Any:
    """The staged files of ``task`` through the runtime classes ``pipe predict --backend onnx`` uses."""
    if task == "detector":
        return runtime.OnnxDetector.open(paths[0], device, trained.max_det)
    if task == "segmenter":
        return runtime.OnnxSegmenter.open(paths[0], paths[1], device, trained.predictor.model.mask_threshold)
    return runtime.OnnxClassifier.open(paths[0], device)


def _file_entry(path: Path) -> dict[str, Any]:
    """The file's name (its folder is decided after the checks), digest and size."""
    from pipeline.fetch import file_digest

    return {"file": path.name, "sha256": file_digest(path), "size": path.stat().st_size}


def _previous(folder: ExportFiles, formats: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Report entries of other formats whose files are still in place, unchanged: one report for the folder."""
    from pipeline.fetch import file_digest

    try:
        parts = read_json(folder.report)["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    kept: dict[str, dict[str, Any]] = {}
    for part, by_format in parts.items():
        for fmt, entry in by_format.items():
            file = Path(entry.get("file", ""))
            unchanged = file.is_file() and file_digest(file) == entry.get("sha256")
            if fmt not in formats and entry.get("passed") and unchanged:
                kept.setdefault(part, {})[fmt] = entry
    return kept


def run_export(cfg: Config, ws: Workspace, formats: Sequence[str], device: str = "cpu", conf: float | None = None,
               images: int = 8, tolerances: Tolerances = Tolerances()) -> dict[str, Any]:
    """Export every trained part of ``cfg.category`` in each of ``formats``, verify it against PyTorch on
    ``images`` test-split images (``sample_images``), write ``export_report.json`` and return it; raise a one-line
    ``ExportError`` naming the report when a check fails (the files then go to ``rejected/``, not into place).

    ``conf``: the box threshold the detections are compared above (default: ``pipe predict``'s)."""
    offline.no_downloads()  # ultralytics' exporter checks requirements and assets: nothing is fetched at run time
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format {','.join(unknown) or '(none)'}: expected one or more of {', '.join(FORMATS)}")
    formats = list(dict.fromkeys(formats))
    conf = cfg.predict.box_conf(cfg) if conf is None else float(conf)
    iou = cfg.predict.nms_iou(cfg)
    trained = load_trained(ws, cfg, device, tasks=TASKS, mask_threshold=cfg.predict.mask_threshold)
    tasks = [t for t in TASKS if getattr(trained, t) is not None]
    sample = sample_images(ws, cfg.category, images)
    low = max(conf - tolerances.score, 0.0)  # both sides keep the boxes the comparison may look for
    log.info(f"export {cfg.category}: {', '.join(tasks)} as {', '.join(formats)}, verified on {len(sample.images)} "
             f"test images")
    if trained.segmenter is not None:  # the files are float32 graphs: compare with float32 PyTorch
        trained.segmenter.predictor.amp = False
    reference = run_models(trained, sample, low, iou, conf)

    folder = ws.export
    folder.folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder.folder / "staging")  # a killed run's staging folder
    stage = ExportFiles(folder.folder / f".staging.{os.getpid()}.partial")
    shutil.rmtree(stage.folder, ignore_errors=True)
    stage.folder.mkdir()
    try:
        parts: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            for task in tasks:
                for part, entry in export_and_verify(task, getattr(trained, task), fmt, stage, cfg.category, sample,
                                                     reference, conf, iou, tolerances, device).items():
                    parts.setdefault(part, {})[fmt] = entry
        failed = [f"{part}.{fmt} {name}" for part, by_format in parts.items() for fmt, entry in by_format.items()
                  for name, c in entry["checks"].items() if not c["passed"]]
        home = _publish(stage.folder, folder.folder, failed)
        for entry in (e for by_format in parts.values() for e in by_format.values()):
            entry["file"] = str(home / entry["file"])
        report = _report(cfg, ws, formats, tasks, sample, conf, iou, tolerances, parts, failed, device)
        write_json(folder.report, report)
    finally:
        shutil.rmtree(stage.folder, ignore_errors=True)
    if failed:
        raise ExportError(f"{folder.report}: verification failed ({'; '.join(failed)}); the files are in "
                          f"{home}, not in place; do not ship them")
    log.info(f"export {cfg.category}: every check passed; {folder.report}")
    return report


def export_and_verify(task: str, model: Any, fmt: str, stage: ExportFiles, category: str, sample: Sample,
                      reference: Outputs, conf: float, iou: float, tol: Tolerances,
                      device: str) -> dict[str, dict[str, Any]]:
    """Export ``task`` into the staging folder, run the files on the sample, and describe each part: file name,
    digest, size, checks, and milliseconds per image for PyTorch and for the file."""
    paths = export_task(task, model, fmt, stage, category)
    got = run_models(Trained(**{task: load_task(task, paths, model, device)}), sample,
                     max(conf - tol.score, 0.0), iou, conf, reference.prompts)
    return {part: {**_file_entry(stage.part(part, fmt)), "source": str(model.file), "checks": checks,
                   "passed": all(c["passed"] for c in checks.values()),
                   "ms_per_image": {"torch": _ms(reference, part), fmt: _ms(got, part)}}
            for part, checks in compare(task, reference, got, conf, tol).items()}


def _publish(stage: Path, folder: Path, failed: list[str]) -> Path:
    """Where the staged files end up: in place when every check passed, else in ``rejected/`` for inspection
    (never where ``pipe predict`` would load them)."""
    if failed:
        return replace_dir(stage, folder / "rejected")
    for path in sorted(stage.iterdir()):
        os.replace(path, folder / path.name)
    return folder


def _ms(outputs: Outputs, part: str) -> float | None:
    value = outputs.ms.get(part)
    return None if value is None else round(value, 3)


def _report(cfg: Config, ws: Workspace, formats: list[str], tasks: list[str], sample: Sample, conf: float,
            iou: float, tol: Tolerances, parts: dict[str, dict[str, Any]], failed: list[str],
            device: str) -> dict[str, Any]:
    merged = _previous(ws.export, formats)
    for part, by_format in parts.items():
        merged.setdefault(part, {}).update(by_format)
    return {"category": cfg.category, "formats": formats, "device": device, "runtime": _versions(),
            "images": {"split": "test", "count": len(sample.images), "files": sample.names,
                       "labels": dict(sorted(Counter(sample.labels).items()))},
            "thresholds": {"conf": conf, "nms_iou": iou, **asdict(tol)},
            "left_out": {t: _why_left_out(ws, cfg.category, t) for t in TASKS if t not in tasks},
            "parts": merged, "failed": failed, "passed": not failed}


def _why_left_out(ws: Workspace, category: str, task: str) -> str:
    trained = runtime.trained_file(ws, task)
    if task == "segmenter" and trained is not None and trained.is_file():
        return f"SAM is prompted with the detector's boxes, and there is none: run `pipe finetune yolo {category}`"
    return f"not trained: run `{TRAINED_BY[task]} {category}`"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import ultralytics

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "ultralytics": ultralytics.__version__}
