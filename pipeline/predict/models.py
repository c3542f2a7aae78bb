"""The trained models of a category, loaded as the stages left them, behind one small interface per task.

``pipe predict`` and ``pipe export`` both start here. Each model comes from its stage's folder in the
workspace (or an explicit file) together with the run record beside it (``metrics.json``), which says what
it was trained for: a model whose category or class list is not this command's is refused with one line,
and a stage that has not run is one line naming the command that trains it (``NotTrained``). The settings a
model runs with (the detector's image size, SAM's autocast) are read from that record too, not from the current
config, so editing the config after training cannot quietly change what a model predicts.

Every task has the same methods whatever runs it (PyTorch here; ONNX Runtime in ``pipeline.export.runtime``):

- detector: ``detect(images, conf, iou) -> [[{"bbox": xywh, "class", "score"}]]``, the very dicts the YOLO
  stage's evaluation writes (``yolo.evaluate.boxes_of``), so SAM is prompted with identical numbers;
- segmenter: ``set_image(image)`` once per image, then ``segment(boxes_xyxy) -> (masks, scores)`` per box set;
- classifier: ``probs(images) -> (N, C)``;
- anomaly: ``score(images) -> (scores (N,), maps)``, each map at its image's own size.

Images are decoded arrays in OpenCV's convention (BGR (H, W, 3) or greyscale (H, W) uint8, as
``data.images.read_image`` gives them); each model converts them exactly as its stage did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data.categories import get_category
from pipeline.errors import PipeError
from pipeline.io import read_json
from pipeline.workspace import AnomalyFiles, ClassifyFiles, SamFiles, Workspace, YoloFiles

log = logging.getLogger(__name__)

TASKS = ("detector", "segmenter", "classifier", "anomaly")
TRAINED_BY = {"detector": "pipe finetune yolo", "segmenter": "pipe finetune sam", "classifier": "pipe classify",
              "anomaly": "pipe anomaly"}
STAGE_OF = {"detector": "yolo", "segmenter": "sam", "classifier": "classify", "anomaly": "anomaly"}


class ModelError(PipeError):
    """A trained model is missing, changed since its run, or made for another category or class list."""


class NotTrained(ModelError):
    """The stage that trains a model has not run (no file where it writes it): ``load_trained`` may leave such a
    task out, while any other ``ModelError`` (a damaged or foreign file) always stops the command."""


def _metrics_file(task: str, file: Path) -> Path:
    """The run record of the stage that wrote ``file`` (a classifier sits in ``classify/<attempt>/best.pt``, one
    folder below its stage's record)."""
    file = Path(file)
    if task == "classifier":
        return ClassifyFiles(file.parent.parent).metrics
    return {"detector": YoloFiles, "segmenter": SamFiles, "anomaly": AnomalyFiles}[task](file.parent).metrics


def _record(task: str, file: Path, category: str) -> dict[str, Any]:
    """The stage's ``metrics.json`` beside ``file``: what the model was trained for, checked against this run."""
    metrics = _metrics_file(task, file)
    if not metrics.is_file():
        raise ModelError(f"{file}: no {metrics.name} beside it, so what it was trained for is unknown; use the "
                         f"folder `{TRAINED_BY[task]} {category}` wrote")
    try:
        record = read_json(metrics)
        trained_for = record.get("category")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{metrics}: not a readable run record ({type(exc).__name__}); re-run "
                         f"`{TRAINED_BY[task]} {category}`") from None
    if trained_for != category:
        raise ModelError(f"{file}: trained for category {trained_for!r}, not {category!r}; run "
                         f"`{TRAINED_BY[task]} {category}` or pass that category's model")
    return record


def _recorded(task: str, file: Path, record: dict[str, Any], *keys: str) -> Any:
    """``record["config"][keys...]``: a setting the model's run trained and evaluated it with."""
    value: Any = record.get("config")
    try:
        for key in keys:
            value = value[key]
    except (KeyError, TypeError):
        redo = f"{TRAINED_BY[task]} {record.get('category')}"
        raise ModelError(f"{_metrics_file(task, file)}: its run did not record config.{'.'.join(keys)}, which "
                         f"{file} must run with; retrain with `{redo}`") from None
    return value


def _missing(task: str, file: Path, category: str) -> NotTrained:
    return NotTrained(f"{file}: no trained {task} ({STAGE_OF[task]} stage has not run); run "
                      f"`{TRAINED_BY[task]} {category}` first")


