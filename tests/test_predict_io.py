"""``pipe predict``'s inputs and outputs: expanding sources, reading any image, and the files written per image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import torch

from pipeline.coco import encode, to_json
from pipeline.data.images import read_image, unsquare
from pipeline.errors import DataError, PipeError
from pipeline.predict import sources, writers
from pipeline.predict.models import AnomalyModel, Trained
from pipeline.predict.run import CocoGt, PredictOptions, check_replaceable, predict_batch, run_predict
from pipeline.predict.sources import Failure, expand, output_names, read
from pipeline.workspace import Workspace


def gradient(h: int, w: int) -> np.ndarray:
    """A BGR image whose every row and column differs, so any flip or rotation shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + 2 * y) % 256]).astype(np.uint8)


def save_jpeg(path: Path, bgr: np.ndarray, orientation: int | None = None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(bgr[..., ::-1].copy()).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert str(path) in message and "\n" not in message
    return message


# --- read -------------------------------------------------------------------------------------------------


def test_read_png_grey_colour_16bit_rgba(tmp_path):
    colour = gradient(30, 40)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    cv2.imwrite(str(tmp_path / "grey.png"), colour[..., 0])
    deep = (np.arange(30 * 40).reshape(30, 40) % 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([colour, np.full((30, 40), 7, np.uint8)]))

    assert np.array_equal(read(tmp_path / "colour.png"), colour)
    grey = read(tmp_path / "grey.png")
    assert grey.shape == (30, 40) and grey.dtype == np.uint8 and np.array_equal(grey, colour[..., 0])
    scaled = read(tmp_path / "deep.png")
    assert scaled.dtype == np.uint8 and scaled.shape == (30, 40)
    assert scaled.max() == 255 and np.array_equal(scaled, cv2.convertScaleAbs(deep, alpha=255.0 / 999))
    assert np.array_equal(read(tmp_path / "alpha.png"), colour)  # alpha dropped, colours untouched


def test_read_bmp_tiff_and_odd_sizes(tmp_path):
    image = gradient(1024, 37)  # MVTec's large greyscale frames and a width no model was trained at
    cv2.imwrite(str(tmp_path / "a.bmp"), image)
    cv2.imwrite(str(tmp_path / "a.TIFF"), image[..., 1])
    assert np.array_equal(read(tmp_path / "a.bmp"), image)
    assert np.array_equal(read(tmp_path / "a.TIFF"), image[..., 1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_jpeg_applies_exif_orientation(tmp_path, orientation):
    path = save_jpeg(tmp_path / "photo.jpg", gradient(24, 40), orientation)
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == orientation
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[..., ::-1]
    got = read(path)
    assert got.shape == expected.shape == ((40, 24, 3) if orientation >= 5 else (24, 40, 3))
    assert np.abs(got.astype(int) - expected).mean() < 2  # the same pixels, up to the two decoders' rounding


def test_read_jpeg_without_exif_grey_and_with_trailer(tmp_path):
    grey = gradient(20, 30)[..., 1]
    path = tmp_path / "grey.jpeg"
    Image.fromarray(grey).save(path, "JPEG", quality=95)
    got = read(path)
    assert got.shape == (20, 30) and np.abs(got.astype(int) - grey).mean() < 3
    trailer = tmp_path / "trailer.jpg"  # data after the end-of-image marker (camera trailers) is allowed
    trailer.write_bytes(path.read_bytes() + b"\x00motion-photo-data\xff\xd8")
    assert np.array_equal(read(trailer), got)


def test_read_format_by_content_not_suffix(tmp_path):
    path = save_jpeg(tmp_path / "photo.jpg", gradient(24, 40), 6)
    misnamed = tmp_path / "photo.png"
    misnamed.write_bytes(path.read_bytes())
    assert np.array_equal(read(misnamed), read(path))


def test_read_rejects_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    cv2.imwrite(str(path), gradient(64, 64))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as exc:
        read(path)
    assert "cut short" in one_line_naming(exc, path) or "IEND" in str(exc.value)


@pytest.mark.parametrize("progressive", [False, True])
def test_read_rejects_truncated_jpeg(tmp_path, progressive):
    path = tmp_path / "cut.jpg"
    Image.fromarray(cv2.resize(gradient(30, 40), (400, 300))).save(path, "JPEG", progressive=progressive)
    data = path.read_bytes()
    assert read(path).shape == (300, 400, 3)
    for cut in (len(data) - 2, len(data) * 3 // 4, len(data) // 2, 200, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError) as exc:
            read(path)
        assert "cut short" in one_line_naming(exc, path)


@pytest.mark.parametrize("content", [b"", os.urandom(3000), b"\x89PNG\r\n\x1a\n" + os.urandom(500),
                                     b"BM" + os.urandom(200)])
def test_read_rejects_garbage(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        read(path)
    one_line_naming(exc, path)


def test_float_tiff_with_nan_and_inf_is_read_as_training_reads_it(tmp_path):
    """NaN made ``int(image.max())`` raise, which ended the whole predict run; now NaN and -inf read as 0, +inf as
    the largest finite value, identically for ``pipe predict`` and the stages' ``read_image``."""
    deep = np.linspace(0, 300, 12 * 10, dtype=np.float32).reshape(12, 10)
    deep[0, 0], deep[0, 1], deep[1, 0] = np.nan, np.inf, -np.inf
    path = tmp_path / "nan.tif"
    assert cv2.imwrite(str(path), deep)
    got = read(path)
    assert got.dtype == np.uint8 and got.shape == (12, 10)
    assert got[0, 0] == 0 and got[1, 0] == 0 and got[0, 1] == 255 and got[-1, -1] == 255
    assert np.array_equal(got, read_image(path))
    everything_nan = tmp_path / "allnan.tif"
    assert cv2.imwrite(str(everything_nan), np.full((4, 5), np.nan, np.float32))
    assert not read(everything_nan).any()


def test_a_conversion_error_is_one_line_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), gradient(8, 8))

    def broken(image):
        raise ValueError("cannot convert\nthis")

    monkeypatch.setattr(sources, "to_uint8", broken)
    with pytest.raises(DataError) as exc:
        read(path)
    assert "8 bits" in one_line_naming(exc, path)


def test_read_missing(tmp_path):
    with pytest.raises(DataError) as exc:
        read(tmp_path / "gone.png")
    assert "not found" in one_line_naming(exc, tmp_path / "gone.png")


# --- expand -----------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    for rel in ("a.png", "sub/b.JPG", "sub/deeper/c.tif", "sub/e.bmp", ".hidden.png", ".cache/d.png",
                "notes.txt", "sub/readme"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # expand looks at names only; reading comes later
    (root / "empty").mkdir()
    return root


def test_expand_folder_recursive_sorted_without_hidden(tree):
    images, failures = expand([tree])
    assert failures == []
    assert [p.relative_to(tree).as_posix() for p in images] == ["a.png", "sub/b.JPG", "sub/deeper/c.tif",
                                                                  "sub/e.bmp"]
    assert all(p.is_absolute() for p in images)


def test_expand_files_unsupported_missing_and_empty(tree):
    (tree / "dangling.png").symlink_to(tree / "gone.png")
    images, failures = expand([tree / "notes.txt", tree / "sub/readme", tree / "missing.png", tree / "empty",
                               tree / "dangling.png", tree / "sub/b.JPG"])
    assert images == [tree / "sub/b.JPG"]
    reasons = {f.path.name: f.reason for f in failures}
    assert reasons["notes.txt"] == "unsupported file type .txt; pipe reads PNG, JPEG, BMP and TIFF"
    assert "unsupported" in reasons["readme"] or "suffix" in reasons["readme"]
    assert reasons["missing.png"] == "not found"
    assert "no images" in reasons["empty"]
    assert reasons["dangling.png"] == "broken symbolic link"
    assert all(isinstance(f, Failure) and "\n" not in f.reason for f in failures)


def test_expand_globs(tree, tmp_path):
    images, failures = expand([str(tree / "**" / "*.png"), str(tmp_path / "da*"), str(tree / "*.gif")])
    # the first pattern gives a.png (hidden files are not matched); the folder matched by the second adds the rest
    assert [p.relative_to(tree).as_posix() for p in images] == ["a.png", "sub/b.JPG", "sub/deeper/c.tif",
                                                                  "sub/e.bmp"]
    assert failures == [Failure(tree / "*.gif", "pattern matches no images (PNG, JPEG, BMP and TIFF)")]


def test_expand_deduplicates_in_first_seen_order(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    (tree / "link.png").symlink_to(tree / "sub/e.bmp")
    images, failures = expand(["data/sub/e.bmp", tree, "./data/a.png", str(tree / "sub" / ".." / "a.png")])
    assert failures == []
    # link.png resolves to e.bmp, met first: one image each, in the order first named
    assert [p.relative_to(tree).as_posix() for p in images] == ["sub/e.bmp", "a.png", "sub/b.JPG",
                                                                  "sub/deeper/c.tif"]


# --- output names -----------------------------------------------------------------------------------------


def test_output_names_unique_and_flat(tmp_path):
    root = tmp_path / "mvtec/bottle"
    paths = [root / "test/good/000.png", root / "test/broken_large/000.png", root / "train/good/000.png"]
    assert output_names(paths) == ["test_good_000.png", "test_broken_large_000.png", "train_good_000.png"]
    assert output_names(paths[:1]) == ["000.png"]
    assert output_names([]) == []


def test_output_names_clashes_after_flattening_or_suffix_change(tmp_path):
    paths = [tmp_path / "a_b/c.png", tmp_path / "a/b_c.png", tmp_path / "x/img.png", tmp_path / "x/img.jpg",
             tmp_path / "x/IMG.png"]
    names = output_names(paths)
    assert names[0] == "a_b_c.png" and names[2] == "x_img.png"
    stems = {Path(n).stem.lower() for n in names}
    assert len(stems) == len(paths)  # overlays and masks (.png) stay distinct too
    assert len({writers.mask_name(n) for n in names}) == len(paths)
    long = output_names([tmp_path / ("d" * 150) / ("e" * 150) / "f.png", tmp_path / "g.png"])
    assert all(len(n.encode()) <= sources.MAX_NAME_BYTES and "/" not in n for n in long)
    assert long[0].endswith("f.png")


# --- records for the writers ------------------------------------------------------------------------------

H, W = 48, 64
CLASSES = {"contamination": 1, "broken": 2}


def rect(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def record(source: str, objects: list[tuple[str, np.ndarray, float]], **extra) -> dict:
    """A record as the loop makes it: each object's box is its mask's extent."""
    boxes, masks = [], []
    for i, (name, mask, score) in enumerate(objects):
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        boxes.append({"xyxy": [x1, y1, x2, y2], "bbox": [x1, y1, x2 - x1, y2 - y1], "class": name,
                      "class_id": CLASSES[name] - 1, "score": score})
        masks.append({"box": i, "rle": to_json(encode(mask)), "area": int(mask.sum()), "score": 0.9})
    return {"source": source, "width": W, "height": H, "channels": 1, "boxes": boxes, "masks": masks, **extra}


def ground_truth(records: list[dict], truth: list[list[tuple[str, np.ndarray]]]) -> dict:
    categories = [{"id": i, "name": n} for n, i in CLASSES.items()]
    gt = writers.coco_images(records, [10, 20], categories)
    gt["annotations"] = []
    for image_id, objects in zip([10, 20], truth):
        for name, mask in objects:
            ys, xs = np.nonzero(mask)
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": CLASSES[name],
                "segmentation": to_json(encode(mask)), "area": int(mask.sum()), "iscrowd": 0,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    return gt


def evaluate(gt: dict, results: list[dict], tmp_path: Path, iou_type: str) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    coco_gt = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "res.json")), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def test_coco_results_load_and_score_for_boxes_and_masks(tmp_path):
    truth = [[("contamination", rect(5, 5, 25, 20)), ("broken", rect(30, 10, 60, 40))],
             [("broken", rect(0, 0, 10, 48))]]
    records = [record("/x/a.png", [(n, m, 0.9) for n, m in truth[0]] + [("broken", rect(40, 0, 50, 5), 0.1)]),
               record("/x/b.png", [(n, m, 0.8) for n, m in truth[1]])]
    results = writers.coco_results(records, [10, 20], CLASSES)
    assert len(results) == 4 and {r["image_id"] for r in results} == {10, 20}
    assert results[1] == {"image_id": 10, "category_id": 2, "bbox": [30.0, 10.0, 30.0, 30.0], "score": 0.9,
                          "segmentation": records[0]["masks"][1]["rle"]}
    gt = ground_truth(records, truth)
    assert gt["images"][0] == {"id": 10, "file_name": "/x/a.png", "width": W, "height": H}
    # the one false positive scores below every true detection: AP stays 1
    assert evaluate(gt, results, tmp_path, "bbox") == pytest.approx(1.0)
    assert evaluate(gt, results, tmp_path, "segm") == pytest.approx(1.0)


def test_coco_segm_scores_the_masks_not_the_boxes(tmp_path):
    truth = [[("contamination", rect(5, 5, 25, 25))], [("broken", rect(30, 10, 60, 40))]]
    records = [record("/x/a.png", [(n, m, 0.9) for n, m in truth[0]]),
               record("/x/b.png", [(n, m, 0.9) for n, m in truth[1]])]
    for r in records:  # keep the boxes right but make each mask cover only its box's left quarter
        for box, mask in zip(r["boxes"], r["masks"]):
            x, y, w, h = (int(v) for v in box["bbox"])
            mask["rle"] = to_json(encode(rect(x, y, x + w // 4, y + h)))
    results = writers.coco_results(records, [10, 20], CLASSES)
    gt = ground_truth(records, truth)
    assert evaluate(gt, results, tmp_path, "bbox") == pytest.approx(1.0)
    assert evaluate(gt, results, tmp_path, "segm") == pytest.approx(0.0)


def test_coco_results_without_masks_or_boxes():
    plain = {"source": "/x/a.png", "width": W, "height": H, "boxes": [
        {"xyxy": [1.234, 2.0, 11.0, 22.5], "class": "broken", "class_id": 1, "score": np.float32(0.5)}],
        "masks": None}
    assert writers.coco_results([plain, {"boxes": None}], [1, 2], CLASSES) == [
        {"image_id": 1, "category_id": 2, "bbox": [1.23, 2.0, 9.77, 20.5], "score": 0.5}]


# --- predictions.jsonl ------------------------------------------------------------------------------------


def test_jsonl_line_rounds_and_stays_one_line():
    r = record("/x/line\u2028sep.png", [("broken", rect(1, 1, 9, 9), 0.123456789)],
               label="broken", probs={"good": np.float32(0.0987654321), "broken": 0.9012345678},
               anomaly={"score": 1234.56789, "threshold": 0.000123456789, "anomalous": True, "area": np.int64(7),
                        "pixel_threshold": float("nan"), "region": None},
               timing_ms={"read": 1.23456, "total": 12.3456})
    r["boxes"][0]["xyxy"] = np.array([1.23456, 1.0, 9.0, 9.0])
    line = writers.jsonl_line(r)
    assert line.endswith("\n") and line.count("\n") == 1 and len(line.splitlines()) == 1 and line.isascii()
    back = json.loads(line)
    assert back["source"] == r["source"]
    assert back["boxes"][0]["score"] == 0.12346 and back["boxes"][0]["xyxy"] == [1.23, 1.0, 9.0, 9.0]
    assert back["probs"] == {"good": 0.09877, "broken": 0.90123}
    assert back["anomaly"] == {"score": 1234.57, "threshold": 0.000123457, "anomalous": True, "area": 7,
                               "pixel_threshold": None, "region": None}
    assert back["timing_ms"] == {"read": 1.23, "total": 12.35}
    assert back["masks"][0]["rle"] == r["masks"][0]["rle"] and back["masks"][0]["area"] == 64
    assert json.loads(writers.jsonl_line({"source": "a", "boxes": None, "label": None})) == {
        "source": "a", "boxes": None, "label": None}


# --- masks and overlays -----------------------------------------------------------------------------------


def test_union_mask_and_mvtec_mask_png(tmp_path):
    a, b = rect(5, 5, 25, 20), rect(20, 10, 60, 40)
    union = writers.union_mask(record("/x/a.png", [("broken", a, 0.9), ("contamination", b, 0.8)]))
    assert union.dtype == bool and np.array_equal(union, a | b)
    assert not writers.union_mask({"width": W, "height": H, "masks": None}).any()
    assert writers.union_mask({"width": W, "height": H}).shape == (H, W)

    assert writers.mask_name("000.png") == "000_mask.png"
    assert writers.mask_name("test_good_a.b.jpg") == "test_good_a.b_mask.png"
    path = writers.write_mask(tmp_path / "masks" / "000_mask.png", union)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and stored.ndim == 2 and stored.shape == (H, W)
    assert set(np.unique(stored)) <= {0, 255} and np.array_equal(stored == 255, union)
    ones = writers.write_mask(tmp_path / "ones.png", union.astype(np.uint8))  # a {0, 1} mask is stored as 0/255
    assert np.array_equal(cv2.imread(str(ones), cv2.IMREAD_UNCHANGED), stored)
    assert not writers.write_mask(tmp_path / "empty.png", np.zeros((H, W), bool)).read_bytes() == b""
    with pytest.raises(ValueError):
        writers.write_mask(tmp_path / "bad.png", np.zeros((H, W, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["000_mask.png", "empty.png", "masks", "ones.png"]


def test_overlay_draws_and_adds_heat_map(tmp_path):
    grey = np.full((H, W), 100, np.uint8)
    mask = rect(30, 10, 60, 40)
    r = record("/x/a.png", [("broken", mask, 0.9)], label="broken", probs={"good": 0.2, "broken": 0.8},
               anomaly={"score": 3.2, "threshold": 2.9, "anomalous": True, "pixel_threshold": 2.5})
    path = writers.write_overlay(tmp_path / "overlays" / "a.png", grey, r)
    drawn = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert drawn.shape == (H, W, 3)
    inside = drawn[25, 45].astype(int)  # inside the mask, away from the box's outline: tinted by the class colour
    assert not np.array_equal(inside, [100, 100, 100])
    assert np.array_equal(drawn[45, 5], [100, 100, 100])  # outside everything: untouched
    assert (drawn[:5] != 100).any()  # the caption's band at the top

    heat = np.zeros((H, W), np.float32)
    heat[mask] = 10.0
    side = cv2.imread(str(writers.write_overlay(tmp_path / "overlays" / "b.png", grey, r, heat)))
    assert side.shape == (H, 2 * W, 3)
    hot, cold = side[25, W + 45].astype(int), side[45, W + 5].astype(int)
    assert hot[2] > hot[0] and cold[0] > cold[2]  # red where the map is high, blue where it is zero
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["a.png", "b.png"]  # no temp files


def test_overlay_of_colour_image_without_any_model(tmp_path):
    image = gradient(33, 21)
    path = writers.write_overlay(tmp_path / "c.png", image, {"source": "c", "width": 21, "height": 33,
                                                             "boxes": None, "masks": None, "anomaly": None})
    assert np.array_equal(cv2.imread(str(path)), image)  # nothing to draw: the image itself
    small_map = np.ones((10, 7), np.float32)  # a map at another size is resized to the image's
    assert cv2.imread(str(writers.write_overlay(tmp_path / "d.png", image, {"width": 21, "height": 33},
                                                small_map))).shape == (33, 42, 3)


def test_anomaly_map_file(tmp_path):
    heat = np.linspace(0, 5, 33 * 21, dtype=np.float32).reshape(33, 21)
    assert writers.map_name("test_good_000.png") == "test_good_000.npy"
    path = writers.write_map(tmp_path / "maps" / "a.npy", heat)
    back = np.load(path)
    assert back.dtype == np.float16 and back.shape == (33, 21) and np.allclose(back, heat, rtol=1e-3)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.npy"]


# --- running on fake models (no training): anomaly region, maps, failures, replacing a run ----------------


class ConstantPatchCore(torch.nn.Module):
    """A PatchCore stand-in: every image scores 0.5 and its (imgsz, imgsz) map is ``value`` everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, size, _ = x.shape
        return torch.full((n,), 0.5), torch.full((n, size, size), self.value, dtype=torch.float32)


class FakeClassifier:
    classes = ["good", "broken_large"]
    attempt = "A"
    file = Path("fake-classifier.pt")

    def probs(self, images: list[np.ndarray]) -> np.ndarray:
        return np.tile(np.float32([0.25, 0.75]), (len(images), 1))


def anomaly_model(value: float, pixel_threshold: float, imgsz: int = 8) -> AnomalyModel:
    return AnomalyModel(ConstantPatchCore(value), imgsz, 0.4, pixel_threshold, "cpu", Path("fake-patchcore.pt"))


def test_anomaly_region_is_the_stages_float64_comparison():
    """A threshold just above a map value in float64 but equal to it in float32: the stage (``full_size_scores``)
    flags nothing there; comparing the float32 map with the Python float (NEP 50: in float32) flagged it all."""
    value = np.float32(0.3)
    threshold = float(value) + 1e-12
    assert np.float32(threshold) == value  # the two comparisons really disagree here
    model = anomaly_model(float(value), threshold)
    image = np.zeros((8, 8, 3), np.uint8)
    _, (amap,) = model.score([image])
    stage = unsquare(np.full((8, 8), value, np.float32), 8, 8).astype(np.float64) >= threshold
    assert np.array_equal(model.region(amap), stage) and not stage.any() and (amap >= threshold).all()
    (record,) = predict_batch(Trained(anomaly=model), [image], PredictOptions(0.1, 0.5))
    assert record["anomaly"]["area"] == 0
    # and each map is the stage's unsquare of the model's square map, at the image's own size
    _, (wide,) = anomaly_model(1.5, 1.0).score([np.zeros((20, 30), np.uint8)])
    assert wide.shape == (20, 30) and np.array_equal(wide, unsquare(np.full((8, 8), 1.5, np.float32), 20, 30))


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), gradient(20, 30))
    cv2.imwrite(str(folder / "b.png"), gradient(16, 16)[..., 0])
    nan = np.full((10, 12), 7.0, np.float32)
    nan[2, 3] = np.nan
    cv2.imwrite(str(folder / "c.tif"), nan)
    return folder


def test_fake_run_writes_maps_and_survives_a_nan_image_and_lists_its_files(tmp_path):
    folder = _inputs(tmp_path / "in")
    models = Trained(classifier=FakeClassifier(), anomaly=anomaly_model(2.0, 1.0))
    o = PredictOptions(0.1, 0.5, batch=2, save_overlays=True, save_masks=True, save_maps=True)
    out = tmp_path / "out"
    summary = run_predict(models, [folder], out, o, [], {})
    assert summary["images"] == 3 and summary["failed"] == []  # the NaN TIFF is one more image, not the end
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for rec in lines:
        stored = np.load(rec["anomaly"]["map"])
        assert stored.dtype == np.float16 and stored.shape == (rec["height"], rec["width"])
        assert Path(rec["anomaly"]["map"]).parent == out / "maps" and np.all(stored == 2.0)
    assert summary["files"]["maps"] == str(out / "maps")
    assert sorted(summary["written"]) == sorted(
        ["predictions.jsonl", "coco_results.json", "coco_images.json", "maps/a.npy", "maps/b.npy", "maps/c.npy",
         "overlays/a.png", "overlays/b.png", "overlays/c.tif.png", "masks/a_mask.png", "masks/b_mask.png",
         "masks/c_mask.png"])


def test_a_predict_folder_is_replaced_only_when_it_holds_nothing_else(tmp_path):
    folder = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    o = PredictOptions(0.1, 0.5, save_overlays=True)
    run_predict(Trained(classifier=FakeClassifier()), [folder], out, o, [], {})
    check_replaceable(out)  # only what that run wrote: may be replaced
    check_replaceable(tmp_path / "not-there")
    for extra in (out / "notes.txt", out / "overlays" / "mine.png", out / "masks" / "hand-labelled.png"):
        extra.parent.mkdir(exist_ok=True)
        extra.write_text("the user's")
        with pytest.raises(PipeError) as exc:
            check_replaceable(out)
        assert str(extra) in str(exc.value) and "\n" not in str(exc.value)
        extra.unlink()
    (out / "masks").rmdir()  # an empty folder the run did not make is the user's too
    check_replaceable(out)
    (out / "empty").mkdir()
    with pytest.raises(PipeError, match="empty"):
        check_replaceable(out)


def test_default_predict_names_increment_and_a_name_is_one_folder(tmp_path):
    ws = Workspace("bottle", tmp_path / "runs", tmp_path / "datasets", tmp_path / "weights", tmp_path / "mvtec",
                   tmp_path / "synthetic")
    first = ws.new_predict().folder
    assert first == tmp_path / "runs" / "bottle" / "predict" / "predict"
    first.mkdir(parents=True)
    (first.parent / "predict3").mkdir()
    assert ws.new_predict().folder.name == "predict2"  # the first free one, as ultralytics numbers them
    assert ws.predict("batch-7").folder == first.parent / "batch-7"
    for bad in ("../x", "a/b", "/abs", "", ".", ".."):
        with pytest.raises(PipeError, match="one folder name"):
            ws.predict(bad)


def test_predict_output_overlap_is_checked_on_the_expanded_inputs(tmp_path, monkeypatch):
    """``pipe predict bottle '*.png'`` from a project root writes to runs/... there; an output inside a folder read
    recursively, or holding an input image, is still refused."""
    from pipeline.cli import _input_paths
    from pipeline.outputs import check_output

    monkeypatch.chdir(tmp_path)
    cv2.imwrite("a.png", gradient(8, 8))
    Path("imgs").mkdir()
    cv2.imwrite("imgs/b.png", gradient(8, 8))
    check_output(Path("runs/bottle/predict/predict"), "predict", _input_paths(["*.png"]))
    for source in ("imgs", "im*", "."):
        with pytest.raises(PipeError, match="lies inside the input folder"):
            check_output(Path("imgs/out"), "predict", _input_paths([source]))
    with pytest.raises(PipeError, match="contains the input image"):
        check_output(Path("imgs"), "predict", _input_paths(["imgs/b.png"]))


def test_coco_gt_matches_by_file_name_then_by_path():
    from pathlib import PurePosixPath

    gt = CocoGt(Path("gt.json"), [], {"000.png": [(PurePosixPath("good/000.png"), 1),
                                                  (PurePosixPath("crack/000.png"), 2)],
                                      "test_crack_001.png": [(PurePosixPath("test_crack_001.png"), 7)]})
    assert gt.image_id(Path("/data/x/test_crack_001.png")) == 7
    assert gt.image_id(Path("/data/bottle/test/crack/000.png")) == 2
    assert gt.image_id(Path("/data/elsewhere/000.png")) is None  # two candidates, neither path matches
    assert gt.image_id(Path("/data/other.png")) is None
