"""``pipe predict``: detect, segment, classify and score every image given, with the trained models of a category.

Per batch of images: the detector's boxes (ultralytics' predictor, as the YOLO stage's evaluation), the
classifier's probabilities and the good-only detector's score and map for the whole batch; then, image by
image, SAM's encoder once and one mask per box from the fine-tuned decoder (the SAM stage's own ``Predictor``
and prompting). So a test-split image gets here exactly the boxes and masks the stages' evaluations scored.

An image that cannot be read is reported by name and skipped; the rest are processed. Everything is written
into a temporary folder that replaces the output only when complete; ``summary.json`` lists every file written,
so a later run given the same folder can tell the run's files from anything a user put there since
(``check_replaceable``).

COCO results are keyed by the input order (ids from 1, described by ``coco_images.json``), or, given a ground
truth (``--coco-gt``), by its own image ids, matched by file name, and its category ids: ``COCO(gt).loadRes``
then reads them as they are.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.coco import encode, to_json, xywh_to_xyxy
from pipeline.console import track
from pipeline.errors import DataError, PipeError
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.outputs import mark
from pipeline.predict import writers
from pipeline.predict.models import Trained
from pipeline.predict.sources import Failure, expand, output_names, read
from pipeline.workspace import MARKER, PredictFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOptions:
    conf: float  # box score threshold
    iou: float  # NMS IoU threshold
    batch: int = 8
    save_overlays: bool = False
    save_masks: bool = False
    backend: str = "torch"
    save_maps: bool = False


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def categories(names: Sequence[str], coco_file: Path | None) -> list[dict[str, Any]]:
    """The COCO categories of the results: the converted dataset's (ids and names) when it is there, so the
    results load against its ground truth; else the defect classes numbered from 1 as ``pipe convert`` does."""
    if coco_file is not None and coco_file.is_file():
        return [{"id": c["id"], "name": c["name"]} for c in read_json(coco_file)["categories"]]
    return [{"id": i, "name": n} for i, n in enumerate(names, 1)]


@dataclass(frozen=True)
class CocoGt:
    """A COCO ground truth the results are keyed to (``--coco-gt``): its image ids by file name, its categories."""

    path: Path
    categories: list[dict[str, Any]]
    by_name: dict[str, list[tuple[PurePosixPath, int]]] = field(default_factory=dict)  # basename -> (file_name, id)

    def image_id(self, source: Path) -> int | None:
        """The id of the ground truth's image whose ``file_name`` has ``source``'s name; when several do (the same
        name in different folders), the one whose whole ``file_name`` ends ``source``'s path; else None."""
        candidates = self.by_name.get(source.name, [])
        if len(candidates) == 1:
            return candidates[0][1]
        parts = Path(os.path.abspath(source)).parts
        hits = [i for name, i in candidates if parts[-len(name.parts):] == name.parts]
        return hits[0] if len(hits) == 1 else None


def read_coco_gt(path: Path) -> CocoGt:
    """The ground truth at ``path``, or a one-line ``PipeError`` naming it."""
    try:
        doc = read_json(path)
        categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in doc["categories"]]
        by_name: dict[str, list[tuple[PurePosixPath, int]]] = {}
        for im in doc["images"]:
            name = PurePosixPath(str(im["file_name"]).replace("\\", "/"))
            by_name.setdefault(name.name, []).append((name, int(im["id"])))
    except FileNotFoundError:
        raise PipeError(f"{path}: --coco-gt file not found; pass a COCO annotations file, e.g. "
                        f"<dataset>/coco/annotations/instances_test.json") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipeError(f"{path}: not a COCO ground truth with images (id, file_name) and categories (id, name) "
                        f"({type(exc).__name__}); pass a COCO annotations file to --coco-gt") from None
    return CocoGt(Path(path), categories, by_name)


