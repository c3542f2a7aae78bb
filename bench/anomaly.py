"""PatchCore: pipe's against anomalib's, in one run, on the same machine, data and backbone weights.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r bench/requirements-anomalib.txt   # once
    python bench/anomaly.py --root ../shared/data/mvtec --category bottle        # resnet18 at 128 px (CPU-sized)
    python bench/anomaly.py --backbone wide_resnet50_2 --imgsz 256 --set anomaly.target_dim=1536   # the paper's

(pipe pools each patch to the config's ``target_dim`` (1024); anomalib keeps every channel, 384 for resnet18
and 1536 for wide_resnet50_2, hence ``target_dim=1536`` for like-for-like patches with the latter.) The root
is --root, else $MVTEC_ROOT, else ../shared/data/mvtec; without the category there, a synthetic one.

MVTec's ``train/good`` is the memory bank's source and the whole ``test/`` folder is scored, read once by
pipe's data layer (``load_category``, ``stages.anomaly.data.images``/``masks``) into uint8 arrays that both
sides receive. Both build their backbone from one state_dict written here: the pretrained torchvision file
when ``weights/`` holds it (nothing is downloaded), else a random initialisation from the config's seed
(said loudly: the AUROCs then measure an untrained network, the comparison is still like for like). Same
layers, coreset ratio, neighbours, image size, batch, threads and device on both sides; the config's
``anomaly:`` section supplies what the options do not (``--set anomaly.coreset_ratio=0.01``).

The coreset's random projection too: anomalib projects to the Johnson-Lindenstrauss bound at eps 0.9 (268
dimensions for bottle's 53,504 patches at 128 px) and cannot be told otherwise; pipe's default is the 128 of
the paper's code. ``--projection anomalib`` (the default) gives pipe's side anomalib's dimension, so the two
implementations are compared at one setting; ``--projection config`` keeps the config's ``projection_dim``
(on the real bottle its coreset then scores image AUROC about 0.01 higher than anomalib's over seeds 0-2).

Each side runs in its own process, one after the other (rounds alternate them; timings are medians over
rounds): pipe's ``PatchCore`` in this environment, anomalib's ``PatchcoreModel`` with
``.venv-bench/bin/python bench/_anomalib_patchcore.py``. Each times ``fit`` (features of every training image
+ coreset) and scoring (features + nearest neighbours + maps) after one untimed warm-up batch, in wall and
process CPU seconds (the machine's load average is recorded beside them: on a shared machine wall time is
only as quiet as the neighbours), and reports its peak RSS (``getrusage``; also above the level reached once
imports, data and model were in place) and, on CUDA, ``torch.cuda.max_memory_allocated``. Scores and maps
come back as arrays, and pipe's ``pipeline.metrics.anomaly`` measures both, so only the models differ.

The coreset is a random draw on both sides (greedy k-center from a random start after a random projection;
pipe seeds it with ``PatchCore(..., seed)``, anomalib's side seeds torch's and numpy's global RNGs), and with
the backbone fixed by backbone.pt the seed in params.json changes nothing else. One draw against another can
differ by more than the models do, so the accuracies are taken over ``--coreset-seeds N`` seeds (default 3):
there are ``max(--repeat, N)`` rounds, round r (from 0) runs both sides with coreset seed ``config seed +
(r mod N)`` (params.json is rewritten before each round), so with ``--repeat 3`` and the default every round
draws another coreset, and ``--coreset-seeds 1`` is the old single-seed bench. Image AUROC, pixel AUROC and
AUPRO are measured on every round's scores and maps; a seed's value is the mean of its rounds (identical on
CPU: a seed redraws the same coreset), and each side reports the mean and sample std over the seeds and the
per-seed values. The pipe-vs-anomalib row compares the means, the per-seed gaps (same seed on both sides) are
printed and stored with their mean, and the goal ``auroc_within_0.01`` (image and pixel AUROC) is judged on
the means over the coreset seeds; ``auroc_within_0.01_every_seed`` says whether every seed's gaps also are.

Two checks separate the causes of a difference. The state_dict's loading into anomalib's timm extractor:
both extractors' features (and patch embeddings, when pipe does not pool them to a smaller ``target_dim``)
on the first training batch. The scoring alone: anomalib's model scores pipe's memory bank (untimed), so
what remains between the two is its map upsampling, and what differs from its own run is its coreset. These
checks, and the score and map agreement (Spearman, Pearson), use the first round: the first coreset seed.

Without the bench environment pipe's side still runs and the table says why anomalib's is missing. Prints a
Markdown table, writes JSON (default bench/results/anomaly-<category>.json).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
ANOMALIB_SIDE = Path(__file__).resolve().with_name("_anomalib_patchcore.py")
INSTALL = "python3 -m venv .venv-bench && .venv-bench/bin/pip install -r bench/requirements-anomalib.txt"


def jl_dim(n: int, eps: float) -> int:
    """The Johnson-Lindenstrauss bound anomalib's ``SparseRandomProjection`` projects ``n`` points to (as
    scikit-learn's ``johnson_lindenstrauss_min_dim``, truncated as anomalib does)."""
    return int(4 * math.log(n) / (eps ** 2 / 2 - eps ** 3 / 3))


