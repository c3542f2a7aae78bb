"""SAM fine-tuning epoch time with and without the image-embedding cache, measured in one run.

    python bench/sam.py --root ../shared/data/mvtec --category bottle          # vit_b (the default config)
    python bench/sam.py --profile cpu                                          # vit_tiny on a synthetic bottle

Both arms run the real training loop (``train.fit``) on the same converted train/val split, same model,
same seed. Cached: the embedding pass encodes every (image, view) once, then each epoch runs the prompt
encoder and mask decoder only; the steady-state epoch is the median after the first. Uncached: the image
encoder runs inside every step. The ratio of the two epoch times is the cache's speed-up; the embedding
pass is reported apart (it is paid once per image, view and checkpoint). Pretrained weights are used if
present; otherwise random init, which does not change the timing. Prints a table and writes JSON.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from _shared import converted, finish, parser

from pipeline.config import load_config
from pipeline.device import environment, select_device
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import load_split
from pipeline.stages.sam.model import build, locate
from pipeline.stages.sam.train import fit
from pipeline.training.distributed import Dist


def main() -> None:
    ap = parser(__doc__, "sam")
    ap.add_argument("--epochs", type=int, default=4, help="cached epochs (the first is excluded from the median)")
    ap.add_argument("--uncached-epochs", type=int, default=1, help="epochs without the cache")
    args = ap.parse_args()

    cfg = load_config(args.category, args.profile, overrides=[*args.set, "allow_random_init=true"])
    device = select_device(cfg.device)
    work = Path(tempfile.mkdtemp(prefix="bench-sam-"))
    dataset = converted(cfg, args.root, args.category, work)
    train, _ = load_split(dataset, "train")
    val, _ = load_split(dataset, "val")
    source = locate(cfg.sam.model, Path(cfg.paths.weights), True, cfg.seed)

    def arm(name: str, epochs: int, cached: bool) -> dict:
        sam = build(source, cfg.seed).to(device)
        scfg = cfg.sam.model_copy(update={"epochs": epochs, "cache": cached})
        cache = EmbeddingCache(work / "cache" if cached else None, source.key, cached)
        h = fit(sam, train, val, scfg, device, cfg.seed, cache, work / name, Dist())
        secs = [row["seconds"] for row in h["history"]]
        steady = secs[1:] if len(secs) > 1 else secs
        return {"epoch_s": secs, "steady_epoch_s": round(statistics.median(steady), 4),
                "embedding_pass_s": h["embedding_pass_s"], "train_images": h["train_images"]}

    cached = arm("cached", args.epochs, True)
    uncached = arm("uncached", args.uncached_epochs, False)
    env = environment(device)
    speedup = uncached["steady_epoch_s"] / cached["steady_epoch_s"]
    result = {"bench": "sam", "category": args.category, "data": "real" if args.root else "synthetic",
              "device": device, "device_name": env["device_name"], "environment": env, "model": cfg.sam.model,
              "weights": source.provenance["source"], "views": cfg.sam.views, "batch": cfg.sam.batch,
              "cached": cached, "uncached": uncached, "cache_speedup": round(speedup, 1),
              "target_speedup": 10, "meets_target": speedup >= 10}
    rows = [("device", env["device_name"]), ("data", f"{result['data']} {args.category}"),
            ("model / views / batch", f"{cfg.sam.model} / {cfg.sam.views} / {cfg.sam.batch}"),
            ("train images", cached["train_images"]),
            ("embedding pass, once (s)", cached["embedding_pass_s"]),
            ("epoch with cache, steady (s)", cached["steady_epoch_s"]),
            ("epoch without cache (s)", uncached["steady_epoch_s"]),
            ("speed-up from the cache", f"{speedup:.1f}x (target >= 10x)")]
    finish("sam", rows, result, args.json, work)


if __name__ == "__main__":
    main()
