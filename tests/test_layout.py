import cv2
import numpy as np
import pytest

from pipeline.data.categories import CATEGORIES
from pipeline.data.layout import load_category, resolve_root
from pipeline.errors import DataError


def test_all_fifteen_categories_known():
    assert len(CATEGORIES) == 15
    grey = {n for n, s in CATEGORIES.items() if s.channels == 1}
    assert grey == {"screw", "grid", "zipper"}
    assert all(CATEGORIES[n].size == 1024 for n in grey)
    # totals published in the MVTec AD paper
    assert sum(s.train_good for s in CATEGORIES.values()) == 3629
    assert sum(s.test_good + s.test_defective for s in CATEGORIES.values()) == 1725


def test_valid_category_loads(tiny_root):
    cat = load_category(tiny_root, "bottle")
    assert len(cat.samples) == 6 + 2 + 3 * 3
    assert cat.provenance["kind"] == "synthetic"
    defect = next(s for s in cat.samples if s.label == "broken_small")
    assert defect.rel == "test/broken_small/000.png"
    assert cat.read_mask(defect).any()
    good = next(s for s in cat.samples if s.label == "good")
    assert not cat.read_mask(good).any() and cat.read_mask(good).shape == (64, 64)


def test_missing_category_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match=r"no such category folder; run `pipe download bottle`"):
        load_category(tmp_path, "bottle")


def test_unknown_category():
    with pytest.raises(DataError, match="unknown MVTec AD category 'bottel'"):
        load_category(".", "bottel")


def test_defect_image_without_mask(tiny_copy):
    (tiny_copy / "bottle/ground_truth/contamination/001_mask.png").unlink()
    with pytest.raises(DataError, match=r"contamination/001.png: defect image without its mask \(expected .*001_mask.png\)"):
        load_category(tiny_copy, "bottle")


def test_mask_size_mismatch(tiny_copy):
    path = tiny_copy / "bottle/ground_truth/broken_large/002_mask.png"
    cv2.imwrite(str(path), np.zeros((32, 64), np.uint8))
    with pytest.raises(DataError, match=r"002_mask.png: mask is 64x32 but its image 002.png is 64x64"):
        load_category(tiny_copy, "bottle")


def test_truncated_png(tiny_copy):
    path = tiny_copy / "bottle/test/good/001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"test/good/001.png: unreadable or truncated image"):
        load_category(tiny_copy, "bottle")


@pytest.mark.parametrize("where", ["image", "mask"])
def test_flipped_byte_fails_its_png_checksum(tiny_copy, where):
    rel = "test/broken_small/001.png" if where == "image" else "ground_truth/broken_small/001_mask.png"
    path = tiny_copy / "bottle" / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the pixel data: the header still reads, the CRC does not match
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{rel}: unreadable or truncated image \(bad checksum in chunk b'IDAT'"):
        load_category(tiny_copy, "bottle")


def test_garbage_file_named_png(tiny_copy):
    (tiny_copy / "bottle/train/good/003.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"train/good/003.png: unreadable or truncated image"):
        load_category(tiny_copy, "bottle")


def test_error_counts_further_problems(tiny_copy):
    for i in range(3):
        (tiny_copy / f"bottle/ground_truth/broken_small/{i:03d}_mask.png").unlink()
    with pytest.raises(DataError, match=r"and 2 more problem"):
        load_category(tiny_copy, "bottle")


def test_nonbinary_mask_is_thresholded_with_warning(tiny_copy, capsys):
    path = tiny_copy / "bottle/ground_truth/contamination/000_mask.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    soft = np.where(mask > 0, 200, 0).astype(np.uint8)
    soft[0, 0] = 100  # below the threshold: must read as background
    cv2.imwrite(str(path), soft)
    cat = load_category(tiny_copy, "bottle", mask_threshold=128)
    assert str(path) in cat.nonbinary_masks
    assert "not binary" in capsys.readouterr().err
    sample = next(s for s in cat.samples if s.mask == path)
    read = cat.read_mask(sample)
    assert read.sum() == (mask > 0).sum() and not read[0, 0]


def test_unknown_defect_folder(tiny_copy):
    (tiny_copy / "bottle/test/scratched").mkdir()
    with pytest.raises(DataError, match="unknown defect class 'scratched' for bottle"):
        load_category(tiny_copy, "bottle")


def test_root_precedence(monkeypatch, tmp_path):
    assert str(resolve_root(None)) == "datasets/mvtec"
    monkeypatch.setenv("MVTEC_ROOT", str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert str(resolve_root("given")) == "given"


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "LA", "RGBA", "I;16"])
def test_png_header_gives_what_pillow_reads(tmp_path, mode):
    """probe reads a PNG's size and channels from its IHDR chunk: the same answer Pillow gives."""
    from PIL import Image

    from pipeline.data.images import probe

    path = tmp_path / f"x-{mode.replace(';', '')}.png"
    Image.new(mode, (37, 21)).save(path)
    info = probe(path)
    with Image.open(path) as im:
        assert (info.width, info.height, info.channels) == (im.width, im.height, len(im.getbands()))