def check_classes(task: str, file: Path, have: list[str], category: str, redo: str | None = None) -> None:
    """Refuse in one line a model whose classes are not the category's: the detector's must be its defect
    classes in id order; a classifier's a subset of its classes (a split may lack a class). ``redo``: the
    command that makes a matching file (default: the one that trains ``task``)."""
    cat = get_category(category)
    if task == "detector":
        ok, want = have == list(cat.defects), list(cat.defects)
    else:
        ok, want = bool(have) and set(have) <= set(cat.classes), list(cat.classes)
    if not ok:
        raise ModelError(f"{file}: trained for classes {have}, but {category} has {want}; "
                         f"{redo or f'retrain with `{TRAINED_BY[task]} {category}`'}")


# --- detector --------------------------------------------------------------------------------------------

@dataclass
class Detector:
    """The fine-tuned YOLO-World with its class vocabulary set (``names``: the defect classes, in id order)."""

    model: torch.nn.Module
    names: list[str]
    imgsz: int
    device: str
    file: Path
    max_det: int = 100
    _predictor: Any = field(default=None, repr=False)

    def detect(self, images: list[np.ndarray], conf: float, iou: float) -> list[list[dict[str, Any]]]:
        """Boxes per image, through ultralytics' own predictor as the stage's evaluation, the whole batch at once.

        ultralytics (8.4) letterboxes every image to the square ``imgsz`` (minimal rectangular padding only with
        ``rect=True``, which neither the evaluation nor this predictor sets), each image on its own, so a batch
        of mixed shapes gives every image the boxes the evaluation's one-image batches gave it."""
        from pipeline.device import torch_threads
        from pipeline.stages.yolo.evaluate import boxes_of, detection_predictor
        from pipeline.viz import to_bgr

        if not images:
            return []
        if self._predictor is None:
            self._predictor = detection_predictor(self.imgsz, conf, iou, self.device, self.max_det)
        self._predictor.args.conf, self._predictor.args.iou = conf, iou
        # greyscale as three equal channels, as ultralytics' own imread gives it
        with torch_threads():  # its select_device would leave the classifier, SAM and PatchCore one thread
            results = self._predictor(source=[to_bgr(im) for im in images], model=self.model, stream=False)
        return [boxes_of(r) for r in results]


def load_detector(ws: Workspace, cfg: Config, device: str, file: Path | None = None) -> Detector:
    from pipeline.stages.yolo import model as world
    from pipeline.stages.yolo.trainer import set_prompts

    path = Path(file) if file else ws.yolo.best
    if not path.is_file():
        raise _missing("detector", path, cfg.category)
    record = _record("detector", path, cfg.category)
    imgsz = int(_recorded("detector", path, record, "yolo", "imgsz"))  # the size it was trained and evaluated at
    try:
        model = world.load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same one-line answer
        raise ModelError(f"{path}: not a readable YOLO-World checkpoint ({type(exc).__name__}); retrain with "
                         f"`pipe finetune yolo {cfg.category}`") from None
    # the class vocabulary as the stage's evaluation sets it: its class embeddings, saved beside its data.yaml
    vocabulary = YoloFiles(path.parent).class_embeddings
    if not vocabulary.is_file():
        raise ModelError(f"{path}: no class embeddings at {vocabulary} to name its classes; use the folder "
                         f"`pipe finetune yolo {cfg.category}` wrote")
    try:
        saved = torch.load(vocabulary, map_location="cpu", weights_only=True)
        names = [str(n) for n in saved["names"]]
        feats = saved["feats"]
    except Exception as exc:  # noqa: BLE001 - unpickling, a missing key, a foreign object: one line
        raise ModelError(f"{vocabulary}: not the class embeddings `pipe finetune yolo` writes "
                         f"({type(exc).__name__}); retrain with `pipe finetune yolo {cfg.category}`") from None
    check_classes("detector", path, names, cfg.category)
    try:
        set_prompts(model, feats, names)
    except Exception as exc:  # noqa: BLE001 - embeddings of another size or model
        raise ModelError(f"{vocabulary}: class embeddings that do not fit {path} ({type(exc).__name__}); retrain "
                         f"with `pipe finetune yolo {cfg.category}`") from None
    return Detector(model.to(device), names, imgsz, device, path, cfg.predict.max_det)


# --- segmenter -------------------------------------------------------------------------------------------

