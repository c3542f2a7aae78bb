"""Classification throughput per attempt (training and inference images per second), and the image cache's effect.

    python bench/classify.py --root ../shared/data/mvtec --category bottle   # attempts at their own sizes
    python bench/classify.py --profile cpu                                   # 64 px, synthetic bottle

Each attempt runs the real loop (``train.fit``) on the shared split's train images (plus MVTec
train/good) for ``--epochs`` epochs; training throughput counts augmented training images over the time
spent in training steps (validation excluded). Inference throughput is ``predict`` over val and test,
after one warm-up pass. The cache row times one pass of the training transform over every train image,
decoding from disk each time versus reading the in-memory cache: their ratio is what the cache saves per
epoch. Pretrained weights are used when present, else random init (the timing is the same). Prints a
table and writes JSON.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _shared import converted, finish, parser

from pipeline.config import load_config
from pipeline.device import environment, select_device
from pipeline.stages.classify.attempts import load_attempts
from pipeline.stages.classify.data import ImageCache, Images, load_labelled, shared_split
from pipeline.stages.classify.models import build, resolve_backbones
from pipeline.stages.classify.train import Options, fit, predict
from pipeline.training.state import seed_everything


def _pass_s(images: Images) -> float:
    start = time.perf_counter()
    for i in range(len(images)):
        images[i]
    return time.perf_counter() - start


def main() -> None:
    ap = parser(__doc__, "classify")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs per attempt")
    args = ap.parse_args()

    cfg = load_config(args.category, args.profile,
                      overrides=[*args.set, "allow_random_init=true", f"classify.epochs={args.epochs}"])
    c = cfg.classify
    device = select_device(cfg.device)
    o = Options(device, cfg.seed, c.select, c.amp, c.channels_last, c.workers)
    work = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    data = load_labelled(converted(cfg, args.root, args.category, work), c.classes)
    fold = shared_split(data, c.add_train_good)
    cache = ImageCache()
    attempts = load_attempts(c)
    weights = resolve_backbones([b for a in attempts for b in a.backbones], Path(cfg.paths.weights), True)
    rows, per_attempt = [], {}
    for a in attempts:
        seed_everything(cfg.seed)
        model = build(a, len(data.classes), weights)
        result = fit(model, a, fold, data.classes, cache, o, label=f"bench {a.id}")
        evaluated = fold.val + fold.test
        predict(model, evaluated, cache, a.imgsz, o)  # warm-up
        start = time.perf_counter()
        predict(model, evaluated, cache, a.imgsz, o)
        infer = len(evaluated) / (time.perf_counter() - start)
        per_attempt[a.id] = {"backbone": a.hyperparameters()["backbone"], "imgsz": a.imgsz, "batch": a.batch,
                             "train_images_per_s": result["images_per_s"], "infer_images_per_s": round(infer, 1),
                             "epochs": a.epochs, "wall_s": result["wall_s"]}
        rows.append((f"{a.id} {per_attempt[a.id]['backbone']} @{a.imgsz} train / infer (img/s)",
                     f"{result['images_per_s']} / {infer:.1f}"))
    size = attempts[0].imgsz
    cold = _pass_s(Images(fold.train, ImageCache(enabled=False), size, attempts[0].augment))
    warm = _pass_s(Images(fold.train, cache, size, attempts[0].augment))
    env = environment(device)
    result = {"bench": "classify", "category": args.category, "data": data.provenance, "device": device,
              "device_name": env["device_name"], "environment": env, "train_images": len(fold.train),
              "weights": {n: w.source for n, w in weights.items()}, "attempts": per_attempt,
              "cache": {"imgsz": size, "decode_each_time_s": round(cold, 4), "cached_s": round(warm, 4),
                        "speedup": round(cold / warm, 1)}}
    rows = [("device", env["device_name"]), ("data", f"{data.provenance} {args.category}, {len(fold.train)} train images"),
            *rows, (f"one augmented pass @{size}: decode vs cache (s)", f"{cold:.3f} / {warm:.3f} "
                                                                         f"({cold / warm:.1f}x)")]
    finish("classify", rows, result, args.json, work)


if __name__ == "__main__":
    main()
