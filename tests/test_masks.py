"""Masks never silently lose a defect: {0,1} masks are read as such, empty masks and empty defect folders are errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.convert.instances import ConvertParams
from pipeline.convert.run import convert_all
from pipeline.data.images import PackedMask, binarize
from pipeline.data.layout import load_category
from pipeline.data.stats import card_markdown, dataset_card
from pipeline.errors import DataError


def _masks(root: Path) -> list[Path]:
    return sorted((root / "bottle" / "ground_truth").rglob("*_mask.png"))


def _rewrite(path: Path, values: np.ndarray) -> None:
    assert cv2.imwrite(str(path), values.astype(np.uint8))


@pytest.mark.parametrize("where", ["middle", "corners", "everywhere", "nowhere"])
def test_packed_mask_is_the_mask(where):
    """What validation keeps of each mask (its bounding-box crop) gives back exactly the mask."""
    mask = np.zeros((7, 9), bool)
    if where == "middle":
        mask[2:5, 3:6] = True
        mask[3, 4] = False
    elif where == "corners":
        mask[0, 0] = mask[6, 8] = True
    elif where == "everywhere":
        mask[:] = True
    packed = PackedMask.pack(mask)
    assert packed.unpack().dtype == bool and np.array_equal(packed.unpack(), mask)
    assert packed.crop.size == {"middle": 9, "corners": mask.size, "everywhere": mask.size, "nowhere": 0}[where]


def test_binarize_reads_a_zero_one_mask_as_such():
    zero_one = np.array([[0, 1], [1, 0]], np.uint8)
    assert binarize(zero_one, 128).tolist() == [[False, True], [True, False]]
    assert binarize(zero_one * 255, 128).tolist() == [[False, True], [True, False]]
    soft = np.array([[0, 100], [200, 255]], np.uint8)  # other masks are still thresholded
    assert binarize(soft, 128).tolist() == [[False, False], [True, True]]


def test_zero_one_masks_keep_every_defect_with_one_note(tiny_root, tiny_copy, capsys):
    for path in _masks(tiny_copy):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        _rewrite(path, mask > 0)
    original = load_category(tiny_root, "bottle")
    capsys.readouterr()
    cat = load_category(tiny_copy, "bottle")
    err = capsys.readouterr().err
    assert "9 mask(s) stored as 0/1" in err and err.count("stored as 0/1") == 1 and "not binary" not in err
    assert len(cat.zero_one_masks) == 9 and cat.nonbinary_masks == []
    for ours, theirs in zip((s for s in cat.samples if s.mask), (s for s in original.samples if s.mask)):
        assert np.array_equal(cat.read_mask(ours), original.read_mask(theirs)) and cat.read_mask(ours).any()
    # the conversion (which binarises each mask itself) finds the same instances as on the 0/255 original
    count = lambda c: {rel: len(v) for rel, v in convert_all(c, ConvertParams()).items()}  # noqa: E731
    assert count(cat) == count(original) and sum(count(cat).values()) >= 9
    card = dataset_card(cat)
    assert len(card["zero_one_masks"]) == 9 and "stored as 0/1" in card_markdown(card)


def test_all_black_mask_is_an_error_naming_the_file(tiny_copy):
    path = tiny_copy / "bottle/ground_truth/contamination/001_mask.png"
    _rewrite(path, np.zeros((64, 64)))
    with pytest.raises(DataError, match=r"contamination/001_mask.png: mask of defect image 001.png marks no "
                                        r"defect \(all zero\)"):
        load_category(tiny_copy, "bottle")


def test_mask_below_the_threshold_is_an_error_not_background(tiny_copy):
    path = tiny_copy / "bottle/ground_truth/broken_large/000_mask.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    _rewrite(path, np.where(mask > 0, 100, 0))
    with pytest.raises(DataError, match=r"broken_large/000_mask.png: .*marks no defect \(every value below "
                                        r"data.mask_threshold=128, maximum 100\)"):
        load_category(tiny_copy, "bottle", mask_threshold=128)
    cat = load_category(tiny_copy, "bottle", mask_threshold=100)  # the threshold the error names reads it
    assert cat.read_mask(next(s for s in cat.samples if s.mask == path)).sum() == (mask > 0).sum()


def test_empty_defect_folder_is_an_error_naming_it(tiny_copy):
    folder = tiny_copy / "bottle/test/broken_small"
    for png in folder.glob("*.png"):
        png.unlink()
    with pytest.raises(DataError, match=r"test/broken_small: defect folder holds no PNG images"):
        load_category(tiny_copy, "bottle")


def test_category_without_defect_images_is_an_error(tiny_copy):
    for defect in ("broken_large", "broken_small", "contamination"):
        shutil.rmtree(tiny_copy / "bottle/test" / defect)
    with pytest.raises(DataError, match=r"bottle/test: no defect images"):
        load_category(tiny_copy, "bottle")
