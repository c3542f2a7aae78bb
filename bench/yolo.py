"""YOLO-World stage speed: training images per second and per-image inference latency.

    python bench/yolo.py --root ../shared/data/mvtec --category bottle            # default config
    python bench/yolo.py --profile cpu --epochs 3                                  # a CPU-sized check

Runs the real stage (``run_finetune_yolo``: zero-shot baseline, ultralytics training, test evaluation) on a
converted copy of the category, with callbacks timing every training epoch. Training throughput is the
number of train images over the epoch wall time, from the steady-state epochs (the first is reported
apart: it pays for data caching and cuDNN autotuning). Inference latency is ultralytics' per-image
inference time on the test images, plus our own wall time of the whole predict call per image. Without
a data root, a synthetic bottle is generated. Prints a table and writes JSON with the device name.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from _shared import converted, finish, parser

from pipeline.config import load_config
from pipeline.device import environment, select_device
from pipeline.stages.yolo.run import run_finetune_yolo


class EpochClock:
    """Ultralytics callbacks that record each training epoch's wall time (validation excluded)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds: list[float] = []

    def begin(self, trainer) -> None:
        self.start = time.perf_counter()

    def end(self, trainer) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def main() -> None:
    ap = parser(__doc__, "yolo")
    ap.add_argument("--epochs", type=int, default=None, help="override yolo.epochs (default: the config's)")
    args = ap.parse_args()

    overrides = [*args.set, "allow_random_init=true"] + ([f"yolo.epochs={args.epochs}"] if args.epochs else [])
    cfg = load_config(args.category, args.profile, overrides=overrides)
    work = Path(tempfile.mkdtemp(prefix="bench-yolo-"))
    dataset = converted(cfg, args.root, args.category, work)

    clock = EpochClock()
    t0 = time.perf_counter()
    m = run_finetune_yolo(cfg, dataset, work / "runs" / "yolo",
                          callbacks={"on_train_epoch_start": [clock.begin], "on_train_epoch_end": [clock.end]})
    wall = time.perf_counter() - t0
    n_train = m["train"]["images"]
    steady = clock.seconds[1:] or clock.seconds
    device = select_device(cfg.device)
    env = environment(device)
    result = {
        "bench": "yolo", "category": args.category, "data": m["data"]["provenance"], "device": device,
        "device_name": env["device_name"], "environment": env, "model": cfg.yolo.model, "imgsz": cfg.yolo.imgsz,
        "batch": cfg.yolo.batch, "epochs": len(clock.seconds), "train_images": n_train,
        "weights": m["weights"]["source"],
        "first_epoch_s": round(clock.seconds[0], 3),
        "steady_epoch_s": round(statistics.median(steady), 3),
        "train_images_per_s": round(n_train / statistics.median(steady), 2),
        "inference_ms_per_image": m["finetuned"]["latency_ms"],
        "stage_timing_s": m["timing_s"], "stage_wall_s": round(wall, 2),
        "finetuned_map50": m["finetuned"]["map50"],
    }
    rows = [("device", result["device_name"]), ("data", f"{result['data']} {args.category}"),
            ("model / imgsz / batch", f"{result['model']} / {result['imgsz']} / {result['batch']}"),
            ("train images", n_train), ("epochs timed", result["epochs"]),
            ("first epoch (s)", result["first_epoch_s"]), ("steady epoch, median (s)", result["steady_epoch_s"]),
            ("training images / s", result["train_images_per_s"]),
            ("inference latency (ms / image)", result["inference_ms_per_image"]),
            ("stage total (s)", m["timing_s"]["total"])]
    finish("yolo", rows, result, args.json, work)


if __name__ == "__main__":
    main()
