"""anomalib's PatchCore on the arrays ``bench/anomaly.py`` wrote: the other side of that comparison.

    .venv-bench/bin/python bench/_anomalib_patchcore.py FOLDER [--bank BANK.npy]

Runs in the bench-only environment (``bench/requirements-anomalib.txt``), never imports ``pipeline``. FOLDER
holds what the parent wrote: ``inputs.npz`` (``train`` and ``test``, uint8 (N, 3, H, W) RGB), ``backbone.pt``
(the torchvision state_dict pipe's side loads too) and ``params.json``. anomalib's ``PatchcoreModel`` is
built with ``pre_trained=False``, the state_dict is loaded into its timm ``features_only`` extractor (the
ResNet module names are torchvision's: conv1, bn1, layer1..; the head is absent from it), then, as
anomalib's Lightning module does: training-mode forwards fill the embedding store, ``subsample_embedding``
keeps the coreset, eval-mode forwards give image scores and anomaly maps. Images are converted to float and
ImageNet-normalised here (anomalib's pre-processor does that outside the model; pipe's model does it inside),
inside the timed loops on both sides.

Writes ``anomalib_scores.npy``, ``anomalib_maps.npy``, ``anomalib_features.npz`` (the first training
batch's raw layer features and its embedding, for the parent's equality check) and ``anomalib.json``
(timings, peak memory, versions, the state_dict load report). With ``--bank`` the memory bank is that
array (pipe's) instead of anomalib's own coreset, and the files are named ``anomalib_samebank*``: the parent
then compares the two scorings on one bank, apart from the coreset selection.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # KCenterGreedy's progress bar
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    folder = Path(sys.argv[1])
    bank = Path(sys.argv[3]) if sys.argv[2:3] == ["--bank"] else None
    name = "anomalib" if bank is None else "anomalib_samebank"
    p = json.loads((folder / "params.json").read_text())
    torch.set_num_threads(p["threads"])
    device = torch.device(p["device"])
    cuda = device.type == "cuda"

    import anomalib
    import timm
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    data = np.load(folder / "inputs.npz")
    train, test = torch.from_numpy(data["train"]), torch.from_numpy(data["test"])
    batch = p["batch"]
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device).float().div_(255) - mean) / std

    torch.manual_seed(p["seed"])
    np.random.seed(p["seed"])  # anomalib's SparseRandomProjection draws from numpy's global RNG (random_state=None)
    model = PatchcoreModel(layers=p["layers"], backbone=p["backbone"], pre_trained=False,
                           num_neighbors=p["num_neighbors"])
    state = torch.load(folder / "backbone.pt", map_location="cpu", weights_only=True)
    target = model.feature_extractor.feature_extractor
    wanted = target.state_dict()
    missing = sorted(set(wanted) - set(state))
    shape_mismatch = sorted(k for k in wanted if k in state and state[k].shape != wanted[k].shape)
    if missing or shape_mismatch:
        raise SystemExit(f"backbone.pt does not cover anomalib's {p['backbone']} extractor: missing {missing[:5]}, "
                         f"shape mismatch {shape_mismatch[:5]}")
    target.load_state_dict({k: state[k] for k in wanted}, strict=True)
    unused = sorted(set(state) - set(wanted))
    model = model.to(device)

    with torch.inference_mode():  # what the parent compares against pipe's extractor and embedding
        x = prepare(train[:batch])
        feats = model.feature_extractor(x)
        pooled = {k: model.feature_pooler(v) for k, v in feats.items()}
        embedding = model.generate_embedding(pooled).permute(0, 2, 3, 1)
        np.savez(folder / "anomalib_features.npz", embedding=embedding.cpu().numpy(),
                 **{f"feat_{k}": v.cpu().numpy() for k, v in feats.items()})
    baseline = rss_mib()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    # fit: the Lightning module's training_step forwards, then subsample_embedding at the end of the epoch;
    # with --bank, the memory bank given instead (the parent's check of the scoring alone, untimed)
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        if bank is None:
            for i in range(0, len(train), batch):
                model(prepare(train[i:i + batch]))
            model.subsample_embedding(p["coreset_ratio"])
        else:
            model.memory_bank = torch.from_numpy(np.load(bank)).to(device)
    if cuda:
        torch.cuda.synchronize()
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    after_fit = rss_mib()

    model.eval()
    scores, maps = [], []
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for i in range(0, len(test), batch):
            out = model(prepare(test[i:i + batch]))
            scores.append(out.pred_score.float().cpu())
            maps.append(out.anomaly_map.float().cpu().squeeze(1))
    if cuda:
        torch.cuda.synchronize()
    predict_s, predict_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    np.save(folder / f"{name}_scores.npy", torch.cat(scores).reshape(-1).numpy())
    np.save(folder / f"{name}_maps.npy", torch.cat(maps).numpy())
    result = {
        "fit_s": fit_s, "predict_s": predict_s, "fit_cpu_s": fit_cpu_s, "predict_cpu_s": predict_cpu_s,
        "ms_per_image": 1000 * predict_s / len(test),
        "rss_baseline_mib": baseline, "rss_after_fit_mib": after_fit, "rss_peak_mib": rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "memory_bank": list(model.memory_bank.shape),
        "state_dict": {"loaded": len(wanted), "unused": len(unused),
                       "unused_modules": sorted({k.split(".")[0] for k in unused})},  # the head, layers past the last
        "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": sys.version.split()[0]},
    }
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
