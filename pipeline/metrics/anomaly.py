"""Metrics of a good-only anomaly detector (PatchCore on MVTec AD): AUROC, AUPRO, and fitted operating points.

Conventions: a label or mask value of 1 means defective; a higher score means more anomalous; an image or a
pixel is predicted defective when its score is ``>= t`` (compared in float64). ``maps`` and ``masks`` are
stacks (N, H, W) of the same shape (one (H, W) map is read as a stack of one); masks hold 0/1 or booleans.

- :func:`image_auroc`, :func:`pixel_auroc`: ROC AUC as scikit-learn's ``roc_auc_score`` gives it, the pixel
  one over every pixel of every image at once (not a mean over images).
- :func:`aupro`: the area under the per-region overlap curve of the MVTec AD paper, computed as the official
  MVTec AD evaluation does (``compute_pro`` + ``trapezoid``). Regions are the 8-connected components of each
  ground-truth mask (``pipeline.data.masks.CONNECTIVITY``, the structuring element ``ones((3, 3))`` of the
  official code); at each threshold a region's overlap is the fraction of its pixels at or above it, PRO is
  the mean over all regions of all images, and the FPR is over the defect-free pixels of all images (good
  images included). The curve, with points at tied scores merged and (0, 0) prepended, is integrated with
  the trapezoid rule up to ``fpr_limit`` (the end point interpolated at exactly ``fpr_limit``) and divided by
  it. Like the official code it sorts instead of thresholding many times, and sorts less: only the
  defect-free scores down to the first point past the limit (found with a linear-time partition), in which
  the defect pixels are then placed. 100 maps of 256x256 take about 0.3 s.
- :func:`fit_threshold`, :func:`fit_pixel_threshold`: the F1-optimal cut on the data given. They see only
  what they are passed, so the caller must pass non-test data (validation images), never the split it
  reports on: a threshold fitted on the test split inflates every metric measured at it.
- :func:`at_threshold`, :func:`masks_at_threshold`: what an operating point gives, image-wise and pixel-wise
  (mask IoU and Dice are ``pipeline.coco``'s). Undefined ratios (no predicted or no actual positives) are 0,
  as ``zero_division=0`` makes them in :mod:`pipeline.metrics.classification`.

Bad input (mismatched shapes, non-binary labels, a single class where two are needed, non-finite scores)
raises a one-line ``ValueError`` naming the function and the problem.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from pipeline.coco import batch_dice, batch_iou
from pipeline.data.masks import CONNECTIVITY

MAX_PIXELS = 2_000_000  # fit_pixel_threshold subsamples beyond this many pixels (seeded, so deterministic)


# --- input checks -----------------------------------------------------------------------------------------


def _scores(values: Any, name: str, fn: str) -> np.ndarray:
    """Real-valued scores as a float array (float32 kept, anything else as float64), all finite."""
    a = np.asarray(values)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{fn}: {name} must be numbers, got dtype {a.dtype}")
    if a.dtype != np.float32:
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{fn}: {name} hold {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return a


def _binary(values: Any, name: str, fn: str) -> np.ndarray:
    """0/1 or boolean values as a boolean array."""
    a = np.asarray(values)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
        found = np.unique(a)[:5] if a.dtype.kind in "biuf" else a.dtype
        raise ValueError(f"{fn}: {name} must be binary (0/1 or bool, 1 = defective); found {found}")
    return a.astype(bool)


def _image_pair(scores: Any, labels: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    s, y = _scores(scores, "scores", fn), _binary(labels, "labels", fn)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{fn}: scores and labels must be 1-D (one per image), got shapes {s.shape} and {y.shape}")
    if len(s) != len(y):
        raise ValueError(f"{fn}: {len(s)} scores but {len(y)} labels")
    return s, y


def _pixel_pair(maps: Any, masks: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    m, t = _scores(maps, "maps", fn), _binary(masks, "masks", fn)
    if m.shape != t.shape:
        raise ValueError(f"{fn}: maps of shape {m.shape} but masks of shape {t.shape}")
    if m.ndim == 2:
        m, t = m[None], t[None]
    if m.ndim != 3:
        raise ValueError(f"{fn}: maps and masks must be (N, H, W) or (H, W), got shape {m.shape}")
    return m, t


def _both_classes(y: np.ndarray, what: str, fn: str) -> None:
    positives = int(y.sum())
    if positives == 0 or positives == y.size:
        only = "defective" if positives else "defect-free"
        raise ValueError(f"{fn}: all {y.size} {what} are {only}; it needs both defective and defect-free ones")


# --- ranking: AUROC and AUPRO -----------------------------------------------------------------------------


def image_auroc(scores: Any, labels: Any) -> float:
    """ROC AUC of image anomaly scores against image labels (1 = defective)."""
    s, y = _image_pair(scores, labels, "image_auroc")
    _both_classes(y, "labels", "image_auroc")
    return float(roc_auc_score(y, s))


def pixel_auroc(maps: Any, masks: Any) -> float:
    """ROC AUC of anomaly-map pixels against mask pixels, over all pixels of all images at once.

    The value of scikit-learn's ``roc_auc_score`` (the area under the ROC curve with tied scores merged is the
    fraction of (defect, defect-free) pixel pairs in which the defect pixel scores higher, ties counting half),
    computed with one plain sort of the larger class, in which the other is placed: a fraction of the time of
    ``roc_auc_score`` (a float64 argsort of every pixel) on millions of pixels."""
    m, t = _pixel_pair(maps, masks, "pixel_auroc")
    _both_classes(t, "mask pixels", "pixel_auroc")
    scores, truth = m.ravel(), t.ravel()
    pos, neg = scores[truth], scores[~truth]
    pos_sorted = len(pos) >= len(neg)
    ranked, placed = (np.sort(pos), neg) if pos_sorted else (np.sort(neg), pos)
    # over the placed scores: twice the number of ranked scores below each (ties counting once)
    below2 = int(np.searchsorted(ranked, placed, "left").sum() + np.searchsorted(ranked, placed, "right").sum())
    pairs = len(pos) * len(neg)
    wins = pairs - below2 / 2 if pos_sorted else below2 / 2  # pairs in which the defect pixel scores higher
    return float(wins / pairs)


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """A label per pixel, unique over the whole stack (0 = defect-free), and the number of regions."""
    labels = np.zeros(masks.shape, np.int32)
    count = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        n, lab = cv2.connectedComponents(np.ascontiguousarray(mask).view(np.uint8), connectivity=CONNECTIVITY)
        labels[i] = np.where(lab > 0, lab + count, 0)
        count += n - 1
    return labels, count


def pro_curve(maps: Any, masks: Any, fpr_limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The (FPR, PRO) curve in order of decreasing threshold, from (0, 0) to the first point with an FPR
    beyond ``fpr_limit`` (then (1, 1), as the official code ends it).

    Each distinct defect-free score ``a`` gives two points: the one just above it (the FPR of the scores
    above ``a``, the PRO of the defect pixels above ``a``) and the one at it (both counting ``a`` itself);
    the segment between them is the official curve's. The official curve's other points (defect scores
    between two defect-free ones) lie on the vertical segment from one pair to the next: they add no area,
    and are left out. See the module docstring for the definition."""
    fn = "pro_curve"
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"{fn}: fpr_limit must be in (0, 1], got {fpr_limit}")
    m, t = _pixel_pair(maps, masks, fn)
    regions, n_regions = _regions(t)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    n_ok = int(sizes[0])
    if n_regions == 0:
        raise ValueError(f"{fn}: the masks hold no defect pixels, so there is no region to overlap")
    if n_ok == 0:
        raise ValueError(f"{fn}: the masks hold no defect-free pixels, so there is no false-positive rate")

    scores, regions = m.ravel(), regions.ravel()
    defect = regions > 0
    ok = scores[~defect]
    # The first point past the limit is at the k-th highest defect-free score with k > fpr_limit * n_ok: every
    # score above it has FPR <= (k - 1) / n_ok <= fpr_limit, and its own point has FPR >= k / n_ok > fpr_limit.
    k = min(n_ok, math.floor(fpr_limit * n_ok) + 1)
    cut = np.partition(ok, n_ok - k)[n_ok - k]
    ok = ok[ok >= cut]  # the k highest and any ties of the k-th
    ok.sort()  # ascending: a plain sort, no argsort needed (every defect-free pixel weighs the same)
    first = np.append(True, np.diff(ok) != 0)  # the first of each run of ties
    a = ok[first]  # distinct defect-free scores, ascending
    fpr_at = (len(ok) - np.flatnonzero(first)) / n_ok  # FPR of the scores >= a
    fpr_above = np.append(fpr_at[1:], 0.0)  # FPR of the scores > a

    # PRO of the scores >= a (and > a): each defect pixel weighs 1 / (its region's size * the number of regions);
    # binned by how many distinct defect-free scores lie at or below it (below it), then summed from the top.
    d = scores[defect]
    w = 1.0 / (sizes[regions[defect]] * n_regions)

    def tail(side: str) -> np.ndarray:
        bins = np.bincount(np.searchsorted(a, d, side=side), weights=w, minlength=len(a) + 1)
        return np.cumsum(bins[::-1])[::-1][1:]  # [j]: the weight in bins j+1 onwards

    pro_at, pro_above = tail("right"), tail("left")

    x = np.empty(2 * len(a) + 2)
    y = np.empty_like(x)
    x[0] = y[0] = 0.0
    x[1:-1:2], x[2:-1:2] = fpr_above[::-1], fpr_at[::-1]  # decreasing threshold
    y[1:-1:2], y[2:-1:2] = pro_above[::-1], pro_at[::-1]
    x[-1] = y[-1] = 1.0
    return np.minimum(x, 1.0), np.minimum(y, 1.0)


