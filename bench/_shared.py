"""What the stage benchmarks share: a converted dataset to time on, and one way to print and save results."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config  # noqa: E402
from pipeline.convert.instances import ConvertParams  # noqa: E402
from pipeline.convert.run import run_convert  # noqa: E402
from pipeline.data.layout import Category, load_category  # noqa: E402
from pipeline.data.synth import synthesize  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.console import setup_logging  # noqa: E402

setup_logging()  # a bench is an application: pipe's log records reach the console as under the CLI


def interleaved(repeat: int, methods: dict[str, Callable[[], object]], warmup: bool = False) -> dict[str, list[float]]:
    """Wall time of every call, ``repeat`` rounds taken round-robin so that a noisy neighbour slows all methods
    alike; with ``warmup``, one untimed round first (file caches, first imports)."""
    if warmup:
        for fn in methods.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The options every stage benchmark takes: data root, category, profile, --set overrides, output JSON."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("MVTEC_ROOT"), help="MVTec AD root (default $MVTEC_ROOT; "
                    "without one a synthetic bottle is generated)")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--profile", default=None, help="config profile (tiny, cpu, full); default: configs as they are")
    ap.add_argument("--set", action="append", default=[], help="any config override, e.g. sam.views=1")
    ap.add_argument("--json", type=Path, default=None, help=f"output JSON (default bench/results/{name}-<device>.json)")
    return ap


def converted(cfg: Config, root: str | None, category: str, work: Path) -> Path:
    """``work/datasets/<category>`` converted from the real root, or from a synthetic one made here."""
    if root is None:
        s = cfg.synth
        root = synthesize(category, work / "synthetic", s.size, s.train_good, s.test_good, s.test_per_defect,
                          s.seed).parent
    c = cfg.convert
    dataset = work / "datasets" / category
    run_convert(load_category(root, category), dataset, ConvertParams(c.merge_distance, c.min_area, c.simplify,
                c.coco_min_iou, c.yolo_seg_min_iou), c.split.model_dump(), cfg.seed, c.add_train_good)
    return dataset


def mask_source(root: str | None, category: str, work: Path) -> tuple[Path, str]:
    """The data root the conversion benchmarks time on, and whether it is real: ``root``, or (without one) a
    synthetic category at MVTec's size with bottle's 63 masks, generated under ``work``."""
    if root:
        return Path(root), "real"
    synthesize(category, work / "synthetic", size=900, train_good=20, test_good=20, test_per_defect=21)
    return work / "synthetic", "synthetic"


def index_masks(cat: Category, folder: Path) -> Path:
    """``folder`` holding a copy of each defect mask with pixel value = class index + 1: the input
    ultralytics' ``convert_segment_masks_to_yolo_seg`` wants (prepared untimed, before any comparison)."""
    import cv2

    from pipeline.data.images import binarize, read_mask_raw
    from pipeline.workspace import flat_name

    folder.mkdir(parents=True, exist_ok=True)
    defects = cat.spec.defects
    for s in cat.samples:
        if s.mask is not None:
            m = binarize(read_mask_raw(s.mask)).astype("uint8") * (defects.index(s.label) + 1)
            cv2.imwrite(str(folder / flat_name(s.rel)), m)
    return folder


def finish(name: str, rows: list[tuple[str, Any]], result: dict[str, Any], json_path: Path | None,
           work: Path) -> None:
    """Print the table, write ``bench/results/<name>-<device>.json`` (or ``json_path``), remove ``work``."""
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    device = result["device"]
    tag = "cuda-" + result["device_name"].replace(" ", "_") if device.startswith("cuda") else "cpu"
    save_result(name, tag, result, json_path)
    shutil.rmtree(work, ignore_errors=True)


def save_result(name: str, tag: str, result: dict[str, Any], json_path: Path | None = None) -> Path:
    """Write ``bench/results/<name>-<tag>.json`` (or ``json_path``) with the command that reproduces it."""
    out = json_path or Path(__file__).resolve().parent / "results" / f"{name}-{tag}.json"
    write_json(out, {**result, "command": f"python bench/{name}.py " + " ".join(sys.argv[1:])})
    print(f"\nwrote {out}")
    return out