def check_replaceable(folder: Path) -> None:
    """Refuse, in one line naming the first unexpected file, to replace a ``pipe predict`` folder holding anything
    its run did not write there (the files its ``summary.json`` lists, that summary and pipe's marker): a result
    is replaced whole, and nothing a user added to it since may go with it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    files = PredictFiles(folder)
    try:
        written = {str(w) for w in read_json(files.summary).get("written", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        written = set()
    allowed = written | {files.summary.name, MARKER}
    parents = {str(PurePosixPath(w).parent) for w in allowed}
    files_found: list[str] = []
    folders_found: list[str] = []  # a folder is named only when it holds no file to name (e.g. an empty one)
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            rel = Path(os.path.relpath(os.path.join(root, name), folder)).as_posix()
            if rel not in allowed:
                files_found.append(rel)
        for name in dirs:
            rel = Path(os.path.relpath(os.path.join(root, name), folder)).as_posix()
            if rel not in parents or os.path.islink(os.path.join(root, name)):  # a link leads to the user's
                folders_found.append(rel)
    unexpected = files_found or folders_found
    if unexpected:
        raise PipeError(f"{folder / unexpected[0]}: not written by the `pipe predict` run in {folder}, which would "
                        f"be replaced whole; move it out, or choose another --out or --name")


def _batches(paths: list[Path], size: int, failures: list[Failure]) -> Iterator[list[tuple[int, np.ndarray, float]]]:
    """(index, image, read ms) per readable image, ``size`` at a time; unreadable ones go to ``failures``."""
    batch: list[tuple[int, np.ndarray, float]] = []
    for i, path in enumerate(paths):
        start = time.perf_counter()
        try:
            image = read(path)
        except DataError as exc:
            failures.append(Failure(path, str(exc)))
            log.warning(f"skipped: {exc}")
            continue
        batch.append((i, image, _ms(start)))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_batch(models: Trained, images: list[np.ndarray], o: PredictOptions) -> list[dict[str, Any]]:
    """Records (without the source) for a batch of decoded images; each part timed per image."""
    n = len(images)
    records: list[dict[str, Any]] = [{"width": im.shape[1], "height": im.shape[0],
                                      "channels": 1 if im.ndim == 2 else im.shape[2], "timing_ms": {}}
                                     for im in images]
    maps: list[np.ndarray | None] = [None] * n
    if models.detector is not None:
        start = time.perf_counter()
        dets = models.detector.detect(images, o.conf, o.iou)
        share = _ms(start) / n
        names = models.detector.names
        for rec, boxes in zip(records, dets):
            rec["boxes"] = [{"xyxy": [round(float(v), 2) for v in xywh_to_xyxy(b["bbox"])[0]], "bbox": b["bbox"],
                             "class": names[b["class"]], "class_id": b["class"], "score": b["score"]} for b in boxes]
            rec["timing_ms"]["detector"] = share
    if models.classifier is not None:
        start = time.perf_counter()
        probs = models.classifier.probs(images)
        share = _ms(start) / n
        classes = models.classifier.classes
        for rec, p in zip(records, probs):
            rec["label"] = classes[int(np.argmax(p))]
            rec["probs"] = {c: round(float(v), 6) for c, v in zip(classes, p)}
            rec["classifier"] = getattr(models.classifier, "attempt", None)
            rec["timing_ms"]["classifier"] = share
    if models.anomaly is not None:
        start = time.perf_counter()
        scores, amaps = models.anomaly.score(images)
        share = _ms(start) / n
        a = models.anomaly
        for k, (rec, s, m) in enumerate(zip(records, scores, amaps)):
            region = a.region(m)
            rec["anomaly"] = {"score": round(float(s), 6), "threshold": round(a.image_threshold, 6),
                              "anomalous": bool(s >= a.image_threshold),
                              "pixel_threshold": round(a.pixel_threshold, 6), "area": int(region.sum()),
                              "region": to_json(encode(region))}
            rec["timing_ms"]["anomaly"] = share
            maps[k] = m
    if models.segmenter is not None:
        for rec, image in zip(records, images):
            start = time.perf_counter()
            boxes = rec.get("boxes") or []
            rec["masks"] = []
            if boxes:  # no box, no prompt: the encoder is not run for an image without detections
                models.segmenter.set_image(image)
                masks, scores = models.segmenter.segment(xywh_to_xyxy([b["bbox"] for b in boxes]))
                rec["masks"] = [{"box": j, "rle": to_json(encode(m)), "area": int(m.sum()),
                                 "score": round(float(s), 5)} for j, (m, s) in enumerate(zip(masks, scores))]
            rec["timing_ms"]["segmenter"] = _ms(start)
    for rec, m in zip(records, maps):
        rec["_map"] = m
    return records


def run_predict(models: Trained, sources: Sequence[str | Path], out: Path, o: PredictOptions,
                coco_categories: list[dict[str, Any]], meta: dict[str, Any],
                coco_gt: CocoGt | None = None) -> dict[str, Any]:
    """Predict every image of ``sources`` into ``out`` (replaced only when complete); return the summary.

    ``coco_categories`` number the classes in ``coco_results.json``; with ``coco_gt``, its categories and image
    ids are used instead, and an image it does not hold is left out of the COCO results (with a warning).
    ``meta`` (category, models, device, ...) is recorded in ``summary.json`` as it is."""
    if coco_gt is not None:
        coco_categories = coco_gt.categories
    cat_ids = {c["name"]: c["id"] for c in coco_categories}
    missing = [n for n in (models.detector.names if models.detector is not None else []) if n not in cat_ids]
    if missing:
        where = coco_gt.path if coco_gt is not None else "the converted dataset's COCO categories"
        raise PipeError(f"{where}: no category for the detector's classes {missing}; pass a ground truth of this "
                        f"category's classes")
    paths, failures = expand(sources)
    for f in failures:
        log.warning(f"skipped: {f.path}: {f.reason}")
    names = output_names(paths)
    total_ms: dict[str, float] = defaultdict(float)  # per part, summed from the images' own timings
    done: list[tuple[int, dict[str, Any]]] = []
    with atomic_dir(out) as tmp:
        files = PredictFiles(tmp)
        written = [files.predictions.name]
        start_all = time.perf_counter()
        with open(files.predictions, "w", encoding="utf-8") as lines:
            batches = _batches(paths, o.batch, failures)
            for batch in track(batches, f"predicting {len(paths)} images, {o.batch} at a time",
                               total=-(-len(paths) // o.batch)):
                records = predict_batch(models, [im for _, im, _ in batch], o)
                for (i, image, read_ms), rec in zip(batch, records):
                    amap = rec.pop("_map")
                    t = rec["timing_ms"]
                    t["read"] = read_ms
                    for part, ms in t.items():
                        total_ms[part] += ms
                    t["total"] = sum(t.values())
                    rec["timing_ms"] = {k: round(v, 3) for k, v in t.items()}
                    rec = {"source": str(paths[i]), **rec}
                    per_image: list[Path] = []
                    if o.save_maps and amap is not None:
                        per_image.append(files.maps / writers.map_name(names[i]))
                        writers.write_map(per_image[-1], amap)
                        rec["anomaly"]["map"] = str(out / os.path.relpath(per_image[-1], tmp))
                    lines.write(writers.jsonl_line(rec))
                    if o.save_overlays:
                        png = names[i] if names[i].lower().endswith(".png") else f"{names[i]}.png"
                        per_image.append(writers.write_overlay(files.overlays / png, image, rec, amap))
                    if o.save_masks:
                        per_image.append(writers.write_mask(files.masks / writers.mask_name(names[i]),
                                                            writers.union_mask(rec)))
                    written += [Path(os.path.relpath(f, tmp)).as_posix() for f in per_image]
                    done.append((i, {k: v for k, v in rec.items() if k != "timing_ms"}))
        wall = time.perf_counter() - start_all
        recs, image_ids, unmatched = _coco_ids(done, coco_gt)
        write_json(files.coco_results, writers.coco_results(recs, image_ids, cat_ids), indent=None)
        written.append(files.coco_results.name)
        if coco_gt is None:  # with a ground truth, its own images describe the ids
            write_json(files.coco_images, writers.coco_images(recs, image_ids, coco_categories))
            written.append(files.coco_images.name)
        n = len(done)
        summary = {**meta, "backend": o.backend, "sources": [str(s) for s in sources], "images": n,
                   "failed": [{"path": str(f.path), "reason": f.reason} for f in failures],
                   "thresholds": {"conf": o.conf, "iou": o.iou},
                   "coco_gt": str(coco_gt.path) if coco_gt is not None else None,
                   "not_in_coco_gt": unmatched,
                   "wall_s": round(wall, 3), "images_per_s": round(n / wall, 3) if wall > 0 and n else None,
                   "ms_per_image": {k: round(v / max(1, n), 3) for k, v in sorted(total_ms.items())},
                   "files": {"predictions": str(out / files.predictions.name),
                             "coco_results": str(out / files.coco_results.name),
                             "coco_images": str(out / files.coco_images.name) if coco_gt is None else None,
                             "overlays": str(out / files.overlays.name) if o.save_overlays else None,
                             "masks": str(out / files.masks.name) if o.save_masks else None,
                             "maps": str(out / files.maps.name) if o.save_maps and models.anomaly is not None
                             else None},
                   "written": sorted(written)}
        write_json(files.summary, summary)
        mark(tmp, "predict")
    return summary


def _coco_ids(done: list[tuple[int, dict[str, Any]]],
              coco_gt: CocoGt | None) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """The records that go into the COCO results, their image ids, and the sources left out (not in the ground
    truth). Without a ground truth: every record, numbered by input order from 1 (stable whatever fails)."""
    if coco_gt is None:
        return [r for _, r in done], [i + 1 for i, _ in done], []
    recs, ids, unmatched = [], [], []
    taken: dict[int, str] = {}
    for _, rec in done:
        image_id = coco_gt.image_id(Path(rec["source"]))
        if image_id is None or image_id in taken:
            why = (f"no image of that file name in {coco_gt.path}" if image_id is None else
                   f"{coco_gt.path}'s image {image_id} is already {taken[image_id]}")
            unmatched.append(rec["source"])
            log.warning(f"{rec['source']}: {why}; left out of coco_results.json (its predictions are in "
                        f"predictions.jsonl)")
            continue
        taken[image_id] = rec["source"]
        recs.append(rec)
        ids.append(image_id)
    return recs, ids, unmatched


def failure_line(summary: dict[str, Any]) -> str | None:
    """One line naming what failed, or None when every image was processed."""
    failed = summary["failed"]
    if not failed:
        return None
    shown = "; ".join(f"{f['path']} ({f['reason'].split(': ', 1)[-1]})" for f in failed[:3])
    more = f"; and {len(failed) - 3} more (see summary.json)" if len(failed) > 3 else ""
    return f"{len(failed)} of {len(failed) + summary['images']} inputs failed: {shown}{more}"