def pipe_side(folder: Path) -> None:
    """pipe's side, in a process of its own (``--worker FOLDER``): what ``_anomalib_patchcore.py`` does, with
    ``pipeline.stages.anomaly.model.PatchCore``, measured by the same ``_side.Side``."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch
    from _side import Side

    from pipeline.stages.anomaly.model import FeatureExtractor, PatchCore

    p = json.loads((folder / "params.json").read_text())
    torch.set_num_threads(p["threads"])
    device = torch.device(p["device"])
    side = Side(folder, "pipe", device)
    data = np.load(folder / "inputs.npz")
    train, test = torch.from_numpy(data["train"]), torch.from_numpy(data["test"])
    batch = p["batch"]
    extractor = FeatureExtractor(p["backbone"], p["layers"], folder / "backbone.pt", p["seed"])
    model = PatchCore(extractor, p["target_dim"], p["coreset_ratio"], p["projection_dim"], p["num_neighbors"],
                      p["sigma"], p["seed"]).to(device)
    with torch.inference_mode():
        model.embed(train[:batch])  # the warm-up anomalib's side has too
    side.baseline()
    with side.timed("fit"):
        model.fit(train[i:i + batch] for i in range(0, len(train), batch))  # uint8 in: the model converts
    scores, maps = side.score(test, batch, model.score)
    np.save(folder / "pipe_bank.npy", model.memory_bank.cpu().numpy())
    side.write(scores, maps, model.memory_bank)


def run_side(name: str, cmd: list[str], folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Run one side's process; its JSON, or (None, why) when it failed."""
    (folder / f"{name}.json").unlink(missing_ok=True)
    load_before = os.getloadavg()[0]  # other processes on the machine: timings are only as quiet as it is
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    took = time.perf_counter() - start
    (folder / f"{name}.log").write_text(proc.stdout)
    if proc.returncode or not (folder / f"{name}.json").is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        return None, f"`{shlex.join(cmd)}` exited {proc.returncode}:\n{tail}"
    out = json.loads((folder / f"{name}.json").read_text())
    out["process_s"] = took
    out["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out, None


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        pipe_side(Path(sys.argv[2]))
        return

    from _shared import parser, save_result

    ap = parser(__doc__, "anomaly")
    ap.set_defaults(root=os.environ.get("MVTEC_ROOT") or str(REPO.parent / "shared" / "data" / "mvtec"))
    ap.add_argument("--backbone", default="resnet18", choices=["resnet18", "wide_resnet50_2"],
                    help="torchvision/timm ResNet both sides build (default resnet18: CPU-sized)")
    ap.add_argument("--imgsz", type=int, default=128, help="square side images and masks are resized to")
    ap.add_argument("--device", default="auto", help="auto (cuda:0 when present), cpu or cuda:N; both sides")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of both sides (default torch's)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds, alternating the sides (at least --coreset-seeds); timings are medians")
    ap.add_argument("--coreset-seeds", type=int, default=3,
                    help="coreset seeds the accuracies are averaged over: round r draws with config seed + "
                         "(r mod N) on both sides (default 3; 1: the config's seed only)")
    ap.add_argument("--projection", choices=["anomalib", "config"], default="anomalib",
                    help="pipe's coreset projection dimension: anomalib's (Johnson-Lindenstrauss bound, eps 0.9, "
                         "for the bank's patch count; default: one setting on both sides) or the config's")
    ap.add_argument("--bench-python", type=Path, default=BENCH_PYTHON,
                    help=f"the bench-only environment's python with anomalib (default {BENCH_PYTHON})")
    args = ap.parse_args()
    if args.coreset_seeds < 1 or args.repeat < 1:
        ap.error("--repeat and --coreset-seeds must be at least 1")

    import numpy as np
    import torch

    from pipeline.config import load_config
    from pipeline.data.layout import load_category
    from pipeline.data.synth import synthesize
    from pipeline.device import environment, select_device
    from pipeline.metrics import anomaly as metrics
    from pipeline.stages.anomaly import data as anomaly_data
    from pipeline.stages.anomaly.model import FeatureExtractor, PatchCore, build_backbone
    from pipeline.weights import resolve

    cfg = load_config(args.category, args.profile, overrides=[
        *args.set, f"anomaly.backbone={args.backbone}", f"anomaly.imgsz={args.imgsz}", "allow_random_init=true"])
    a = cfg.anomaly
    device = select_device(args.device)
    threads = args.threads or torch.get_num_threads()
    seeds = [cfg.seed + i for i in range(args.coreset_seeds)]  # round r draws its coreset with seeds[r % N]
    rounds = max(args.repeat, len(seeds))
    work = Path(tempfile.mkdtemp(prefix="bench-anomaly-"))
    try:
        root, kind = Path(args.root), "real"
        if not (root / args.category).is_dir():
            s = cfg.synth
            print(f"{root / args.category}: not found; using a synthetic {args.category}")
            root = synthesize(args.category, work / "synthetic", s.size, s.train_good, s.test_good,
                              s.test_per_defect, s.seed).parent
            kind = "synthetic"
        cat = load_category(root, args.category, cfg.data.mask_threshold)
        train = sorted((s for s in cat.samples if s.split == "train"), key=lambda s: s.rel)
        test = sorted((s for s in cat.samples if s.split == "test"), key=lambda s: s.rel)
        start = time.perf_counter()
        train_x = anomaly_data.images(train, a.imgsz)
        test_x = anomaly_data.images(test, a.imgsz)
        masks = anomaly_data.masks(cat, test, a.imgsz)
        labels = anomaly_data.labels(test)
        load_s = time.perf_counter() - start

        def u8(x: torch.Tensor) -> np.ndarray:  # exact: images() is uint8 / 255, both sides divide again
            return x.mul(255).round_().to(torch.uint8).numpy()

        np.savez(work / "inputs.npz", train=u8(train_x), test=u8(test_x))
        weights_dir = Path(cfg.paths.weights) if Path(cfg.paths.weights).is_absolute() else REPO / cfg.paths.weights
        weights = resolve(a.backbone, weights_dir, allow_random_init=True, download=False)
        net = build_backbone(a.backbone, weights.path, cfg.seed)
        torch.save(net.state_dict(), work / "backbone.pt")
        extractor = FeatureExtractor(a.backbone, a.layers, work / "backbone.pt", cfg.seed)
        if args.projection == "anomalib":  # the bank: one patch per cell of the first layer's map, every image
            patches = len(train) * extractor(train_x[:1])[0].shape[-2:].numel()
            a = a.model_copy(update={"projection_dim": jl_dim(patches, 0.9)})
            projection_note = (f"{a.projection_dim}-d, anomalib's (Johnson-Lindenstrauss bound for {patches:,} "
                               f"patches at eps 0.9; --projection config: the config's {cfg.anomaly.projection_dim})")
        else:
            projection_note = f"{a.projection_dim}-d, the config's (anomalib's own: the JL bound at eps 0.9)"
        params = {"backbone": a.backbone, "layers": list(a.layers), "coreset_ratio": a.coreset_ratio,
                  "num_neighbors": a.num_neighbors, "target_dim": a.target_dim, "projection_dim": a.projection_dim,
                  "sigma": a.sigma, "batch": a.batch, "seed": cfg.seed, "device": device, "threads": threads}
        weights_note = (f"pretrained {weights.path.name} (sha256 {weights.sha256[:12]})" if weights.path else
                        f"RANDOM INITIALISATION from seed {cfg.seed}: no pretrained {a.backbone} file in "
                        f"{weights_dir}/ (nothing is downloaded here); both sides load this same state_dict, "
                        f"so the comparison is like for like, but the AUROCs measure an untrained network")
        print(f"{args.category} ({kind}): {len(train)} train/good images fitted, {len(test)} test images scored "
              f"({int(labels.sum())} defective), {a.imgsz} px, read in {load_s:.1f} s")
        print(f"backbone {a.backbone} {'+'.join(a.layers)}: {weights_note}")
        print(f"pipe's coreset projection: {projection_note}")
        print(f"device {device}, {threads} thread(s), batch {a.batch}, coreset ratio {a.coreset_ratio}, "
              f"{a.num_neighbors} neighbours")
        print(f"{rounds} round(s) alternating the sides, timings their medians; coreset seeds "
              f"{', '.join(map(str, seeds))} (round r: seed {cfg.seed} + r mod {len(seeds)}, the same on both "
              f"sides), accuracies the mean +- sample std over them; the checks use the first seed's round\n",
              flush=True)

        missing = None
        if not args.bench_python.is_file():
            missing = (f"{args.bench_python} not found: anomalib lives in a bench-only environment; create it "
                       f"with `{INSTALL}`")
        pipe_cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work)]
        anomalib_cmd = [str(args.bench_python), str(ANOMALIB_SIDE), str(work)]
        runs: dict[str, list[dict[str, Any]]] = {"pipe": [], "anomalib": []}
        # every round's scores and maps, in the order of runs[name] (whose entries carry their coreset_seed)
        arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"pipe": [], "anomalib": []}
        for r in range(rounds):
            seed = seeds[r % len(seeds)]
            (work / "params.json").write_text(json.dumps({**params, "seed": seed}))
            for name, cmd in (("pipe", pipe_cmd), ("anomalib", anomalib_cmd)):
                if name == "anomalib" and missing:
                    continue
                print(f"round {r + 1}/{rounds} (coreset seed {seed}): {name} ...", flush=True)
                out, why = run_side(name, cmd, work)
                if out is None:
                    if name == "pipe":
                        raise SystemExit(why)
                    missing = why
                    continue
                out["coreset_seed"] = seed
                runs[name].append(out)
                arrays[name].append((np.load(work / f"{name}_scores.npy"), np.load(work / f"{name}_maps.npy")))
            if r == 0:  # the first seed's memory bank, for the same-bank check
                shutil.copyfile(work / "pipe_bank.npy", work / "pipe_bank_first.npy")
        if missing:
            print(f"\nanomalib's side did not run: {missing}\n")
        same_bank = None
        if arrays["anomalib"]:  # anomalib stops at its first failure: its first round is round 0, seeds[0]
            (work / "params.json").write_text(json.dumps({**params, "seed": seeds[0]}))
            bank_dim = np.load(work / "pipe_bank_first.npy", mmap_mode="r").shape[1]
            if bank_dim == np.load(work / "anomalib_features.npz")["embedding"].shape[-1]:
                print(f"anomalib scoring pipe's memory bank of coreset seed {seeds[0]} (the check of the scoring "
                      f"alone) ...", flush=True)
                out, why = run_side("anomalib_samebank",
                                    [*anomalib_cmd, "--bank", str(work / "pipe_bank_first.npy")], work)
                same_bank = why if out is None else (np.load(work / "anomalib_samebank_scores.npy"),
                                                      np.load(work / "anomalib_samebank_maps.npy"))

        # the state_dict check: both extractors' features (and embeddings) on the first training batch
        checks: dict[str, Any] = {}
        if (work / "anomalib_features.npz").is_file() and arrays["anomalib"]:
            theirs = np.load(work / "anomalib_features.npz")
            batch = train_x[:a.batch]
            ours = extractor(batch)
            checks["feature_max_abs_diff"] = {
                layer: float(np.abs(f.numpy() - theirs[f"feat_{layer}"]).max()) for layer, f in zip(a.layers, ours)}
            checks["feature_max_abs"] = {layer: float(f.abs().max()) for layer, f in zip(a.layers, ours)}
            emb = PatchCore(extractor, a.target_dim, a.coreset_ratio, a.projection_dim, a.num_neighbors,
                            a.sigma, cfg.seed).embed(batch).numpy()
            if emb.shape == theirs["embedding"].shape:
                checks["embedding_max_abs_diff"] = float(np.abs(emb - theirs["embedding"]).max())
            else:
                checks["embedding_max_abs_diff"] = None
                checks["embedding_note"] = (f"pipe pools each patch to target_dim {emb.shape[-1]}; anomalib keeps "
                                            f"all {theirs['embedding'].shape[-1]} channels")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    accuracy_keys = ("image_auroc", "pixel_auroc", "aupro_0.3")
    for name in runs:  # every round's accuracies, beside its timings
        for run, (scores, maps) in zip(runs[name], arrays[name]):
            run.update({"image_auroc": metrics.image_auroc(scores, labels),
                        "pixel_auroc": metrics.pixel_auroc(maps, masks), "aupro_0.3": metrics.aupro(maps, masks, 0.3)})

    def per_seed(name: str) -> dict[int, dict[str, float]]:
        """Each coreset seed's accuracies: the mean of its rounds (one each unless --repeat exceeds the seeds)."""
        out = {}
        for seed in seeds:
            of_seed = [r for r in runs[name] if r["coreset_seed"] == seed]
            if of_seed:
                out[seed] = {k: statistics.fmean(r[k] for r in of_seed) for k in accuracy_keys}
        return out

    by_seed = {name: per_seed(name) for name in runs}

    def summary(name: str) -> dict[str, Any] | None:
        if not runs[name]:
            return None
        first = runs[name][0]
        med = {k: statistics.median(r[k] for r in runs[name])
               for k in ("fit_s", "predict_s", "ms_per_image", "fit_cpu_s", "predict_cpu_s")}
        values = {k: [v[k] for v in by_seed[name].values()] for k in accuracy_keys}
        accuracy: dict[str, Any] = {}
        for k, vs in values.items():  # the mean over coreset seeds under the old key, its spread beside it
            accuracy[k] = statistics.fmean(vs)
            accuracy[f"{k}_std"] = statistics.stdev(vs) if len(vs) > 1 else None
            accuracy[f"{k}_per_seed"] = vs
        return {
            **accuracy, "coreset_seeds": list(by_seed[name]),
            **med, "fit_predict_s": med["fit_s"] + med["predict_s"],
            "fit_predict_cpu_s": med["fit_cpu_s"] + med["predict_cpu_s"],
            "rss_peak_mib": statistics.median(r["rss_peak_mib"] for r in runs[name]),
            "rss_above_baseline_mib": statistics.median(r["rss_peak_mib"] - r["rss_baseline_mib"] for r in runs[name]),
            "rss_peak_mib_max": max(r["rss_peak_mib"] for r in runs[name]),
            "cuda_peak_mib": first.get("cuda_peak_mib"),
            "memory_bank": first["memory_bank"],
            "rounds": runs[name],
        }

    sides = {"pipe": summary("pipe"), "anomalib": summary("anomalib")}
    pipe, other = sides["pipe"], sides["anomalib"]
    assert pipe is not None

    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    def cell(side: dict[str, Any] | None, key: str, spec: str) -> str:
        """A side's value; for an accuracy, its mean over coreset seeds +- the sample std when there are several."""
        if side is None or side.get(key) is None:
            return "n/a"
        std = side.get(f"{key}_std") if key in accuracy_keys else None
        return format(side[key], spec) + ("" if std is None else f" +- {std:{spec}}")

    rows: list[tuple[str, str, str]] = [  # (label, key, format)
        ("image AUROC", "image_auroc", ".4f"), ("pixel AUROC", "pixel_auroc", ".4f"),
        ("AUPRO (FPR <= 0.3)", "aupro_0.3", ".4f"), ("fit s", "fit_s", ".2f"), ("predict s", "predict_s", ".2f"),
        ("ms / test image", "ms_per_image", ".1f"), ("fit + predict s", "fit_predict_s", ".2f"),
        ("fit CPU s", "fit_cpu_s", ".1f"), ("predict CPU s", "predict_cpu_s", ".1f"),
        ("fit + predict CPU s", "fit_predict_cpu_s", ".1f"),
        ("peak RSS MiB", "rss_peak_mib", ".0f"), ("RSS above baseline MiB", "rss_above_baseline_mib", ".0f"),
        ("peak RSS MiB, worst round", "rss_peak_mib_max", ".0f")]
    if device.startswith("cuda"):
        rows.append(("CUDA peak allocated MiB", "cuda_peak_mib", ".0f"))
    print(f"\naccuracies: mean +- sample std over coreset seeds {', '.join(map(str, seeds))}; "
          f"timings and memory: medians over {rounds} round(s)")
    print(f"| {'':<26} | {'pipe':>17} | {'anomalib':>17} | {'pipe vs anomalib':<22} |")
    print(f"|{'-' * 28}|{'-' * 19}|{'-' * 19}|{'-' * 24}|")
    comparison: dict[str, float | None] = {}
    for label, key, spec in rows:
        mine, theirs = pipe[key], other[key] if other else None
        if theirs is None or mine is None:
            vs = "n/a"
            comparison[key] = None
        elif key in accuracy_keys:
            comparison[key] = mine - theirs
            vs = f"{mine - theirs:+.4f} (of the means)"
        elif key.endswith("_s") or key == "ms_per_image":
            comparison[key] = theirs / mine
            vs = f"{theirs / mine:.2f}x faster" if mine <= theirs else f"{mine / theirs:.2f}x slower"
        else:
            comparison[key] = mine / theirs
            vs = f"{mine / theirs:.2f}x"
        print(f"| {label:<26} | {cell(pipe, key, spec):>17} | {cell(other, key, spec):>17} | {vs:<22} |")
    bank = lambda s: "x".join(map(str, s["memory_bank"])) if s else "n/a"
    print(f"| {'memory bank':<26} | {bank(pipe):>17} | {bank(other):>17} | {'':<22} |")

    # the per-seed comparison: the same coreset seed on both sides
    common = [s for s in seeds if s in by_seed["pipe"] and s in by_seed["anomalib"]]
    gaps = {k: [by_seed["pipe"][s][k] - by_seed["anomalib"][s][k] for s in common] for k in accuracy_keys}
    seed_gaps: dict[str, Any] = {
        "seeds": common, "gaps": gaps,
        "gap_mean": {k: statistics.fmean(v) if v else None for k, v in gaps.items()},
        "gap_max_abs": {k: max(map(abs, v)) if v else None for k, v in gaps.items()},
        "pipe": {str(s): v for s, v in by_seed["pipe"].items()},
        "anomalib": {str(s): v for s, v in by_seed["anomalib"].items()}}
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro_0.3": "AUPRO"}
    print("\nper coreset seed (the same seed on both sides; gap = pipe - anomalib):")
    print("| seed | " + " | ".join(f"{names[k] + ' pipe':>16} | {'anomalib':>8} | {'gap':>7}" for k in accuracy_keys)
          + " |")
    print("|------|" + "|".join(f"{'-' * 18}|{'-' * 10}|{'-' * 9}" for _ in accuracy_keys) + "|")
    for s in seeds:
        ps, ts = by_seed["pipe"].get(s), by_seed["anomalib"].get(s)
        print(f"| {s:>4} | " + " | ".join(
            f"{fmt(ps and ps[k], '.4f'):>16} | {fmt(ts and ts[k], '.4f'):>8} | "
            f"{fmt(ps[k] - ts[k] if ps and ts else None, '+.4f'):>7}" for k in accuracy_keys) + " |")
    print("| mean | " + " | ".join(
        f"{fmt(pipe[k], '.4f'):>16} | {fmt(other and other[k], '.4f'):>8} | "
        f"{fmt(seed_gaps['gap_mean'][k], '+.4f'):>7}" for k in accuracy_keys) + " |")

    judged_on = (f"mean over {len(common)} coreset seed(s) ({', '.join(map(str, common))}) of image and pixel "
                 f"AUROC, the same seeds on both sides")
    if other and (pipe["coreset_seeds"] != other["coreset_seeds"]):
        judged_on += (f"; NB the sides' means are over different seeds: pipe {pipe['coreset_seeds']}, anomalib "
                      f"{other['coreset_seeds']}")
    goals: dict[str, Any] = {"auroc_within_0.01": None, "auroc_within_0.01_every_seed": None,
                             "judged_on": judged_on, "pipe_2x_faster_fit_predict": None}
    if other:
        first_pipe, first_other = arrays["pipe"][0], arrays["anomalib"][0]  # round 0: the first coreset seed's
        goals["auroc_within_0.01"] = bool(abs(comparison["image_auroc"]) <= 0.01
                                          and abs(comparison["pixel_auroc"]) <= 0.01)
        goals["auroc_within_0.01_every_seed"] = bool(common) and all(
            abs(g) <= 0.01 for k in ("image_auroc", "pixel_auroc") for g in gaps[k])
        goals["pipe_2x_faster_fit_predict"] = bool(comparison["fit_predict_s"] >= 2)
        agree = float(np.corrcoef(np.argsort(np.argsort(pipe_scores := first_pipe[0])),
                                  np.argsort(np.argsort(first_other[0])))[0, 1])
        map_corr = float(np.corrcoef(first_pipe[1].ravel(), first_other[1].ravel())[0, 1])
        checks["coreset_seed"] = seeds[0]  # what the checks below compare: the first round, the first seed's
        checks["image_score_spearman"] = agree
        checks["map_pearson"] = map_corr
        every = ", ".join(f"{g:+.4f}" for g in gaps["image_auroc"])
        print(f"\ngoals: image and pixel AUROC within 0.01, judged on the {judged_on}: "
              f"{'yes' if goals['auroc_within_0.01'] else 'NO'} (image {comparison['image_auroc']:+.4f}, pixel "
              f"{comparison['pixel_auroc']:+.4f}); on every seed too: "
              f"{'yes' if goals['auroc_within_0.01_every_seed'] else 'NO'} (image gaps {every}); "
              f"pipe >= 2x faster on fit + predict: {'yes' if goals['pipe_2x_faster_fit_predict'] else 'NO'} "
              f"({comparison['fit_predict_s']:.2f}x)")
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in checks["feature_max_abs_diff"].items())
        scale = ", ".join(f"{k} {v:.3g}" for k, v in checks["feature_max_abs"].items())
        emb = checks["embedding_max_abs_diff"]
        print(f"same weights check, first {min(a.batch, len(train))} training images: max |pipe - anomalib| "
              f"features {diffs} (largest |feature|: {scale}); patch embeddings "
              f"{checks.get('embedding_note') if emb is None else format(emb, '.2e')}")
        pipe0, other0 = runs["pipe"][0], runs["anomalib"][0]  # their accuracies on the first seed
        if isinstance(same_bank, tuple):
            ss, sm = same_bank
            ps, pm = first_pipe
            checks["same_bank"] = {
                "coreset_seed": seeds[0],
                "image_score_max_abs_diff": float(np.abs(ss - ps).max()),
                "image_auroc": metrics.image_auroc(ss, labels), "pixel_auroc": metrics.pixel_auroc(sm, masks),
                "map_max_abs_diff": float(np.abs(sm - pm).max()), "map_pearson": float(np.corrcoef(sm.ravel(),
                                                                                                  pm.ravel())[0, 1])}
            sb = checks["same_bank"]
            print(f"anomalib on pipe's memory bank (coreset seed {seeds[0]}): image scores max |diff| "
                  f"{sb['image_score_max_abs_diff']:.2e}, image AUROC {sb['image_auroc']:.4f} (pipe "
                  f"{pipe0['image_auroc']:.4f}), pixel AUROC {sb['pixel_auroc']:.4f} (pipe "
                  f"{pipe0['pixel_auroc']:.4f}), maps max |diff| {sb['map_max_abs_diff']:.3g}, Pearson "
                  f"{sb['map_pearson']:.4f}")
            split = {f"{what}_auroc": {"scoring": pipe0[f"{what}_auroc"] - sb[f"{what}_auroc"],
                                       "coreset": sb[f"{what}_auroc"] - other0[f"{what}_auroc"]}
                     for what in ("image", "pixel")}
            sb["difference_split"] = split
            print(f"  -> pipe - anomalib on seed {seeds[0]} = scoring (pipe's bank, either model; the maps: pipe "
                  f"upsamples patch scores bilinearly, anomalib nearest) + coreset (anomalib on pipe's bank vs on its "
                  f"own): image {split['image_auroc']['scoring']:+.4f} + {split['image_auroc']['coreset']:+.4f}, "
                  f"pixel {split['pixel_auroc']['scoring']:+.4f} + {split['pixel_auroc']['coreset']:+.4f}")
        elif same_bank:
            checks["same_bank"] = same_bank
            print(f"anomalib on pipe's memory bank did not run: {same_bank}")
        print(f"agreement on coreset seed {seeds[0]}: image scores Spearman {agree:.4f}, anomaly maps Pearson "
              f"{map_corr:.4f} (scores: pipe {pipe_scores.min():.3g}..{pipe_scores.max():.3g}, anomalib "
              f"{first_other[0].min():.3g}..{first_other[0].max():.3g})")
    else:
        print(f"\ngoals not measured: anomalib's side did not run ({missing.splitlines()[0]})")
    loads = "; ".join(f"{n} " + ", ".join(f"{r['load_avg_1min'][0]}->{r['load_avg_1min'][1]}" for r in runs[n])
                      for n in runs if runs[n])
    print(f"machine load (1-min average, before->after each process; {os.cpu_count()} cores): {loads}")
    print(f"backbone weights: {weights_note}")

    env = environment(device)
    versions = (other["rounds"][0].get("versions") if other else None)
    result = {"bench": "anomaly", "category": args.category, "data": kind, "root": str(root),
              "images": {"train_good": len(train), "test": len(test), "test_defective": int(labels.sum())},
              "params": {**params, "imgsz": a.imgsz, "projection": args.projection, "projection_note": projection_note},
              "weights": weights.provenance, "weights_note": weights_note,
              "device": device, "device_name": env["device_name"], "environment": env,
              "anomalib_environment": versions, "anomalib_missing": missing, "repeat": args.repeat,
              "rounds": rounds, "coreset_seeds": seeds,
              "sides": sides, "pipe_vs_anomalib": comparison, "coreset_seed_gaps": seed_gaps, "goals": goals,
              "checks": checks}
    save_result("anomaly", args.category, result, args.json)


if __name__ == "__main__":
    main()