def _area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing ``x`` from its start to ``x_max`` (<= ``x[-1]``), the
    value at ``x_max`` interpolated linearly between its neighbours, as the official ``trapezoid`` does."""
    end = int(np.searchsorted(x, x_max, side="right"))  # x[:end] <= x_max < x[end:]
    xs, ys = x[:end], y[:end]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if xs[-1] < x_max:
        y_max = ys[-1] + (y[end] - ys[-1]) * (x_max - xs[-1]) / (x[end] - xs[-1])
        area += 0.5 * (y_max + ys[-1]) * (x_max - xs[-1])
    return area


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Area under the per-region overlap curve up to ``fpr_limit``, divided by it (1 = every region found
    before any defect-free pixel is flagged); the official MVTec AD evaluation's AU-PRO."""
    fpr, pro = pro_curve(maps, masks, fpr_limit)
    return _area(fpr, pro, fpr_limit) / fpr_limit


# --- operating points -------------------------------------------------------------------------------------


def _f1_cut(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising F1 of ``score >= t``: halfway between the lowest score it flags and the next
    lower distinct score (the lowest score itself when it flags everything). Ties go to the highest cut."""
    order = np.argsort(scores)[::-1]
    s, y = scores[order].astype(np.float64), labels[order]
    last = np.append(np.diff(s) != 0, True)
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    cuts = s[last]
    f1 = 2 * tp / (tp + fp + int(labels.sum()))  # 2TP / (2TP + FP + FN)
    i = int(np.argmax(f1))
    return float((cuts[i] + cuts[i + 1]) / 2 if i + 1 < len(cuts) else cuts[i])


def fit_threshold(scores: Any, labels: Any) -> float:
    """The image threshold maximising F1 (``score >= t`` = defective) on the images given: halfway between
    the lowest score the best cut flags and the next lower score (the highest cut where several tie).

    Pass non-test data only (the validation split): the threshold depends on nothing but these arrays, and
    fitting it on the images it is then scored on would inflate every metric measured at it."""
    s, y = _image_pair(scores, labels, "fit_threshold")
    _both_classes(y, "labels", "fit_threshold")
    return _f1_cut(s, y)


def fit_pixel_threshold(maps: Any, masks: Any, max_pixels: int = MAX_PIXELS) -> float:
    """The pixel threshold maximising pixel F1 (``score >= t`` = defect pixel) on the maps given.

    Beyond ``max_pixels`` pixels it fits on a uniform sample of that many, drawn with a fixed seed, so the
    same arrays always give the same threshold. Pass non-test data only, as for :func:`fit_threshold`."""
    m, t = _pixel_pair(maps, masks, "fit_pixel_threshold")
    _both_classes(t, "mask pixels", "fit_pixel_threshold")
    s, y = m.ravel(), t.ravel()
    if s.size > max_pixels:
        keep = np.sort(np.random.default_rng(0).choice(s.size, max_pixels, replace=False))
        s, y = s[keep], y[keep]
        if not y.any() or y.all():
            raise ValueError(f"fit_pixel_threshold: a sample of {max_pixels} pixels holds one class only; "
                             "raise max_pixels")
    return _f1_cut(s, y)


def _counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(truth.size - tp - fp - fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    accuracy = (tp + tn) / truth.size if truth.size else 0.0
    return {"f1": f1, "accuracy": accuracy, "precision": precision, "recall": recall,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def at_threshold(scores: Any, labels: Any, t: float) -> dict[str, Any]:
    """Image classification at threshold ``t`` (``score >= t`` = defective): F1, accuracy, precision,
    recall and the four counts."""
    s, y = _image_pair(scores, labels, "at_threshold")
    return {"threshold": float(t), "images": int(y.size), **_counts(s.astype(np.float64) >= t, y)}


def masks_at_threshold(maps: Any, masks: Any, t: float) -> dict[str, Any]:
    """Segmentation at threshold ``t`` (``score >= t`` = defect pixel).

    ``mean_iou`` and ``mean_dice``: over the defective images (a mask with a defect pixel), each image's
    predicted mask against its own (None without defective images). ``good_images_clean``: the fraction of
    defect-free images with no pixel flagged (None without any). ``pixel_*``: over all pixels of all images."""
    m, truth = _pixel_pair(maps, masks, "masks_at_threshold")
    pred = m.astype(np.float64) >= t
    defective = truth.reshape(len(truth), -1).any(1)
    n_bad, n_good = int(defective.sum()), int((~defective).sum())
    pixels = _counts(pred, truth)
    return {
        "threshold": float(t),
        "defective_images": n_bad,
        "mean_iou": float(batch_iou(pred[defective], truth[defective]).mean()) if n_bad else None,
        "mean_dice": float(batch_dice(pred[defective], truth[defective]).mean()) if n_bad else None,
        "good_images": n_good,
        "good_images_clean": float((~pred[~defective].reshape(n_good, -1).any(1)).mean()) if n_good else None,
        "pixel_f1": pixels["f1"], "pixel_precision": pixels["precision"], "pixel_recall": pixels["recall"],
    }
