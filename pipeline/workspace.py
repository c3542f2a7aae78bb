"""Every path of a category's run, derived in one place.

A run of pipe on one category touches three trees: the MVTec AD category it reads (real, or the
synthetic stand-in), the converted dataset (``datasets/<category>``: YOLO boxes, YOLO polygons, COCO and
the shared ``splits.json``), and the run folder (``runs/<category>``: one folder per stage, the logs, the
report). The CLI, the stages, the report and the classifier's data all ask a :class:`Workspace` where
things are, so a stage written with ``--out`` elsewhere is found again: each stage that finishes records
its folder in ``runs/<category>/workspace.json``, and the report and later stages read that record.

The names pipe keeps beside an output (its stamp, marker, lock and staging folder) are defined here too,
so ``outputs`` and ``uptodate`` share them. Importing this module costs nothing: no NumPy, no torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipeError

if TYPE_CHECKING:
    from pipeline.config import Config

SPLITS = ("train", "val", "test")
INDEX = "workspace.json"  # in runs/<category>/: the folder each stage last finished in
STAMP = ".pipe-stamp.json"  # a stage's up-to-date key and output digest (``uptodate``)
MARKER = ".pipe-output.json"  # "pipe made this folder, for this command" (``outputs``)


def stamp_file(folder: Path) -> Path:
    return Path(folder) / STAMP


def marker_file(folder: Path) -> Path:
    return Path(folder) / MARKER


def lock_file(folder: Path) -> Path:
    """Beside the output, not in it: the output may not exist yet, or be replaced while the lock is held."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock")


def staging_folder(folder: Path) -> Path:
    """Where a training stage runs until it is complete (then swapped into ``folder``); ``--resume`` continues it."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.run")


def flat_name(rel: str) -> str:
    """An MVTec image's name in a converted dataset: ``test/broken_large/000.png`` -> ``test_broken_large_000.png``
    (unique within a category)."""
    return rel.replace("/", "_")


@dataclass(frozen=True)
class YoloFormat:
    """``yolo-det`` or ``yolo-seg``: ``images/<split>``, ``labels/<split>``, ``data.yaml``."""

    root: Path

    @property
    def data_yaml(self) -> Path:
        return self.root / "data.yaml"

    @property
    def images_root(self) -> Path:
        return self.root / "images"

    @property
    def labels_root(self) -> Path:
        return self.root / "labels"

    def images(self, split: str) -> Path:
        return self.images_root / split

    def labels(self, split: str) -> Path:
        return self.labels_root / split


@dataclass(frozen=True)
class CocoFormat:
    """``coco``: ``images/<split>/<file_name>`` and ``annotations/instances_<split>.json``."""

    root: Path

    def images(self, split: str) -> Path:
        return self.root / "images" / split

    def image(self, split: str, rel: str) -> Path:
        """The converted copy of the MVTec image ``rel`` (e.g. ``test/crack/000.png``) in ``split``."""
        return self.images(split) / flat_name(rel)

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"


@dataclass(frozen=True)
class Dataset:
    """A converted dataset: what ``pipe convert`` writes and every training stage reads."""

    root: Path

    @classmethod
    def of(cls, dataset: Dataset | str | Path) -> Dataset:
        """A dataset from its folder (stages accept either, so a test or a script can pass a plain path)."""
        return dataset if isinstance(dataset, Dataset) else cls(Path(dataset))

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def report(self) -> Path:
        return self.root / "convert_report.json"

    @property
    def yolo_det(self) -> YoloFormat:
        return YoloFormat(self.root / "yolo-det")

    @property
    def yolo_seg(self) -> YoloFormat:
        return YoloFormat(self.root / "yolo-seg")

    @property
    def coco(self) -> CocoFormat:
        return CocoFormat(self.root / "coco")

    @property
    def preview(self) -> Path:
        return self.root / "preview"

    def recorded_source(self) -> Path | None:
        """The category folder this dataset was converted from, as ``convert_report.json`` records it."""
        try:
            return Path(json.loads(self.report.read_text(encoding="utf-8"))["data"]["root"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def identity(self) -> list[Path]:
        """What a training stage's up-to-date check reads of the dataset (its splits and labels, by content)."""
        return [self.splits, self.report]


