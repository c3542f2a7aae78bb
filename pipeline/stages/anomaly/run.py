"""``pipe anomaly``: PatchCore fitted on ``train/good`` only, measured two ways without a test image in any fit.

1. MVTec's whole ``test/`` folder, as published tables report it: image AUROC, pixel AUROC, AUPRO to a
   0.3 false-positive rate (threshold-free).
2. The shared split of ``splits.json``, beside the supervised stages: the image and pixel thresholds are
   fitted on the split's ``val`` images plus the held-out ``train/good`` images, then image F1/accuracy and
   pixel IoU/Dice are measured on the split's ``test`` images once.

For the report's comparison with SAM, each split test image's IoU and Dice are also recorded at the image's own
resolution (``test_pixel_scores``, the map stretched back bilinearly), and the split's test maps are kept at
``imgsz`` (``maps_test.npz``) for the heat maps drawn beside SAM's masks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.coco import dice, iou
from pipeline.console import track
from pipeline.data.images import unsquare
from pipeline.data.layout import Category, Sample
from pipeline.io import atomic_dir, atomic_path, write_json
from pipeline.metrics import anomaly as metrics
from pipeline.stages.anomaly import data as anomaly_data
from pipeline.stages.anomaly.model import FeatureExtractor, PatchCore
from pipeline.stages.common import Phases, attest, start
from pipeline.training import distributed
from pipeline.training.state import save, seed_everything
from pipeline.weights import resolve
from pipeline.workspace import AnomalyFiles, Dataset, flat_name

log = logging.getLogger(__name__)


def _batches(samples: list, size: int, batch: int, what: str):
    for i in track(range(0, len(samples), batch), what):
        yield anomaly_data.images(samples[i:i + batch], size)


def _score(model: PatchCore, samples: list, size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    with torch.inference_mode():
        for images in _batches(samples, size, batch, f"scoring {len(samples)} images"):
            s, m = model.score(images.to(model.device))
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def run_anomaly(cfg: Config, dataset: Dataset | Path, out: Path) -> dict[str, Any]:
    """Fit, score, fit thresholds on non-test images, measure; return what is written to ``metrics.json``."""
    a = cfg.anomaly
    out, dataset = Path(out), Dataset.of(dataset)
    files = AnomalyFiles(out)
    phases = Phases()
    d, device, record = start("anomaly", cfg, dataset)
    seed_everything(cfg.seed)
    files.metrics.unlink(missing_ok=True)  # a metrics file must never outlive the model it describes
    with phases("setup"):
        data = anomaly_data.load(dataset, a.holdout, cfg.seed, cfg.data.mask_threshold)
        weights = resolve(a.backbone, cfg.paths.weights, cfg.allow_random_init)
        extractor = FeatureExtractor(a.backbone, a.layers, weights.path, cfg.seed)
        model = PatchCore(extractor, a.target_dim, a.coreset_ratio, a.projection_dim, a.num_neighbors, a.sigma,
                          cfg.seed).to(device)
    log.info(f"anomaly {cfg.category}: memory bank from {len(data.fit)} train/good images "
             f"({len(data.holdout)} held out), {a.backbone} {'+'.join(a.layers)} at {a.imgsz} px")
    with phases("fit"):
        model.fit(_batches(data.fit, a.imgsz, a.batch, f"fitting on {len(data.fit)} good images"))
    save(files.model, {"config": a.model_dump(), "backbone_weights": weights.provenance,
                       "state_dict": model.state_dict()})
    with phases("score"):
        scored = data.scored
        scores, maps = _score(model, scored, a.imgsz, a.batch)
    at = {s.rel: i for i, s in enumerate(scored)}  # MVTec paths are unique across train/ and test/

    with phases("evaluate"):
        labels = anomaly_data.labels(scored)
        masks = anomaly_data.masks(data.category, scored, a.imgsz)  # each mask decoded once

        def pick(samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            idx = [at[s.rel] for s in samples]
            return scores[idx], maps[idx], labels[idx], masks[idx]

        ws, wm, wl, wk = pick(data.whole_test)
        whole = {"images": len(data.whole_test), "image_auroc": metrics.image_auroc(ws, wl),
                 "pixel_auroc": metrics.pixel_auroc(wm, wk), "aupro": metrics.aupro(wm, wk, 0.3)}
        fit_samples = [*data.val, *data.holdout]  # never a test image
        fs, fm, fl, fk = pick(fit_samples)
        image_t = metrics.fit_threshold(fs, fl)
        pixel_t = metrics.fit_pixel_threshold(fm, fk) if fk.any() else float(fm.max())
        ts, tm, tl, tk = pick(data.test)
        split = {
            "fitted_on": {"val": len(data.val), "train_good_holdout": len(data.holdout)},
            "test": {"image": {**metrics.at_threshold(ts, tl, image_t),
                               "auroc": metrics.image_auroc(ts, tl) if 0 < tl.sum() < len(tl) else None},
                     "pixel": metrics.masks_at_threshold(tm, tk, pixel_t)},
        }
        test_scores = {s.rel: round(float(v), 6) for s, v in zip(data.test, ts)}
        pixel_scores = full_size_scores(data.category, data.test, tm, pixel_t)
        split["test"]["pixel_full_size"] = _full_size_summary(pixel_scores, data.test)
        _save_maps(files.test_maps, data.test, tm)
    with phases("overlays"), atomic_dir(files.overlays) as tmp:
        overlays = _overlays(tmp, data, ts, tm, tk, image_t, a)
    metrics_doc = {
        **attest(record, [weights.provenance]),  # random init and synthetic data say so there
        "weights": weights.provenance,
        "model": {"file": str(files.model), "memory_bank": list(model.memory_bank.shape),
                  "backbone": a.backbone, "layers": list(a.layers), "imgsz": a.imgsz},
        "images": {"fit": len(data.fit), "holdout": len(data.holdout), "val": len(data.val),
                   "test": len(data.test), "whole_test": len(data.whole_test)},
        "whole_test": whole,
        "split": split,
        "thresholds": {"image": image_t, "pixel": pixel_t},
        "test_scores": test_scores,
        "test_pixel_scores": pixel_scores,
        "test_maps": str(files.test_maps),
        "overlays": [str(files.overlays / p.name) for p in overlays],
        "ms_per_image": round(1000 * phases.seconds["score"] / max(1, len(scored)), 3),
        "timing_s": phases.record(),
    }
    write_json(files.metrics, metrics_doc)
    distributed.shutdown(d)
    return metrics_doc


def full_size_scores(cat: Category, samples: list[Sample], maps: np.ndarray,
                     threshold: float) -> dict[str, dict[str, float]]:
    """Each image's IoU and Dice (``rel`` -> ``{"iou", "dice"}``) of its map at ``threshold`` against its true mask,
    at the image's own resolution: the map stretched back bilinearly (``unsquare``), compared in float64 as
    :mod:`pipeline.metrics.anomaly` compares. SAM's masks are scored at that resolution, so the report compares
    the two like for like. A good image with no pixel flagged scores 1 (``pipeline.coco.iou``)."""
    out = {}
    for s, m in zip(samples, maps):
        truth = cat.read_mask(s)
        pred = unsquare(m, *truth.shape).astype(np.float64) >= threshold
        out[s.rel] = {"iou": round(iou(pred, truth), 6), "dice": round(dice(pred, truth), 6)}
    return out


def _full_size_summary(scores: dict[str, dict[str, float]], samples: list[Sample]) -> dict[str, Any]:
    """The means over the defective images, as ``masks_at_threshold`` summarises the ``imgsz`` masks."""
    bad = [scores[s.rel] for s in samples if s.label != "good"]
    return {"defective_images": len(bad),
            **{f"mean_{k}": round(float(np.mean([v[k] for v in bad])), 6) if bad else None for k in ("iou", "dice")}}


def _save_maps(path: Path, samples: list[Sample], maps: np.ndarray) -> Path:
    """The maps as float16 at ``imgsz``, compressed (a few hundred kB for a category's split test images): enough
    to draw a heat map, not to measure again (the numbers are in ``metrics.json``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, rels=np.array([s.rel for s in samples]), maps=maps.astype(np.float16))
    return path


def _overlays(folder: Path, data: anomaly_data.AnomalyData, scores: np.ndarray, maps: np.ndarray,
              masks: np.ndarray, threshold: float, a: Any) -> list[Path]:
    """The first test images of each class: the image, its anomaly heat map, the true mask's outline."""
    import cv2

    written: list[Path] = []
    per_class: dict[str, int] = {}
    hi = float(np.percentile(maps, 99)) or 1.0
    for i, s in enumerate(data.test):
        if len(written) >= a.overlays or per_class.get(s.label, 0) >= max(1, a.overlays // 4):
            continue
        per_class[s.label] = per_class.get(s.label, 0) + 1
        img = (anomaly_data.images([s], a.imgsz)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        heat = cv2.applyColorMap(np.clip(maps[i] / hi * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        blend = cv2.addWeighted(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), 0.5, heat, 0.5, 0)
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(blend, contours, -1, (255, 255, 255), 1)
        verdict = "defect" if scores[i] >= threshold else "good"
        cv2.putText(blend, f"{s.label}: {verdict} {scores[i]:.2f}", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)
        path = folder / flat_name(s.rel)  # the MVTec image's name in the converted dataset
        cv2.imwrite(str(path), blend)
        written.append(path)
    return written
