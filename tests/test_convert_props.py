"""Round-trip properties of the encoders on generated masks: many components, holes, borders, single pixels."""

import cv2
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.coco import decode as decode_coco
from pipeline.convert.instances import ConvertParams, convert_mask
from pipeline.data.masks import split_instances


@st.composite
def masks(draw):
    h, w = draw(st.integers(8, 48)), draw(st.integers(8, 48))
    m = np.zeros((h, w), np.uint8)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["rect", "ellipse", "pixel", "ring", "line"]))
        x, y = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        if kind == "rect":
            cv2.rectangle(m, (x, y), (x + draw(st.integers(0, w)), y + draw(st.integers(0, h))), 1, -1)
        elif kind == "ellipse":
            cv2.ellipse(m, (x, y), (draw(st.integers(1, 12)), draw(st.integers(1, 12))), 0, 0, 360, 1, -1)
        elif kind == "pixel":
            m[y, x] = 1
        elif kind == "ring":  # a component with a hole
            r = draw(st.integers(3, 12))
            cv2.circle(m, (x, y), r, 1, -1)
            cv2.circle(m, (x, y), draw(st.integers(1, r - 1)), 0, -1)
        else:
            cv2.line(m, (x, y), (draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))), 1, 1)
    return m.astype(bool)


def _components(mask):
    """Independent reference: full-frame labelling, unlike the converter's cropped one."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, n)]


def _iou(a, b):
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


@settings(max_examples=150, deadline=None)
@given(masks())
def test_mask_to_coco_to_mask_round_trip(mask):
    h, w = mask.shape
    exact = convert_mask(mask, ConvertParams(coco_min_iou=1.0))
    union = np.zeros_like(mask)
    for inst in exact:
        union |= decode_coco(inst["segmentation"], h, w)
    assert np.array_equal(union, mask)  # with the bound at 1.0 the round trip is lossless

    default = convert_mask(mask, ConvertParams())
    refs = _components(mask)
    assert len(default) == len(refs)
    for inst in default:
        decoded = decode_coco(inst["segmentation"], h, w)
        ref = max(refs, key=lambda r: np.count_nonzero(r & decoded))
        measured = _iou(decoded, ref)
        assert measured >= 0.99
        assert abs(measured - inst["coco_iou"]) < 1e-9  # the report tells the truth
        assert inst["area"] == int(ref.sum())
        if inst["coco_encoding"] == "polygon":
            holes = cv2.findContours(ref.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[1]
            assert (holes[0][:, 3] < 0).all()  # polygons only for hole-free components


@settings(max_examples=150, deadline=None)
@given(masks())
def test_mask_to_box_is_the_tight_box(mask):
    h, w = mask.shape
    refs = _components(mask)
    boxes = set()
    for inst in convert_mask(mask, ConvertParams()):
        cx, cy, bw, bh = inst["yolo_box"]
        box = (round((cx - bw / 2) * w), round((cy - bh / 2) * h), round(bw * w), round(bh * h))
        assert inst["yolo_box_exact"]
        boxes.add(box)
    expected = set()
    for r in refs:
        ys, xs = np.nonzero(r)
        expected.add((int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
    assert boxes == expected


@settings(max_examples=150, deadline=None)
@given(masks())
def test_yolo_polygon_iou_is_reported_truthfully(mask):
    h, w = mask.shape
    refs = _components(mask)
    for inst in convert_mask(mask, ConvertParams()):
        poly = np.round(np.asarray(inst["yolo_polygon"]) * (w, h)).astype(np.int32)
        canvas = np.zeros((h, w), np.uint8)
        cv2.fillPoly(canvas, [poly], 1)  # how ultralytics rasterises a polygon label
        filled = canvas.astype(bool)
        ref = max(refs, key=lambda r: np.count_nonzero(r & filled))
        assert abs(_iou(filled, ref) - inst["yolo_seg_iou"]) < 1e-9


def test_merge_and_min_area():
    m = np.zeros((30, 30), bool)
    m[5:10, 5:10] = True
    m[5:10, 12:17] = True  # 2 px gap
    m[25, 25] = True  # single pixel
    assert len(convert_mask(m, ConvertParams())) == 3
    merged = convert_mask(m, ConvertParams(merge_distance=2))
    assert sorted(i["area"] for i in merged) == [1, 50]
    assert [i["bbox"] for i in merged if i["area"] == 50] == [[5, 5, 12, 5]]
    assert [i["area"] for i in convert_mask(m, ConvertParams(min_area=2))] == [25, 25]


def test_empty_mask_has_no_instances():
    assert convert_mask(np.zeros((10, 10), bool), ConvertParams()) == []


def _assert_matches_labelling(mask):
    comps = split_instances(mask)
    refs = _components(mask)
    assert len(comps) == len(refs)
    firsts = []
    for comp in comps:
        x, y, w, h = comp.bbox
        placed = np.zeros_like(mask)
        placed[y:y + h, x:x + w] = comp.crop
        assert sum(np.array_equal(placed, r) for r in refs) == 1
        firsts.append(tuple(np.argwhere(placed)[0]))  # (row, col) of its first pixel in raster order
    assert firsts == sorted(firsts)  # raster order (OpenCV's block-based labelling order may differ)


def _pixels(shape, points):
    m = np.zeros(shape, bool)
    for x, y in points:
        m[y, x] = True
    return m


@settings(max_examples=150, deadline=None)
@given(masks())
@example(_pixels((11, 8), [(0, 0), (2, 6), (0, 7), (0, 8), (1, 8), (2, 8), (1, 9), (2, 9), (2, 10), (3, 10)]))
def test_instances_are_the_connected_components(mask):
    _assert_matches_labelling(mask)


def test_components_in_holes_and_overlapping_boxes_are_separated():
    m = np.zeros((40, 40), np.uint8)
    cv2.circle(m, (15, 15), 12, 1, -1)
    cv2.circle(m, (15, 15), 8, 0, -1)
    m[15, 15] = 1  # an island inside the ring's hole: its box lies inside the ring's box
    m[30:38, 30] = 1
    m[37, 30:39] = 1  # an L whose box holds the tip of another L
    m[32, 34:39] = 1
    m[32:35, 38] = 1
    _assert_matches_labelling(m.astype(bool))
    ring = max(split_instances(m.astype(bool)), key=lambda c: c.crop.sum())
    assert len(ring.holes) == 1


def test_many_components_fall_back_to_labelling():
    m = np.zeros((80, 80), bool)
    m[::2, ::2] = True  # 1600 isolated pixels: more than the pairwise box test handles
    _assert_matches_labelling(m)


def test_coco_polygons_for_compact_shapes_rle_for_thin_ones():
    m = np.zeros((260, 280), np.uint8)
    cv2.circle(m, (128, 128), 120, 1, -1)  # a polygon through pixel centres loses ~0.8% of it
    cv2.line(m, (270, 2), (270, 255), 1, 1)  # a polygon would lose half of it
    insts = sorted(convert_mask(m.astype(bool), ConvertParams()), key=lambda i: -i["area"])
    assert [i["coco_encoding"] for i in insts] == ["polygon", "rle"]
    assert all(i["coco_iou"] >= 0.99 for i in insts)