@dataclass(frozen=True)
class StatsFiles:
    folder: Path

    @property
    def card_json(self) -> Path:
        return self.folder / "card.json"

    @property
    def card_md(self) -> Path:
        return self.folder / "card.md"


@dataclass(frozen=True)
class _TrainedFiles:
    """What every training stage's folder holds: its metrics, its zero-shot baseline and its overlays."""

    folder: Path

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def zero_shot(self) -> Path:
        return self.folder / "zero_shot.json"

    @property
    def overlays(self) -> Path:
        return self.folder / "overlays"


@dataclass(frozen=True)
class YoloFiles(_TrainedFiles):
    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def detections(self, tag: str = "") -> Path:
        """COCO detections on the test split (``tag`` names a variant, e.g. ``_zero_shot``)."""
        return self.folder / f"detections_test{tag}.json"

    @property
    def data(self) -> Path:
        """The ultralytics data files prepared from the converted dataset (image lists, ``data.yaml``)."""
        return self.folder / "data"

    @property
    def data_yaml(self) -> Path:
        return self.data / "data.yaml"

    def image_list(self, split: str) -> Path:
        """The list of ``split``'s image paths that ``data.yaml`` names (relative to it)."""
        return self.data / f"{split}.txt"

    @property
    def class_embeddings(self) -> Path:
        """The class prompts' text embeddings, beside ``data.yaml`` where the trainer finds them."""
        return self.data / "class_embeddings.pt"

    @property
    def train(self) -> Path:
        """ultralytics' own run folder (``weights/last.pt``, ``results.csv``)."""
        return self.folder / "train"

    @property
    def last(self) -> Path:
        return self.train / "weights" / "last.pt"

    @property
    def results_csv(self) -> Path:
        return self.train / "results.csv"


@dataclass(frozen=True)
class SamFiles(_TrainedFiles):
    @property
    def decoder(self) -> Path:
        return self.folder / "decoder.pt"

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def masks(self, prompts: str) -> Path:
        """The fine-tuned decoder's test-split masks as COCO results, for ``prompts`` ``gt_boxes`` or ``detector``."""
        return self.folder / f"masks_test_{prompts}.json"


@dataclass(frozen=True)
class ClassifyFiles(_TrainedFiles):
    @property
    def attempts_md(self) -> Path:
        return self.folder / "attempts.md"

    @property
    def fold_runs(self) -> Path:
        return self.folder / "runs"

    def fold_record(self, attempt: str, fold: str) -> Path:
        return self.fold_runs / attempt / f"{fold}.json"

    def best(self, attempt: str) -> Path:
        return self.folder / attempt / "best.pt"

    def confusion(self, attempt: str, cv: bool = False) -> Path:
        return self.folder / "confusion" / f"{attempt}{'-cv' if cv else ''}.png"


@dataclass(frozen=True)
class AnomalyFiles(_TrainedFiles):
    @property
    def model(self) -> Path:
        """The fitted PatchCore: its memory bank and settings (``torch.load``)."""
        return self.folder / "patchcore.pt"

    @property
    def test_maps(self) -> Path:
        """The shared split's test anomaly maps at the stage's ``imgsz`` (``np.load``: ``rels``, ``maps`` float16),
        for the report's heat maps."""
        return self.folder / "maps_test.npz"


@dataclass(frozen=True)
class PredictFiles:
    """One ``pipe predict`` run (``runs/<category>/predict/<name>``): what it found in each image."""

    folder: Path

    @property
    def predictions(self) -> Path:
        """One JSON line per image: boxes, masks (COCO RLE), label and probabilities, anomaly score, timings."""
        return self.folder / "predictions.jsonl"

    @property
    def coco_results(self) -> Path:
        """Detections and their masks as COCO results (what ``COCO.loadRes`` reads)."""
        return self.folder / "coco_results.json"

    @property
    def coco_images(self) -> Path:
        """The image ids and categories the results use: the ``images`` and ``categories`` of a COCO file."""
        return self.folder / "coco_images.json"

    @property
    def overlays(self) -> Path:
        return self.folder / "overlays"

    @property
    def masks(self) -> Path:
        """One binary PNG per image (0/255, ``<name>_mask.png``), as MVTec's ground truth is stored."""
        return self.folder / "masks"

    @property
    def maps(self) -> Path:
        """One anomaly map per image (``<name>.npy``, float16 at the image's size), with ``--save-maps``."""
        return self.folder / "maps"

    @property
    def summary(self) -> Path:
        """The run's settings, timings and failures, and every file it wrote (``written``): what a later run
        given this folder may replace."""
        return self.folder / "summary.json"


EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript"}


@dataclass(frozen=True)
class ExportFiles:
    """``pipe export`` (``runs/<category>/export``): each model part per format, and the verification report."""

    folder: Path

    def part(self, name: str, fmt: str) -> Path:
        """``name``: detector, sam_encoder, sam_decoder or classifier; ``fmt``: onnx or torchscript."""
        return self.folder / f"{name}{EXPORT_SUFFIX[fmt]}"

    @property
    def report(self) -> Path:
        return self.folder / "export_report.json"


@dataclass(frozen=True)
class ReportFiles:
    folder: Path

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"

    @property
    def html(self) -> Path:
        return self.folder / "report.html"

    @property
    def summary(self) -> Path:
        return self.folder / "summary.json"

    @property
    def figures(self) -> Path:
        return self.folder / "figures"

    @property
    def pr_curve(self) -> Path:
        return self.figures / "pr_curve.png"

    def curves(self, stage: str) -> Path:
        """A training stage's curves (loss and val metric per epoch)."""
        return self.figures / f"curves_{stage}.png"


@dataclass(frozen=True)
class AnomalyTableFiles:
    """``pipe anomaly-all``'s table over every category (beside the categories' run folders)."""

    folder: Path

    @property
    def json(self) -> Path:
        return self.folder / "anomaly-all.json"

    @property
    def markdown(self) -> Path:
        return self.folder / "anomaly-all.md"


