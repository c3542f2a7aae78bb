"""Conversion speed on one core: pipe (all three formats, fidelity-checked) vs ultralytics' converter vs decode only.

    python bench/convert.py --root ../shared/data/mvtec --category bottle

Measured in one process on the same masks, OpenCV limited to one thread, methods interleaved:
- floor: decoding every mask (cv2) and thresholding it, nothing else;
- ultralytics: ``convert_segment_masks_to_yolo_seg`` on the same masks (class-indexed copies prepared
  beforehand, untimed), which writes YOLO-seg polygons only and checks nothing;
- pipe convert: decoding each mask once, instances, YOLO boxes and polygons, COCO polygons/RLE, fidelity
  IoUs, in memory (validation's decoded masks are dropped first, so each run decodes as ``pipe convert`` does);
- pipe convert + write: the above plus writing yolo-det, yolo-seg, coco, splits and report to disk
  (under --work, default datasets/; each run, ultralytics' too, writes into a fresh folder). File
  creation dominates this row and varies with the disk: on a busy ext4 VM one new inode took from
  0.02 to 0.9 ms, so read it next to the in-memory row and the same writes to tmpfs (/dev/shm).
Prints a table and writes JSON (the fastest of --repeat interleaved runs of each).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
from _shared import index_masks, interleaved, mask_source, save_result

from pipeline.convert.instances import ConvertParams
from pipeline.convert.run import convert_all, run_convert
from pipeline.data.images import binarize, read_mask_raw
from pipeline.data.layout import load_category


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("MVTEC_ROOT"), help="MVTec AD root (default $MVTEC_ROOT; "
                    "without one a 900 px synthetic bottle is generated)")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--repeat", type=int, default=7, help="runs per method, interleaved; the fastest counts")
    ap.add_argument("--json", type=Path, default=None, help="output JSON (default bench/results/convert-<category>.json)")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parents[1] / "datasets",
                    help="folder for the outputs (default datasets/, where `pipe convert` writes; removed afterwards)")
    args = ap.parse_args()

    cv2.setNumThreads(1)
    logging.getLogger("ultralytics").setLevel(logging.ERROR)
    from ultralytics.data.converter import convert_segment_masks_to_yolo_seg

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bench-convert-", dir=args.work))
    shm = Path("/dev/shm")
    memory = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else None
    try:
        root, data = mask_source(args.root, args.category, work)
        cat = replace(load_category(root, args.category), masks={})  # every pipe run below decodes its masks
        masked = [s for s in cat.samples if s.mask is not None]
        defects = cat.spec.defects
        indexed = index_masks(cat, work / "indexed")

        params = ConvertParams()
        ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
        methods = {
            "decode only (floor)": lambda: [binarize(read_mask_raw(s.mask)) for s in masked],
            "ultralytics convert_segment_masks_to_yolo_seg":
                lambda: convert_segment_masks_to_yolo_seg(str(indexed), tempfile.mkdtemp(dir=work), len(defects)),
            "pipe convert (3 formats, checked, in memory)": lambda: convert_all(cat, params, workers=1),
            # every writer gets a fresh folder each run: files are created, never overwritten or removed
            "pipe convert + write all formats":
                lambda: run_convert(cat, Path(tempfile.mkdtemp(dir=work)) / args.category, params, ratios, 0, workers=1),
        }
        if memory:  # the same writes where creating a file costs no disk work: what the writing code itself costs
            methods["pipe convert + write all formats (tmpfs)"] = \
                lambda: run_convert(cat, Path(tempfile.mkdtemp(dir=memory)) / args.category, params, ratios, 0, workers=1)
        rows = {name: min(t) for name, t in interleaved(args.repeat, methods).items()}  # fastest counts
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if memory:
            shutil.rmtree(memory, ignore_errors=True)

    floor = rows["decode only (floor)"]
    ul = rows["ultralytics convert_segment_masks_to_yolo_seg"]
    print(f"\n{args.category} ({data}), {len(masked)} masks, one core, best of {args.repeat}\n")
    print(f"| {'method':<48} | {'seconds':>8} | {'x floor':>7} | {'speed-up vs ultralytics':>23} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 9}|{'-' * 25}|")
    for name, t in rows.items():
        print(f"| {name:<48} | {t:8.3f} | {t / floor:7.2f} | {ul / t:23.2f} |")
    result = {"category": args.category, "data": data, "work": str(args.work), "masks": len(masked), "repeat": args.repeat,
              "threads": 1, "cpu": platform.processor() or platform.machine(), "seconds": rows,
              "ratio_to_floor": {k: v / floor for k, v in rows.items()},
              "speedup_vs_ultralytics": {k: ul / v for k, v in rows.items()}}
    save_result("convert", args.category, result, args.json)


if __name__ == "__main__":
    main()
