"""Reading MVTec images and masks, with errors that name the file.

Headers are probed with Pillow (size and channels without decoding; ``verify`` walks every PNG chunk and
its CRC, which catches truncated and corrupted files in ~2 ms). Pixels are decoded with OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import DataError


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def probe(path: Path) -> ImageInfo:
    """Size and channel count of an image, after checking the whole file is intact.

    The signature is checked before Pillow sees the file: once ultralytics is imported it patches
    ``Image.open`` to try installing an HEIF plugin on unknown files, which must not happen here.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if Path(path).suffix.lower() == ".png" and head != PNG_SIGNATURE:
        raise DataError(f"{path}: unreadable or truncated image (not a PNG file); re-extract or re-download it")
    try:
        with Image.open(path) as im:
            info = ImageInfo(im.width, im.height, len(im.getbands()))
            im.verify()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc}); re-extract or re-download it") from None
    return info


def read_image(path: Path) -> np.ndarray:
    """HxWx3 BGR uint8 for colour images, HxW uint8 for greyscale (OpenCV's conventions)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot decode image; re-extract or re-download it")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1, int(img.max())))
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def read_mask_raw(path: Path) -> np.ndarray:
    """The mask as stored, single channel uint8 (colour masks are reduced to their maximum channel)."""
    mask = read_image(path)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask


def is_binary(mask: np.ndarray) -> bool:
    """Stored as MVTec does: only 0 and 255."""
    return bool(np.isin(mask, (0, 255)).all())


def is_zero_one(mask: np.ndarray) -> bool:
    """Stored as {0, 1} (common in re-exported copies): thresholding it at 128 would erase every defect."""
    return mask.size > 0 and int(mask.max()) == 1


def binarize(mask: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Boolean mask: True where the stored value is at least ``threshold``.

    A mask whose maximum is 1 is read as a {0, 1} mask (foreground where it is 1), so that every caller,
    not only the validation, keeps the defects of such a copy instead of reading them as background.
    """
    return mask >= (1 if is_zero_one(mask) else threshold)
