"""The one home of COCO encodings, box conversions and mask overlap: round trips and hand-computed values."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import coco
from pipeline.data.masks import components, split_instances


def _mask() -> np.ndarray:
    """A 6x7 mask with a 3x3 ring (a hole in the middle) and a lone pixel in the last column."""
    m = np.zeros((6, 7), bool)
    m[1:4, 1:4] = True
    m[2, 2] = False
    m[5, 6] = True
    return m


def test_rle_round_trip_whatever_the_dtype_and_memory_order():
    m = _mask()
    for form in (m, m.astype(np.uint8), np.asfortranarray(m), m[:, ::-1][:, ::-1]):
        rle = coco.encode(form)
        assert rle["size"] == [6, 7] and isinstance(rle["counts"], bytes)
        doc = coco.to_json(rle)
        assert isinstance(doc["counts"], str) and doc["size"] == [6, 7]
        assert np.array_equal(coco.decode(doc, 6, 7), m)


def test_runs_are_column_major_background_first():
    # a 2x2 frame with only its bottom-left pixel set: column 0 reads (0, 1), column 1 reads (0, 0)
    rle = coco.from_runs([1, 1, 2], 2, 2)
    assert coco.decode(coco.to_json(rle), 2, 2).tolist() == [[False, False], [True, False]]
    assert rle["counts"] == coco.encode(np.array([[0, 0], [1, 0]]))["counts"]


def test_polygon_rasterises_to_its_pixels():
    # pycocotools fills a polygon through pixel corners' coordinates: a 3x2 rectangle covers x 2..4, y 1..2
    square = [[2.0, 1.0, 5.0, 1.0, 5.0, 3.0, 2.0, 3.0]]
    expected = np.zeros((5, 6), bool)
    expected[1:3, 2:5] = True
    assert np.array_equal(coco.decode(square, 5, 6), expected)
    assert coco.rle_box(coco.from_polygons(square, 5, 6)) == (2.0, 1.0, 3.0, 2.0)
    # two polygons are one annotation: their union
    both = square + [[0.0, 4.0, 1.0, 4.0, 1.0, 5.0, 0.0, 5.0]]
    expected[4, 0] = True
    assert np.array_equal(coco.decode(both, 5, 6), expected)


def test_rle_iou_is_the_iou_of_the_decoded_masks():
    a, b = _mask(), np.zeros((6, 7), bool)
    b[1:5, 2:5] = True
    assert coco.rle_iou(coco.encode(a), coco.encode(b)) == pytest.approx(coco.iou(a, b))


def test_boxes_both_ways_by_hand():
    xyxy = coco.xywh_to_xyxy([[10, 20, 30, 40], [0.5, 1.5, 2, 3]])
    assert xyxy.dtype == np.float32 and xyxy.tolist() == [[10, 20, 40, 60], [0.5, 1.5, 2.5, 4.5]]
    assert coco.xywh_to_xyxy([1, 2, 3, 4]).tolist() == [[1, 2, 4, 6]]  # one box is a batch of one
    assert coco.xywh_to_xyxy([]).shape == (0, 4)
    assert coco.xyxy_to_xywh([[10, 20, 40, 60]]) == [[10.0, 20.0, 30.0, 40.0]]
    # rounded to 0.01 px (what a COCO results file holds), the width taken in float64 from float32 corners
    assert coco.xyxy_to_xywh(np.array([1.004, 2.0, 3.126, 5.5], np.float32)) == [[1.0, 2.0, 2.12, 3.5]]
    assert coco.xyxy_to_xywh(torch.tensor([[0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 4.0, 3.0]])) == [[0, 0, 1, 2], [1, 1, 3, 2]]
    assert coco.xyxy_to_xywh(torch.zeros((0, 4))) == []
    boxes = [[3.0, 4.0, 5.0, 6.0], [0.25, 0.5, 10.0, 0.75]]
    assert coco.xyxy_to_xywh(coco.xywh_to_xyxy(boxes)) == boxes


def test_iou_and_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 px
    b[0, 1:] = True  # 3 px, 2 shared
    assert coco.iou(a, b) == 2 / 4 and coco.dice(a, b) == 2 * 2 / 6
    assert coco.iou(a, a) == coco.dice(a, a) == 1.0
    assert coco.iou(a, ~a) == coco.dice(a, ~a) == 0.0
    assert coco.iou(a.astype(np.uint8), b.astype(np.uint8)) == 0.5  # 0/1 masks read as boolean


def test_empty_masks():
    """Nothing predicted where nothing is scores 1 (a correct rejection), not 0/0; one side empty scores 0."""
    empty, full = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert coco.iou(empty, empty) == coco.dice(empty, empty) == 1.0
    assert coco.iou(empty, full) == coco.dice(full, empty) == 0.0
    assert coco.batch_iou(np.zeros((0, 3, 3), bool), np.zeros((0, 3, 3), bool)).shape == (0,)


def test_numpy_and_torch_give_the_same_scores():
    gen = np.random.default_rng(0)
    pred = gen.random((8, 1, 5, 6)) < np.linspace(0, 0.6, 8)[:, None, None, None]
    truth = gen.random((8, 1, 5, 6)) < 0.3
    truth[0] = False  # pred[0] is empty too
    t_iou = coco.batch_iou(torch.as_tensor(pred), torch.as_tensor(truth))
    t_dice = coco.batch_dice(torch.as_tensor(pred), torch.as_tensor(truth))
    assert t_iou.dtype == torch.float32 and t_iou[0] == 1.0
    np.testing.assert_allclose(t_iou.numpy(), coco.batch_iou(pred, truth), rtol=1e-6)
    np.testing.assert_allclose(t_dice.numpy(), coco.batch_dice(pred, truth), rtol=1e-6)
    assert [coco.iou(p, t) for p, t in zip(pred, truth)] == coco.batch_iou(pred, truth).tolist()
    none = torch.zeros((0, 1, 4, 4), dtype=torch.bool)
    assert coco.batch_iou(none, none).shape == (0,)


def test_sam_loss_iou_is_the_shared_iou_of_thresholded_masks():
    from pipeline.stages.sam.loss import mask_iou

    logits = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    logits[0] = -1.0  # nothing predicted
    target = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    target[0] = 0.0  # nothing there either
    got = mask_iou(logits, target)
    assert got[0] == 1.0
    assert torch.equal(got, coco.batch_iou(logits > 0, target > 0.5))
    assert got.tolist() == pytest.approx([coco.iou(p, t) for p, t in zip((logits > 0).numpy(), (target > 0.5).numpy())])


def test_one_component_type_for_the_card_and_the_converter():
    m = _mask()
    labels, comps = components(m)
    assert [(c.bbox, c.area, len(c.holes)) for c in comps] == [((1, 1, 3, 3), 8, 1), ((6, 5, 1, 1), 1, 0)]
    assert [(c.bbox, c.area) for c in split_instances(m)] == [(c.bbox, c.area) for c in comps]
    assert labels.dtype == np.int32 and np.array_equal(labels > 0, m)
    for k, c in enumerate(comps, 1):
        x, y, w, h = c.bbox
        assert np.array_equal(labels[y:y + h, x:x + w] == k, c.crop)


def test_converting_does_not_load_torch():
    code = ("import sys, pipeline.coco, pipeline.convert.instances, pipeline.convert.writers, pipeline.data.masks; "
            "print([m for m in ('torch', 'torchvision') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
