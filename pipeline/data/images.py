"""Reading MVTec images and masks, with errors that name the file.

Every PNG chunk's CRC is checked first (``png_damage``), which catches truncated and corrupted files in
well under a millisecond; a PNG's size and channels then come from its IHDR chunk, other formats' from
Pillow (without decoding). Pixels are decoded with OpenCV.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import DataError


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_damage(data: bytes) -> str | None:
    """What is wrong with a PNG file's chunks (one cut short, a CRC that does not match, no IEND), or None.

    The check Pillow's ``verify`` makes, on the file read in one piece: Pillow reads each chunk in two
    calls from Python, which made it the largest cost of validating a category (every image is checked
    before any stage runs).
    """
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, end = bytes(view[pos + 4:pos + 8]), pos + 8 + length
        if end + 4 > len(data):
            return f"chunk {kind!r} cut short at byte {len(data)}"
        if zlib.crc32(view[pos + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            return f"bad checksum in chunk {kind!r} at byte {pos}"
        if kind == b"IEND":
            return None
        pos = end + 4
    return f"no IEND chunk: file ends at byte {len(data)}"


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> bands, as Pillow counts them (palette: 1)


def _png_info(data: bytes) -> ImageInfo:
    """Width, height and channels from a PNG's IHDR chunk (whose CRC ``png_damage`` has checked)."""
    if data[12:16] != b"IHDR":
        raise DataError("first chunk is not IHDR")
    width, height, _, colour = struct.unpack_from(">IIBB", data, 16)
    if colour not in PNG_CHANNELS:
        raise DataError(f"unknown PNG colour type {colour}")
    return ImageInfo(width, height, PNG_CHANNELS[colour])


def probe(path: Path) -> ImageInfo:
    """Size and channel count of an image, after checking the whole file is intact.

    The signature is checked before Pillow sees the file: once ultralytics is imported it patches
    ``Image.open`` to try installing an HEIF plugin on unknown files, which must not happen here.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    png = Path(path).suffix.lower() == ".png"
    damage = ("not a PNG file" if not data.startswith(PNG_SIGNATURE) else png_damage(data)) if png else None
    if damage:
        raise DataError(f"{path}: unreadable or truncated image ({damage}); re-extract or re-download it")
    if png:  # the header says size and channels: no need to hand the file to Pillow
        try:
            return _png_info(data)
        except DataError as exc:
            raise DataError(f"{path}: unreadable image ({exc}); re-extract or re-download it") from None
    from PIL import Image, UnidentifiedImageError  # other formats only (an import MVTec's PNGs never pay)

    try:
        with Image.open(io.BytesIO(data)) as im:
            info = ImageInfo(im.width, im.height, len(im.getbands()))
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc}); re-extract or re-download it") from None
    return info


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A decoded image (``cv2.IMREAD_UNCHANGED``) as 8-bit BGR (H, W, 3) or greyscale (H, W): the one conversion
    the training images (``read_image``) and ``pipe predict``'s inputs (``predict.sources.read``) both go
    through, so a model sees a deep image the same way in training and in use.

    Deeper images are scaled by their largest finite value (absolute values, as ``cv2.convertScaleAbs``). A float
    image (TIFF) may hold NaN or infinities, where ``max`` would be NaN and the scale meaningless: NaN and -inf
    count as 0, +inf as the largest finite value. Alpha is dropped; grey + alpha and single-channel (H, W, 1)
    arrays become (H, W)."""
    if image.dtype != np.uint8:
        if image.dtype.kind == "f":
            image = image.astype(np.float32) if image.dtype.itemsize < 4 else image  # float16: OpenCV has no scaling
            finite = np.isfinite(image)
            top = float(np.abs(image[finite]).max()) if finite.any() else 0.0
            image = np.nan_to_num(image, nan=0.0, posinf=top, neginf=0.0)  # a copy: the caller's array is kept
        else:
            top = max(int(image.max()), -int(image.min())) if image.size else 0
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(top)))
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] in (1, 2):  # grey (+ alpha, where a decoder keeps it so)
        image = np.ascontiguousarray(image[..., 0])
    return image


def read_image(path: Path) -> np.ndarray:
    """HxWx3 BGR uint8 for colour images, HxW uint8 for greyscale (OpenCV's conventions; ``to_uint8``)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot decode image; re-extract or re-download it")
    try:
        return to_uint8(img)
    except (cv2.error, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot convert the decoded {img.dtype} image to 8 bits "
                        f"({' '.join(str(exc).split())}); re-extract or re-download it") from None


def to_rgb(image: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 from a decoded BGR or greyscale image (grey as three equal channels)."""
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """RGB (size, size, 3) uint8 from a decoded BGR or greyscale image, area-resized (aspect not kept): how the
    classifier and the good-only detector see an image, in training and in ``pipe predict`` alike."""
    return cv2.resize(to_rgb(image), (size, size), interpolation=cv2.INTER_AREA)


def unsquare(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (size, size) map computed on :func:`square`'s image, stretched back over the image's own ``height`` x
    ``width`` pixels by bilinear interpolation (float32): so a score map is thresholded against a mask at the
    resolution the mask, and every other stage's masks, have."""
    return cv2.resize(np.asarray(values, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def read_mask_raw(path: Path) -> np.ndarray:
    """The mask as stored, single channel uint8 (colour masks are reduced to their maximum channel)."""
    mask = read_image(path)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask


def is_binary(mask: np.ndarray) -> bool:
    """Stored as MVTec does: only 0 and 255 (no value in 1..254; ``cv2.inRange`` asks that 20x faster than
    ``np.isin``, which matters as validation asks it of every mask)."""
    return mask.size == 0 or not cv2.inRange(mask, 1, 254).any()


def is_zero_one(mask: np.ndarray) -> bool:
    """Stored as {0, 1} (common in re-exported copies): thresholding it at 128 would erase every defect."""
    return mask.size > 0 and int(mask.max()) == 1


def binarize(mask: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Boolean mask: True where the stored value is at least ``threshold``.

    A mask whose maximum is 1 is read as a {0, 1} mask (foreground where it is 1), so that every caller,
    not only the validation, keeps the defects of such a copy instead of reading them as background.
    """
    return mask >= (1 if is_zero_one(mask) else threshold)


@dataclass(frozen=True)
class PackedMask:
    """A binarised mask kept as the crop of its bounding box (``x``, ``y``: the crop's corner).

    Validation decodes every mask anyway; keeping the result lets a command's later readers (the dataset
    card, the conversion, its worker processes) rebuild the mask instead of decoding the PNG again. The
    crop keeps what a category holds in memory, and what a worker is sent, to the defects' size, not
    the frame's.
    """

    shape: tuple[int, int]
    x: int
    y: int
    crop: np.ndarray

    @classmethod
    def pack(cls, mask: np.ndarray) -> PackedMask:
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))  # (0, 0, 0, 0) for an empty mask
        return cls((mask.shape[0], mask.shape[1]), x, y, mask[y:y + h, x:x + w].copy())

    def unpack(self) -> np.ndarray:
        """The full boolean HxW mask."""
        mask = np.zeros(self.shape, dtype=bool)
        mask[self.y:self.y + self.crop.shape[0], self.x:self.x + self.crop.shape[1]] = self.crop
        return mask