@dataclass(frozen=True)
class Workspace:
    """One category's run: where its data is read from and where every stage writes.

    ``folders`` are this command's explicit choices (``--out``, ``--dataset``); a stage without one is
    found where it last finished with ``--out`` (``workspace.json``, read once per command so every lookup
    of one command agrees), else in its default place.
    """

    category: str
    runs_root: Path
    datasets_root: Path
    weights: Path
    data_root: Path
    synthetic_root: Path
    sam_cache_dir: Path | None = None
    folders: Mapping[str, Path] = field(default_factory=dict)
    _recorded: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: Config, folders: Mapping[str, Path | None] | None = None) -> Workspace:
        from pipeline.data.categories import resolve_root

        return cls(cfg.category, Path(cfg.paths.runs), Path(cfg.paths.datasets), Path(cfg.paths.weights),
                   resolve_root(cfg.data.root), Path(cfg.data.synthetic_root),
                   Path(cfg.sam.cache_dir) if cfg.sam.cache_dir else None,
                   {k: Path(v) for k, v in (folders or {}).items() if v is not None})

    # --- the data read ---------------------------------------------------------------------------------
    @property
    def real_category(self) -> Path:
        return self.data_root / self.category

    @property
    def synthetic_category(self) -> Path:
        return self.synthetic_root / self.category

    def source(self, fallback_synthetic: bool = True) -> Path:
        """The category folder a run reads: the real one when present, else (if allowed) the synthetic stand-in."""
        real = self.real_category
        return real if real.is_dir() or not fallback_synthetic else self.synthetic_category

    # --- the run folder --------------------------------------------------------------------------------
    @property
    def runs(self) -> Path:
        """``runs/<category>``: the stage folders, the logs and the report."""
        return self.runs_root / self.category

    @property
    def logs(self) -> Path:
        return self.runs / "logs"

    def log(self, stage: str, rank: int = 0) -> Path:
        return self.logs / (f"{stage}.log" if rank == 0 else f"{stage}.rank{rank}.log")

    @property
    def index(self) -> Path:
        return self.runs / INDEX

    @property
    def sam_cache(self) -> Path:
        """SAM's image-embedding cache: beside the stage's folder, not in it, so a re-run keeps it."""
        return self.sam_cache_dir or self.runs / "cache" / "sam"

    def default_folder(self, stage: str) -> Path:
        if stage == "convert":
            return self.datasets_root / self.category
        if stage == "report":
            return self.runs
        return self.runs / stage

    def recorded(self) -> dict[str, str]:
        """The stages that last finished somewhere other than their default place (``workspace.json``), read
        once per workspace; empty when there are none."""
        if self._recorded is None:
            object.__setattr__(self, "_recorded", self._read_index())
        return dict(self._recorded or {})

    def _read_index(self) -> dict[str, str]:
        try:
            data = json.loads(self.index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        stages = data.get("stages") if isinstance(data, dict) else None
        return {k: v for k, v in stages.items() if isinstance(v, str)} if isinstance(stages, dict) else {}

    def target(self, stage: str) -> Path:
        """Where ``stage`` writes now: this command's ``--out``, else its default place (a one-off ``--out``
        elsewhere does not move later runs)."""
        return self.folders.get(stage) or self.default_folder(stage)

    def folder(self, stage: str) -> Path:
        """Where ``stage``'s outputs are read from: this command's choice, else where the stage last finished
        (if still there), else its default."""
        if stage in self.folders:
            return self.folders[stage]
        recorded = self.recorded().get(stage)
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        return self.default_folder(stage)

    def record(self, stage: str, folder: Path) -> None:
        """Note where ``stage`` finished (or was found up to date), for the report and the stages after it: a
        folder other than the default is recorded (as an absolute path), the default one clears the record,
        so the config's ``paths`` decide again. Under a lock: commands may end together."""
        from pipeline.io import write_json

        default = Path(folder).absolute() == self.default_folder(stage).absolute()
        if default and stage not in self.recorded():
            return  # nothing to change: the common case writes nothing
        self.runs.mkdir(parents=True, exist_ok=True)
        with _flocked(self.runs / f".{INDEX}.lock"):
            stages = self._read_index()
            if default:
                stages.pop(stage, None)
            else:
                stages[stage] = str(Path(folder).absolute())
            write_json(self.index, {"category": self.category, "stages": dict(sorted(stages.items()))})
            object.__setattr__(self, "_recorded", stages)

    # --- what the stages read and write -----------------------------------------------------------------
    @property
    def dataset(self) -> Dataset:
        """The converted dataset (``--dataset``, else where ``pipe convert`` last wrote, else datasets/<category>)."""
        return Dataset(self.folders.get("dataset") or self.folder("convert"))

    @property
    def stats(self) -> StatsFiles:
        return StatsFiles(self.folder("stats"))

    @property
    def yolo(self) -> YoloFiles:
        return YoloFiles(self.folder("yolo"))

    @property
    def sam(self) -> SamFiles:
        return SamFiles(self.folder("sam"))

    @property
    def classify(self) -> ClassifyFiles:
        return ClassifyFiles(self.folder("classify"))

    @property
    def anomaly(self) -> AnomalyFiles:
        return AnomalyFiles(self.folder("anomaly"))

    @property
    def report(self) -> ReportFiles:
        return ReportFiles(self.folder("report"))

    def predict(self, name: str) -> PredictFiles:
        """A named ``pipe predict`` run: ``runs/<category>/predict/<name>``. ``name`` is one path component
        (``check_run_name``), so a run cannot land outside ``runs/<category>/predict/``."""
        return PredictFiles(self.runs / "predict" / check_run_name(name))

    def new_predict(self, name: str = "predict") -> PredictFiles:
        """The first ``pipe predict`` folder not taken yet: ``<name>``, ``<name>2``, ``<name>3``, ... (as
        ultralytics numbers its runs), so a run never replaces an earlier one unasked."""
        n = 1
        while True:
            files = self.predict(name if n == 1 else f"{name}{n}")
            if not os.path.lexists(files.folder):
                return files
            n += 1

    @property
    def export(self) -> ExportFiles:
        return ExportFiles(self.folders.get("export") or self.runs / "export")


def check_run_name(name: str) -> str:
    """``name`` when it is a single folder name (not empty, ``.``, ``..``, absolute or holding a separator), else
    a one-line ``PipeError``."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise PipeError(f"--name {name!r}: a run name is one folder name (no '/', not '.' or '..'), e.g. "
                         f"predict or batch-2024; use --out for another place")
    return name


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