@dataclass
class Segmenter:
    """SAM with the fine-tuned decoder: the stage's ``Predictor``, embedding each image once for all its boxes."""

    predictor: Any  # pipeline.stages.sam.predictor.Predictor
    file: Path
    rounded: bool = False  # embeddings rounded as the stage's cache stores them (``sam.cache``)

    def set_image(self, image: np.ndarray) -> None:
        """Encode once for every box of the image; greyscale (H, W) is replicated, as the stage's data does."""
        from pipeline.stages.sam.cache import as_stored
        from pipeline.stages.sam.predictor import decoded_to_input

        embedding = self.predictor.embed(decoded_to_input(image, self.predictor.img_size))
        self.predictor.set_embedding(as_stored(embedding) if self.rounded else embedding, image.shape[:2])

    def segment(self, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from pipeline.stages.sam.evaluate import segment

        return segment(self.predictor, boxes_xyxy)

    @property
    def img_size(self) -> int:
        return self.predictor.img_size


def sam_base(record: dict[str, Any], cfg: Config) -> tuple[Any, int]:
    """The SAM the decoder was trained on: the architecture and base weights its run recorded, verified, and
    that run's seed (a random-init encoder is rebuilt from it)."""
    from pipeline.stages.sam.model import from_scratch, locate

    arch = record["config"]["sam"]["model"]
    seed = int(record["weights"].get("seed", record["config"].get("seed", 0)))
    if not record["weights"]["pretrained"]:  # trained on a seeded random encoder, even where a checkpoint exists
        return from_scratch(arch, seed), seed
    source = locate(arch, Path(cfg.paths.weights), cfg.allow_random_init, seed)
    want = record["weights"].get("sha256")
    if want and source.provenance.get("sha256") != want:
        raise ModelError(f"{source.checkpoint or arch}: not the SAM base weights the decoder was trained on "
                         f"(sha256 {want[:12]}…); put that file in {cfg.paths.weights}/")
    return source, seed


def load_segmenter(ws: Workspace, cfg: Config, device: str, file: Path | None = None,
                   mask_threshold: float = 0.0) -> Segmenter:
    from pipeline.fetch import file_digest
    from pipeline.stages.sam.model import build
    from pipeline.stages.sam.predictor import Predictor

    path = Path(file) if file else ws.sam.decoder
    if not path.is_file():
        raise _missing("segmenter", path, cfg.category)
    record = _record("segmenter", path, cfg.category)
    recorded = (record.get("decoder_weights") or {}).get("sha256")
    if recorded and file_digest(path) != recorded:
        raise ModelError(f"{path}: changed since its run wrote it (sha256 differs from "
                         f"{_metrics_file('segmenter', path)}); retrain with `pipe finetune sam {cfg.category}`")
    source, seed = sam_base(record, cfg)
    sam = build(source, seed)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state, strict=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a decoder for {source.arch} ({type(exc).__name__}); retrain with "
                         f"`pipe finetune sam {cfg.category}`") from None
    sam.mask_threshold = float(mask_threshold)
    # as the stage's evaluation ran: its autocast, and embeddings read through its cache whenever ``sam.cache``
    # was on (rounded to float16)
    amp = bool(_recorded("segmenter", path, record, "sam", "amp"))
    rounded = bool(_recorded("segmenter", path, record, "sam").get("cache"))
    return Segmenter(Predictor(sam.to(device).eval(), amp=amp), path, rounded=rounded)


# --- classifier ------------------------------------------------------------------------------------------

@dataclass
class ImageClassifier:
    """The best classification attempt (by the stage's own ranking): mean-of-members class probabilities."""

    model: torch.nn.Module
    classes: list[str]
    imgsz: int
    attempt: str
    device: str
    file: Path

    @torch.no_grad()
    def probs(self, images: list[np.ndarray]) -> np.ndarray:
        from pipeline.stages.classify.models import Classifier

        return Classifier.probs(self.model(classifier_input(images, self.imgsz).to(self.device))).cpu().numpy()


def classifier_input(images: list[np.ndarray], imgsz: int) -> torch.Tensor:
    """(N, 3, imgsz, imgsz) float: each decoded image area-resized to a square and normalised as the stage's
    ``eval`` transform. Both backends' classifiers take exactly this, so they differ only in what runs it."""
    from pipeline.data.images import square
    from pipeline.stages.classify.data import transform

    x = torch.stack([torch.from_numpy(np.ascontiguousarray(square(im, imgsz).transpose(2, 0, 1))) for im in images])
    return transform("eval", imgsz)(x)


def best_attempt(ws: Workspace, category: str) -> str:
    """The attempt the classification stage ranked first (its ``summary.best``)."""
    metrics = ws.classify.metrics
    if not metrics.is_file():
        raise _missing("classifier", metrics, category)
    return str(read_json(metrics)["summary"]["best"])


def load_classifier(ws: Workspace, cfg: Config, device: str, file: Path | None = None) -> ImageClassifier:
    from pipeline.stages.classify.attempts import Attempt
    from pipeline.stages.classify.models import build
    from pipeline.weights import Resolved, get_spec

    path = Path(file) if file else ws.classify.best(best_attempt(ws, cfg.category))
    if not path.is_file():
        raise _missing("classifier", path, cfg.category)
    _record("classifier", path, cfg.category)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        attempt = Attempt.model_validate(ckpt["attempt"])
        classes = [str(c) for c in ckpt["classes"]]
        state = ckpt["state_dict"]
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a classifier checkpoint written by `pipe classify` ({type(exc).__name__}); "
                         f"retrain with `pipe classify {cfg.category}`") from None
    check_classes("classifier", path, classes, cfg.category)
    # the state dict holds every weight: the backbones are built empty, never looked up or downloaded
    empty = {b: Resolved(get_spec(b), None, "random-init", None) for b in attempt.backbones}
    try:
        model = build(attempt, len(classes), empty)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - weights of another architecture or class count
        raise ModelError(f"{path}: its weights do not fit attempt {attempt.id}'s model ({type(exc).__name__}); "
                         f"retrain with `pipe classify {cfg.category}`") from None
    return ImageClassifier(model.to(device).eval(), classes, attempt.imgsz, attempt.id, device, path)


