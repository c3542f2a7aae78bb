"""``pipe convert``: validate, split, convert every mask, check fidelity, then write all formats at once.

Nothing is written unless every instance meets its bound: the outputs are assembled in a temporary
folder and moved into place in one rename, so a later stage never reads a half-written dataset.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.console import track
from pipeline.convert.instances import ConvertParams, convert_mask
from pipeline.convert.preview import write_previews
from pipeline.convert.splits import SPLITS, make_splits
from pipeline.convert.writers import write_coco, write_yolo
from pipeline.data.images import PackedMask
from pipeline.data.layout import Category
from pipeline.errors import PipeError
from pipeline.io import atomic_dir, write_json
from pipeline.outputs import check_output, die_with_parent, mark
from pipeline.provenance import provenance
from pipeline.workspace import Dataset

PARALLEL_MIN_MASKS = 150  # below this, starting worker processes costs more than it saves


def _one(job: tuple[str, PackedMask, ConvertParams]) -> tuple[str, list[dict[str, Any]]]:
    rel, mask, params = job
    return rel, convert_mask(mask.unpack(), params)


def convert_all(cat: Category, params: ConvertParams, workers: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Instances of every image (good images: none), optionally across processes.

    The masks are the ones validation decoded (``Category.packed_mask``), sent to workers as their
    bounding-box crops: no PNG is decoded twice in one command.
    """
    jobs = [(s.rel, cat.packed_mask(s), params) for s in cat.samples if s.mask is not None]
    if workers == 0:
        workers = (os.cpu_count() or 1) if len(jobs) >= PARALLEL_MIN_MASKS else 1
    results: Iterable[tuple[str, list[dict[str, Any]]]]
    if workers > 1:
        try:
            with ProcessPoolExecutor(workers, initializer=die_with_parent) as pool:
                results = list(track(pool.map(_one, jobs, chunksize=8), f"converting {len(jobs)} masks",
                                     total=len(jobs)))
        except BrokenProcessPool:
            raise PipeError(f"{cat.root}: a conversion worker died (out of memory?); run again with --workers 1") \
                from None
    else:
        results = list(track(map(_one, jobs), f"converting {len(jobs)} masks", total=len(jobs)))
    out: dict[str, list[dict[str, Any]]] = {s.rel: [] for s in cat.samples}
    labels = {s.rel: s.label for s in cat.samples}
    for rel, instances in results:
        out[rel] = [{"class": labels[rel], **inst} for inst in instances]
    return out


def fidelity_summary(instances: dict[str, list[dict[str, Any]]], params: ConvertParams) -> dict[str, Any]:
    rows = [{"image": rel, **i} for rel, insts in sorted(instances.items()) for i in insts]
    failures = [r for r in rows if r["coco_iou"] < params.coco_min_iou or r["yolo_seg_iou"] < params.yolo_seg_min_iou
                or not r["yolo_box_exact"]]
    enc: dict[str, int] = {}
    for r in rows:
        enc[r["coco_encoding"]] = enc.get(r["coco_encoding"], 0) + 1
    return {
        "instances": len(rows),
        "coco_iou_min": min((r["coco_iou"] for r in rows), default=None),
        "coco_iou_mean": sum(r["coco_iou"] for r in rows) / len(rows) if rows else None,
        "yolo_seg_iou_min": min((r["yolo_seg_iou"] for r in rows), default=None),
        "yolo_seg_iou_mean": sum(r["yolo_seg_iou"] for r in rows) / len(rows) if rows else None,
        "yolo_boxes_exact": all(r["yolo_box_exact"] for r in rows),
        "coco_encodings": enc,
        "bounds": {"coco_iou": params.coco_min_iou, "yolo_seg_iou": params.yolo_seg_min_iou},
        "failures": [{k: r[k] for k in ("image", "class", "bbox", "coco_iou", "yolo_seg_iou", "yolo_box_exact")}
                     for r in failures],
        "passed": not failures,
    }


def run_convert(cat: Category, out: Path, params: ConvertParams, ratios: dict[str, float], seed: int,
                add_train_good: bool = False, link_mode: str = "hardlink", workers: int = 0,
                preview: int = 0, environment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Convert ``cat`` into ``out`` (YOLO det/seg, COCO, splits.json, convert_report.json); return the report.

    ``environment`` is the device-and-versions record for the report, measured by the caller (the stage
    machinery), so conversion depends on no device code; None leaves it out.
    """
    check_output(out, "convert", [("the source category", cat.root)])  # before any work
    t0 = time.perf_counter()
    splits = make_splits(cat, ratios, seed)
    instances = convert_all(cat, params, workers)
    t_convert = time.perf_counter() - t0
    summary = fidelity_summary(instances, params)
    if not summary["passed"]:
        worst = min(summary["failures"], key=lambda r: min(r["coco_iou"], r["yolo_seg_iou"]))
        raise PipeError(
            f"{cat.root / worst['image']}: {len(summary['failures'])} instance(s) below the fidelity bounds "
            f"(worst: coco IoU {worst['coco_iou']:.4f}, yolo-seg IoU {worst['yolo_seg_iou']:.4f}, box exact "
            f"{worst['yolo_box_exact']}); nothing was written. Lower convert.simplify or check the mask"
        )
    members = {sp: list(splits["splits"][sp]) for sp in SPLITS}
    if add_train_good:
        members["train"] = sorted(members["train"] + splits["train_good"])
    sources = {s.rel: s.image for s in cat.samples}
    sizes = {rel: (i.width, i.height) for rel, i in cat.info.items()}
    defects = cat.spec.defects
    per_class = {sp: {d: sum(len([i for i in instances[r] if i["class"] == d]) for r in rels) for d in defects}
                 for sp, rels in members.items()}
    report = {
        "category": cat.name,
        **({"environment": dict(environment)} if environment is not None else {}),
        "data": cat.provenance,
        "provenance": provenance(cat.provenance["kind"]),
        "params": {**asdict(params), "ratios": dict(ratios), "seed": seed, "add_train_good": add_train_good,
                   "link": link_mode},
        "images_per_split": {sp: len(rels) for sp, rels in members.items()},
        "instances_per_class": per_class,
        "fidelity": summary,
        "instances": [{"image": rel, "class": i["class"], "bbox": i["bbox"], "area": i["area"],
                       "coco_encoding": i["coco_encoding"], "coco_iou": round(i["coco_iou"], 6),
                       "yolo_seg_iou": round(i["yolo_seg_iou"], 6), "yolo_box_exact": i["yolo_box_exact"],
                       "polygon_points": len(i["yolo_polygon"])}
                      for rel, insts in sorted(instances.items()) for i in insts],
    }
    final = Dataset(Path(out))
    with atomic_dir(out) as tmp:
        dataset = Dataset(tmp)
        write_json(dataset.splits, splits)
        # data.yaml names the folder where the dataset will live once moved into place
        write_yolo(dataset.yolo_det.root, final.yolo_det.root, members, sources, instances, defects, "det", link_mode)
        write_yolo(dataset.yolo_seg.root, final.yolo_seg.root, members, sources, instances, defects, "seg", link_mode)
        write_coco(dataset.coco.root, cat.name, members, sources, sizes, instances, defects, link_mode)
        if preview:
            write_previews(dataset.preview, preview, sources, splits["labels"], instances, defects)
        write_json(dataset.report, report)
        mark(tmp, "convert")
    report["timing_s"] = {"convert": round(t_convert, 3), "total": round(time.perf_counter() - t0, 3)}
    return report
