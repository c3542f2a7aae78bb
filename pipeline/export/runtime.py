"""The exported files run behind the interface of ``pipeline.predict.models``: ``pipe predict --backend onnx``.

Each class has exactly the methods of its PyTorch counterpart and converts images exactly as it does, so a
caller cannot tell them apart except by speed: the detector is the same ultralytics predictor given the file
(its ``AutoBackend`` runs ONNX Runtime, or TorchScript, and reads names and size from the file), SAM encodes
each image once and decodes all its boxes in one call, the classifier takes the same normalised squares.

Every file carries what it was exported from (``pipe`` metadata: category, part, source file and its sha256,
sizes, classes), so a file is refused when it belongs to another category or when its model has been
retrained since (a stale export would otherwise answer for a model that no longer exists).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.export.modules import BOX_LABELS
from pipeline.predict.models import Detector, ModelError, Trained, check_classes, classifier_input
from pipeline.workspace import EXPORT_SUFFIX, Workspace

log = logging.getLogger(__name__)

META_KEY = "pipe"  # ONNX: a metadata_props entry; TorchScript: the extra file pipe.json
TS_META = f"{META_KEY}.json"
PARTS = {"detector": ("detector",), "segmenter": ("sam_encoder", "sam_decoder"), "classifier": ("classifier",)}


# --- the files' own record ---------------------------------------------------------------------------------

def read_meta(path: Path) -> dict[str, Any]:
    """The ``pipe`` record inside an exported file (empty when there is none, e.g. a foreign file)."""
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            return json.loads(props.get(META_KEY, "{}"))
        with zipfile.ZipFile(path) as z:  # a TorchScript archive: <name>/extra/pipe.json
            found = [n for n in z.namelist() if n.endswith(f"/extra/{TS_META}")]
            return json.loads(z.read(found[0])) if found else {}
    except Exception as exc:  # noqa: BLE001 - OS, zip, JSON or onnx's own DecodeError: the same answer
        raise ModelError(f"{path}: not a readable export ({type(exc).__name__}); re-export it with `pipe export`")\
            from None


def cores() -> int:
    """The CPU cores this process may use (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def providers(device: str) -> list[Any]:
    """ONNX Runtime's CUDA provider for a CUDA device when this onnxruntime build has it, else the CPU."""
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Runner:
    """One exported graph (ONNX or TorchScript, by suffix): named float arrays in, arrays out."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.path, self.device = Path(path), device
        try:
            record = self._open()
            self.meta: dict[str, Any] = json.loads(record)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's, TorchScript's or JSON's: the same answer
            raise ModelError(f"{path}: not a readable export ({type(exc).__name__}); re-export it with "
                             f"`pipe export`") from None
        if self.path.suffix != ".onnx":  # a traced module's arguments are positional: their names are recorded
            self.inputs = list(self.meta.get("inputs", []))

    def _open(self) -> str:
        """Load the graph; return its ``pipe`` record (JSON)."""
        if self.path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = cores()
            # idle worker threads sleep instead of spinning: on a machine whose cores other work shares (an
            # inspection PC, a CI runner), spinning threads take turns with that work and slow every call
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
            self._session = ort.InferenceSession(str(self.path), options, providers=providers(self.device))
            self.inputs = [i.name for i in self._session.get_inputs()]
            return self._session.get_modelmeta().custom_metadata_map.get(META_KEY, "{}")
        extra = {TS_META: ""}
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file is what was asked for
            warnings.simplefilter("ignore", FutureWarning)
            self._module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        return extra[TS_META] or "{}"

    def __call__(self, **feeds: np.ndarray) -> list[np.ndarray]:
        if self.path.suffix == ".onnx":
            return self._session.run(None, {k: feeds[k] for k in self.inputs})
        with torch.no_grad():
            out = self._module(*[torch.from_numpy(np.ascontiguousarray(feeds[k])).to(self.device) for k in self.inputs])
        return [o.cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


# --- the tasks ---------------------------------------------------------------------------------------------

@dataclass
class OnnxDetector(Detector):
    """The exported YOLO-World (ONNX or TorchScript): ``Detector`` given the file instead of the module, so the
    same ultralytics predictor letterboxes, runs and applies NMS, and ``boxes_of`` writes the same dicts."""

    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, device: str = "cpu", max_det: int = 100) -> OnnxDetector:
        meta = read_meta(path)
        return cls(str(path), list(meta.get("names", [])), int(meta.get("imgsz", 0)), device, Path(path), max_det,
                   meta=meta)


@dataclass
class OnnxSegmenter:
    """SAM as two exported graphs: ``set_image`` runs the encoder once, ``segment`` decodes all boxes in one call."""

    encoder: Runner
    decoder: Runner
    mask_threshold: float = 0.0
    embedding: np.ndarray | None = None  # the current image's, (1, C, E, E)
    size: tuple[int, int] | None = None  # the current image's (H, W)

    @classmethod
    def open(cls, encoder: Path, decoder: Path, device: str = "cpu", mask_threshold: float = 0.0) -> OnnxSegmenter:
        return cls(Runner(encoder, device), Runner(decoder, device), float(mask_threshold))

    @property
    def file(self) -> Path:
        return self.decoder.path

    @property
    def img_size(self) -> int:
        return int(self.encoder.meta["img_size"])

    def set_image(self, image: np.ndarray) -> None:
        """A BGR (H, W, 3) or greyscale (H, W) image, as ``Segmenter.set_image``."""
        from pipeline.stages.sam.predictor import decoded_to_input

        x = decoded_to_input(image, self.img_size)[None].float().numpy()
        self.embedding, self.size = self.encoder(image=x)[0], (int(image.shape[0]), int(image.shape[1]))

    def segment(self, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (N, H, W) bool at the image's size and predicted IoUs (N,) for boxes in its pixels."""
        from pipeline.stages.sam.predictor import to_input_boxes

        if self.embedding is None or self.size is None:
            raise RuntimeError("set an image (set_image) before segment")
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return np.zeros((0, *self.size), bool), np.zeros((0,), np.float32)
        corners = to_input_boxes(boxes, self.size, self.img_size).reshape(-1, 2, 2).numpy()
        low = int(self.decoder.meta["mask_input_size"])
        logits, scores = self.decoder(
            image_embeddings=self.embedding, point_coords=corners,
            point_labels=np.tile(np.float32([BOX_LABELS]), (len(corners), 1)),
            mask_input=np.zeros((1, 1, low, low), np.float32), has_mask_input=np.zeros(1, np.float32),
            orig_im_size=np.float32(self.size))
        return logits[:, 0] > self.mask_threshold, scores[:, 0]


@dataclass
class OnnxClassifier:
    """The exported ensemble: the same normalised squares in, its mean softmax out."""

    runner: Runner
    classes: list[str]
    imgsz: int
    attempt: str

    @classmethod
    def open(cls, path: Path, device: str = "cpu") -> OnnxClassifier:
        runner = Runner(path, device)
        meta = runner.meta
        return cls(runner, list(meta.get("classes", [])), int(meta.get("imgsz", 0)), str(meta.get("attempt", "")))

    @property
    def file(self) -> Path:
        return self.runner.path

    def probs(self, images: list[np.ndarray]) -> np.ndarray:
        return self.runner(images=classifier_input(images, self.imgsz).numpy())[0]


# --- loading -----------------------------------------------------------------------------------------------

def _command(category: str, fmt: str) -> str:
    return f"`pipe export {category} --format {fmt}`"


def trained_file(ws: Workspace, task: str) -> Path | None:
    """Where the trained model of ``task`` is now, when there is one (what an export must still match)."""
    from pipeline.io import read_json

    if task == "detector":
        return ws.yolo.best
    if task == "segmenter":
        return ws.sam.decoder
    try:
        return ws.classify.best(str(read_json(ws.classify.metrics)["summary"]["best"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_meta(path: Path, meta: dict[str, Any], ws: Workspace, cfg: Config, task: str, fmt: str) -> None:
    """An export of this category, for its classes, of the model the workspace holds now (same sha256), or a
    one-line error.

    The class list is checked on the file's own record (the detector's names, the classifier's classes), as
    ``predict.models`` checks the trained files: on the machine the files are shipped to there is usually no
    ``runs/`` to compare digests with, and a file whose class ids mean other classes would label every box
    wrongly without a word."""
    from pipeline.fetch import file_digest

    if not meta:
        raise ModelError(f"{path}: not written by `pipe export` (no {META_KEY} record); re-export with "
                         f"{_command(cfg.category, fmt)}")
    if meta.get("category") != cfg.category:
        raise ModelError(f"{path}: exported for category {meta.get('category')!r}, not {cfg.category!r}; run "
                         f"{_command(cfg.category, fmt)}")
    redo = f"re-export with {_command(cfg.category, fmt)}"
    if task == "detector":
        check_classes("detector", path, [str(n) for n in meta.get("names") or []], cfg.category, redo)
    elif task == "classifier":
        check_classes("classifier", path, [str(c) for c in meta.get("classes") or []], cfg.category, redo)
    current = trained_file(ws, task)
    if current is not None and current.is_file() and file_digest(current) != meta.get("source_sha256"):
        raise ModelError(f"{path}: exported from an older {task} than {current} (retrained since); re-export with "
                         f"{_command(cfg.category, fmt)}")


def load_exported(ws: Workspace, cfg: Config, files: dict[str, Path | None] | None = None, fmt: str = "onnx",
                  device: str = "cpu", mask_threshold: float = 0.0,
                  tasks: tuple[str, ...] = ("detector", "segmenter", "classifier")) -> Trained:
    """The exported models of a category as ``Trained`` (anomaly stays None: the caller adds PyTorch's).

    ``files`` may name a part's file (keys: detector, sam_encoder, sam_decoder, classifier); the others are in
    ``ws.export``. A task neither trained nor exported is left out with a note; one trained but not exported,
    or exported from another model, is a one-line error naming ``pipe export``; so is having nothing at all.
    SAM needs the detector's boxes: without the detector it is left out, as ``load_trained`` does."""
    files = {k: Path(v) for k, v in (files or {}).items() if v is not None}
    paths = {part: files.get(part, ws.export.part(part, fmt)) for task in tasks for part in PARTS[task]}
    out = Trained()
    for task in tasks:
        missing = [paths[p] for p in PARTS[task] if not paths[p].is_file()]
        if missing:
            trained = trained_file(ws, task)
            if any(p in files for p in PARTS[task]) or (trained is not None and trained.is_file()):
                raise ModelError(f"{missing[0]}: no exported {task} ({EXPORT_SUFFIX[fmt]}); run "
                                 f"{_command(cfg.category, fmt)} first")
            log.info(f"left out: no trained or exported {task} ({missing[0]})")
            continue
        if task == "detector":
            model: Any = OnnxDetector.open(paths["detector"], device, cfg.predict.max_det)
            records = [(model.file, model.meta)]
        elif task == "segmenter":
            model = OnnxSegmenter.open(paths["sam_encoder"], paths["sam_decoder"], device, mask_threshold)
            records = [(r.path, r.meta) for r in (model.encoder, model.decoder)]
        else:
            model = OnnxClassifier.open(paths["classifier"], device)
            records = [(model.file, model.runner.meta)]
        for path, meta in records:
            check_meta(path, meta, ws, cfg, task, fmt)
        setattr(out, task, model)
    if not out.files():
        raise ModelError(f"{ws.export.folder}: no exported models for {cfg.category}; run "
                         f"{_command(cfg.category, fmt)} first")
    if out.segmenter is not None and out.detector is None:
        log.info("left out: segmenter (SAM is prompted with the detector's boxes, and there is no detector)")
        out.segmenter = None
    return out