# --- anomaly ---------------------------------------------------------------------------------------------

@dataclass
class AnomalyModel:
    """The fitted PatchCore and the thresholds its run fitted on non-test images (score and map)."""

    model: torch.nn.Module
    imgsz: int
    image_threshold: float
    pixel_threshold: float
    device: str
    file: Path

    @torch.no_grad()
    def score(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image scores and anomaly maps (float32), each map stretched back over its image's own pixels by the
        stage's ``unsquare``, so a map here is the map the stage thresholded."""
        from pipeline.data.images import square, unsquare

        x = torch.stack([torch.from_numpy(square(im, self.imgsz)).permute(2, 0, 1) for im in images])
        scores, maps = self.model.score(x.to(self.device))
        maps_np = maps.float().cpu().numpy()
        return scores.float().cpu().numpy(), [unsquare(m, im.shape[0], im.shape[1]) for m, im in zip(maps_np, images)]

    def region(self, anomaly_map: np.ndarray) -> np.ndarray:
        """(H, W) bool: the pixels at or above the pixel threshold, compared in float64 as the stage compares
        (``anomaly.run.full_size_scores``). A float32 map against the Python float would compare in float32
        (NEP 50), flagging pixels just below the threshold that the stage did not."""
        return np.asarray(anomaly_map).astype(np.float64) >= self.pixel_threshold


def load_anomaly(ws: Workspace, cfg: Config, device: str, file: Path | None = None) -> AnomalyModel:
    from pipeline.stages.anomaly.model import FeatureExtractor, PatchCore

    path = Path(file) if file else ws.anomaly.model
    if not path.is_file():
        raise _missing("anomaly", path, cfg.category)
    record = _record("anomaly", path, cfg.category)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        a = ckpt["config"]
        model = PatchCore(FeatureExtractor(a["backbone"], a["layers"], None, 0), a["target_dim"],
                          a["coreset_ratio"], a["projection_dim"], a["num_neighbors"], a["sigma"])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a PatchCore written by `pipe anomaly` ({type(exc).__name__}); refit with "
                         f"`pipe anomaly {cfg.category}`") from None
    t = record["thresholds"]
    return AnomalyModel(model.to(device).eval(), int(a["imgsz"]), float(t["image"]), float(t["pixel"]), device, path)


# --- all of them -----------------------------------------------------------------------------------------

@dataclass
class Trained:
    """The models one command uses; a task left out (or not trained, when optional) is None."""

    detector: Any = None
    segmenter: Any = None
    classifier: Any = None
    anomaly: Any = None

    def files(self) -> dict[str, str]:
        return {t: str(m.file) for t in TASKS if (m := getattr(self, t)) is not None}


def load_trained(ws: Workspace, cfg: Config, device: str, files: dict[str, Path | None] | None = None,
                 tasks: tuple[str, ...] = TASKS, mask_threshold: float = 0.0) -> Trained:
    """Every model in ``tasks``. One the user named (``files``) must load; one found by default may be absent
    when another task is present (e.g. no anomaly stage yet), and is then left out with a note. With none at
    all, the error names the command that trains the detector."""
    files = files or {}
    loaders = {"detector": load_detector, "classifier": load_classifier, "anomaly": load_anomaly}
    out = Trained()
    skipped: list[ModelError] = []
    for task in tasks:
        try:
            if task == "segmenter":
                model = load_segmenter(ws, cfg, device, files.get(task), mask_threshold)
            else:
                model = loaders[task](ws, cfg, device, files.get(task))
        except NotTrained as exc:
            if files.get(task):
                raise
            skipped.append(exc)
            continue
        setattr(out, task, model)
    if not out.files():
        raise skipped[0]
    if out.segmenter is not None and out.detector is None:
        if files.get("segmenter"):
            raise ModelError(f"{ws.yolo.best}: SAM is prompted with the detector's boxes, and there is none; run "
                             f"`pipe finetune yolo {cfg.category}` first")
        out.segmenter = None  # nothing to prompt it with; the detector's absence is noted below
    for exc in skipped:
        log.info(f"left out: {exc}")
    return out
