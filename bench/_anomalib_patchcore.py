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
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # KCenterGreedy's progress bar
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np
import torch
from _side import Side

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    folder = Path(sys.argv[1])
    bank = Path(sys.argv[3]) if sys.argv[2:3] == ["--bank"] else None
    name = "anomalib" if bank is None else "anomalib_samebank"
    p = json.loads((folder / "params.json").read_text())
    torch.set_num_threads(p["threads"])
    device = torch.device(p["device"])
    side = Side(folder, name, device)

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
    side.baseline()

    # fit: the Lightning module's training_step forwards, then subsample_embedding at the end of the epoch;
    # with --bank, the memory bank given instead (the parent's check of the scoring alone, untimed)
    model.train()
    with side.timed("fit"), torch.inference_mode():
        if bank is None:
            for i in range(0, len(train), batch):
                model(prepare(train[i:i + batch]))
            model.subsample_embedding(p["coreset_ratio"])
        else:
            model.memory_bank = torch.from_numpy(np.load(bank)).to(device)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(prepare(x))
        return out.pred_score, out.anomaly_map.squeeze(1)

    model.eval()
    scores, maps = side.score(test, batch, forward)
    side.write(scores, maps, model.memory_bank,
               state_dict={"loaded": len(wanted), "unused": len(unused),
                           "unused_modules": sorted({k.split(".")[0] for k in unused})},  # the head, layers past the last
               versions={"anomalib": anomalib.__version__, "torch": torch.__version__, "timm": timm.__version__,
                         "python": sys.version.split()[0]})


if __name__ == "__main__":
    main()
