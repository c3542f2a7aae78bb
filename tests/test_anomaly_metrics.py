"""Anomaly-detection metrics: AUROC against scikit-learn, AUPRO against a slow threshold-by-threshold reference,
F1-fitted thresholds checked by hand, and the one-line errors bad input gets."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from pipeline.metrics import anomaly as am

ndimage = pytest.importorskip("scipy.ndimage")  # the reference labels regions independently of the module's cv2


# --- AUROC ------------------------------------------------------------------------------------------------


def test_image_auroc_is_sklearns_with_ties():
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.2]
    labels = [0, 0, 1, 1, 1, 0, 1, 0]
    assert am.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_edges():
    assert am.image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert am.image_auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert am.image_auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert am.image_auroc(np.array([3, 1, 2]), np.array([True, False, False])) == 1.0  # ints and bools


def test_pixel_auroc_is_sklearns_over_all_pixels():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 9, 11)) < 0.2
    maps = np.round(rng.normal(size=masks.shape) + masks, 1).astype(np.float32)  # many ties across classes
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert am.pixel_auroc(maps, masks) == pytest.approx(want, abs=1e-12)
    # defect pixels the larger class (the other branch of the computation)
    assert am.pixel_auroc(-maps, ~masks) == pytest.approx(roc_auc_score(~masks.ravel(), -maps.ravel()), abs=1e-12)
    # a mean over images would differ: the pixels are pooled
    per_image = np.mean([roc_auc_score(k.ravel(), m.ravel()) for m, k in zip(maps, masks)])
    assert abs(per_image - want) > 1e-6


def test_pixel_auroc_edges():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, 1:3, 1:3] = 1
    assert am.pixel_auroc(masks.astype(float), masks) == 1.0
    assert am.pixel_auroc(np.full(masks.shape, 7.0), masks) == 0.5
    assert am.pixel_auroc(masks[0].astype(float), masks[0]) == 1.0  # one (H, W) map


# --- AUPRO ------------------------------------------------------------------------------------------------


def _slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The PRO curve by definition: threshold at every distinct score, label each mask's 8-connected regions
    (scipy), average each region's overlap, FPR over all defect-free pixels; trapezoid to ``limit``."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3), int)) for m in masks]
    ok = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & ok).sum() / ok.sum()
        overlaps = [pred[i][lab == r].mean() for i, (lab, n) in enumerate(labelled) for r in range(1, n + 1)]
        points.append((fpr, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        if x0 < limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
        break
    return area / limit


def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    """Three 12x12 images: two regions of different sizes (one joined only diagonally), one region, one good
    image; scores on ten levels, high on the large region, mixed on the small one, noise elsewhere."""
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 1:6, 1:6] = True  # 25 px
    masks[0, 8, 8] = masks[0, 9, 9] = masks[0, 10, 10] = True  # one diagonal region of 3 px
    masks[1, 4:7, 2:10] = True  # 24 px
    rng = np.random.default_rng(3)
    maps = rng.integers(0, 6, masks.shape) / 10  # defect-free pixels: 0.0 .. 0.5
    maps[0, 1:6, 1:6] = rng.integers(5, 10, (5, 5)) / 10
    maps[0, 8, 8], maps[0, 9, 9], maps[0, 10, 10] = 0.9, 0.2, 0.5
    maps[1, 4:7, 2:10] = rng.integers(3, 8, (3, 8)) / 10
    return maps, masks


@pytest.mark.parametrize("limit", [0.3, 0.05, 0.5, 1.0])
def test_aupro_matches_the_slow_reference_on_hand_made_maps(limit):
    maps, masks = _hand_made()
    assert len(np.unique(maps)) == 10  # a few thresholds: the reference visits every one
    assert am.aupro(maps, masks, limit) == pytest.approx(_slow_aupro(maps, masks, limit), abs=1e-3)
    assert am.aupro(maps, masks, limit) == pytest.approx(_slow_aupro(maps, masks, limit), abs=1e-9)


def test_aupro_matches_the_slow_reference_on_continuous_maps():
    rng = np.random.default_rng(7)
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[0, 2:7, 3:9] = 1
    masks[0, 12, 12] = 1
    masks[1, 9:15, 1:4] = 1
    masks[1, 3, 10:14] = 1
    masks[3, 5:8, 5:8] = 1  # image 2 is good
    maps = (rng.normal(size=masks.shape) + 1.5 * masks * rng.random(masks.shape)).astype(np.float32)
    assert am.aupro(maps, masks) == pytest.approx(_slow_aupro(maps, masks), abs=1e-3)


def test_aupro_regions_are_eight_connected():
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region, joined diagonally
    masks[0, 3:5, 3:5] = True  # another
    maps = np.zeros(masks.shape)
    maps[0, 0, 0] = maps[0, 1, 1] = 1.0  # finds the whole first region and nothing of the second
    # curve (0, 0), (0, 0.5), (1, 1): at FPR 0.3 the PRO is 0.65, so the area is 0.3 * (0.5 + 0.65) / 2
    assert am.aupro(maps, masks) == pytest.approx(0.575, abs=1e-12)  # 4-connected it would be 0.7167


def test_aupro_perfect_and_anti_correlated_maps():
    _, masks = _hand_made()
    assert am.aupro(masks.astype(float), masks) == pytest.approx(1.0, abs=1e-12)
    assert am.aupro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)
    noisy = -masks.astype(float) + 0.01 * np.random.default_rng(0).random(masks.shape)
    assert am.aupro(noisy, masks) < 0.01


def test_aupro_on_a_realistic_stack():
    """100 maps of 256x256 with several regions per defective image: a value strictly between chance and
    perfect (speed is a benchmark's business, not a test's)."""
    rng = np.random.default_rng(1)
    masks = np.zeros((100, 256, 256), np.uint8)
    for m in masks[:50]:
        for _ in range(rng.integers(1, 4)):
            cv2.circle(m, (int(rng.integers(20, 236)), int(rng.integers(20, 236))), int(rng.integers(2, 30)), 1, -1)
    maps = (rng.normal(size=masks.shape) + 2 * masks).astype(np.float32)
    value = am.aupro(maps, masks)
    assert 0.5 < value < 1.0


# --- thresholds -------------------------------------------------------------------------------------------


def test_fit_threshold_picks_the_f1_optimal_cut():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    labels = [0, 0, 1, 0, 1, 1]
    # F1 of flagging score >= c, for c = 0.6 .. 0.1: 2/4, 4/5, 4/6, 6/7, 6/8, 6/9: the best flags 0.3 and up,
    # so the threshold lies halfway between 0.3 and the next lower score, 0.2
    assert am.fit_threshold(scores, labels) == pytest.approx(0.25)


def test_fit_threshold_reaches_the_best_f1_of_any_cut():
    rng = np.random.default_rng(5)
    for _ in range(20):
        labels = rng.random(40) < 0.4
        labels[:2] = [True, False]
        scores = np.round(rng.normal(size=40) + labels, 1)
        t = am.fit_threshold(scores, labels)
        best = max(f1_score(labels, scores >= c) for c in np.unique(scores))
        assert f1_score(labels, scores >= t) == pytest.approx(best)


def test_threshold_depends_only_on_the_data_it_is_given():
    rng = np.random.default_rng(2)
    val_scores, val_labels = rng.random(30), np.arange(30) % 3 == 0
    test_scores, test_labels = rng.random(30) + 0.5, np.arange(30) % 2 == 0
    val_before = (val_scores.copy(), val_labels.copy())
    t = am.fit_threshold(val_scores, val_labels)
    test_scores[:] = -test_scores  # change everything about the test split
    test_labels[:] = ~test_labels
    am.at_threshold(test_scores, test_labels, t)
    assert am.fit_threshold(val_scores, val_labels) == t
    assert np.array_equal(val_scores, val_before[0]) and np.array_equal(val_labels, val_before[1])
    # ... and the check is not vacuous: fitting on the test split as well would move it
    both = am.fit_threshold(np.r_[val_scores, test_scores], np.r_[val_labels, test_labels])
    assert both != t

    val_maps, val_masks = _hand_made()
    test_maps = np.random.default_rng(4).random(val_maps.shape)
    tp = am.fit_pixel_threshold(val_maps, val_masks)
    test_maps *= -3
    assert am.fit_pixel_threshold(val_maps, val_masks) == tp


def test_fit_pixel_threshold_by_hand_and_subsampled_deterministically():
    maps = np.array([[[0.9, 0.7, 0.2], [0.6, 0.1, 0.3]]])
    masks = np.array([[[1, 1, 0], [0, 0, 1]]])
    # cuts 0.9, 0.7, 0.6, 0.3, 0.2, 0.1 flag 1..6 px with TP 1, 2, 2, 3, 3, 3 of 3 (F1 = 2 TP / (flagged + 3)):
    # F1 2/4, 4/5, 4/6, 6/7, 6/8, 6/9 -> flag 0.3 and up: halfway between 0.3 and 0.2
    assert am.fit_pixel_threshold(maps, masks) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    big_masks = rng.random((3, 40, 40)) < 0.1
    big_maps = rng.normal(size=big_masks.shape) + 2 * big_masks
    sampled = am.fit_pixel_threshold(big_maps, big_masks, max_pixels=1000)
    assert am.fit_pixel_threshold(big_maps, big_masks, max_pixels=1000) == sampled
    assert am.fit_pixel_threshold(big_maps, big_masks) == pytest.approx(sampled, abs=0.5)  # near the full fit


# --- operating points -------------------------------------------------------------------------------------


def test_at_threshold_counts_by_hand():
    got = am.at_threshold([0.9, 0.8, 0.4, 0.3, 0.1], [1, 0, 1, 0, 0], 0.35)
    # flagged: 0.9 (defective), 0.8 (good), 0.4 (defective); missed: nothing
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (2, 1, 2, 0)
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == 1.0
    assert got["f1"] == pytest.approx(0.8) and got["accuracy"] == pytest.approx(0.8)
    assert am.at_threshold([0.5, 0.4], [1, 0], 0.5)["tp"] == 1  # a score equal to t is flagged
    nothing = am.at_threshold([0.1, 0.2], [0, 1], 0.9)
    assert nothing["precision"] == nothing["recall"] == nothing["f1"] == 0.0 and nothing["fn"] == 1


def test_masks_at_threshold_by_hand():
    masks = np.zeros((4, 4, 4), bool)
    maps = np.zeros(masks.shape)
    masks[0, 0:2, 0:2] = True  # 4 px, of which 2 found, plus 2 false
    maps[0, 0, 0:4] = 1.0
    masks[1, 3, 3] = True  # found exactly
    maps[1, 3, 3] = 1.0
    maps[2, 2, 2] = 1.0  # a good image with one false pixel; image 3 is good and clean
    got = am.masks_at_threshold(maps, masks, 0.5)
    assert got["defective_images"] == 2 and got["good_images"] == 2
    assert got["mean_iou"] == pytest.approx((2 / 6 + 1) / 2)
    assert got["mean_dice"] == pytest.approx((4 / 8 + 1) / 2)
    assert got["good_images_clean"] == 0.5
    # pixels: TP 3, FP 3, FN 2
    assert got["pixel_precision"] == pytest.approx(0.5) and got["pixel_recall"] == pytest.approx(0.6)
    assert got["pixel_f1"] == pytest.approx(6 / 11)


# --- bad input --------------------------------------------------------------------------------------------


def _one_line_error(fn, *args, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)


def test_bad_input_raises_one_line_errors():
    maps, masks = _hand_made()
    _one_line_error(am.image_auroc, [0.1, 0.2, 0.3], [0, 1], match="3 scores but 2 labels")
    _one_line_error(am.image_auroc, [0.1, 0.2, 0.3], [0, 0, 0], match="all 3 labels are defect-free")
    _one_line_error(am.image_auroc, [0.1, 0.2], [1, 1], match="all 2 labels are defective")
    _one_line_error(am.image_auroc, [0.1, float("nan")], [0, 1], match="NaN")
    _one_line_error(am.image_auroc, [0.1, 0.2], [0, 2], match="binary")
    _one_line_error(am.pixel_auroc, maps, masks[:, :, :5], match="shape")
    _one_line_error(am.pixel_auroc, maps, np.zeros_like(masks), match="mask pixels are defect-free")
    _one_line_error(am.aupro, maps[:2], masks, match="shape")
    _one_line_error(am.aupro, maps, masks * 255, match="binary")
    _one_line_error(am.aupro, maps, np.zeros_like(masks), match="no defect pixels")
    _one_line_error(am.aupro, maps, masks, 0.0, match="fpr_limit")
    _one_line_error(am.aupro, maps.ravel(), masks.ravel(), match=r"\(N, H, W\)")
    _one_line_error(am.fit_threshold, [0.1, 0.2], [0, 0], match="labels are defect-free")
    _one_line_error(am.fit_pixel_threshold, maps, masks[:1], match="shape")
    _one_line_error(am.at_threshold, [0.1, 0.2], [0], 0.5, match="2 scores but 1 labels")
    _one_line_error(am.masks_at_threshold, maps, masks[:1], 0.5, match="shape")
