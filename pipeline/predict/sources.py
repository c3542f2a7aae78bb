"""What ``pipe predict`` reads: the images named on the command line, decoded as the models expect them.

- ``expand``: files, folders (recursively) and glob patterns to a list of image files, each failure kept with
  its reason, so that one bad argument is reported by name while the others are still processed.
- ``read``: one image in OpenCV's convention (BGR or greyscale uint8, converted by ``data.images.to_uint8`` as
  the training images are), with a JPEG's EXIF orientation applied. The file is read once; its structure is checked
  on the bytes before decoding (PNG chunk CRCs, JPEG markers up to end-of-image), so a truncated file is one
  ``DataError`` naming it rather than an image OpenCV quietly filled with grey.
- ``output_names``: unique flat names for the files written per image (overlays, masks).
"""

from __future__ import annotations

import glob
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.data.images import PNG_SIGNATURE, png_damage, to_uint8
from pipeline.errors import DataError
from pipeline.workspace import flat_name

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
FORMATS = "PNG, JPEG, BMP and TIFF"


@dataclass(frozen=True)
class Failure:
    """A source that gave no image: the path (or pattern) as named, and why, on one line."""

    path: Path
    reason: str


# --- expanding the command line's sources -----------------------------------------------------------------


def is_image_name(path: Path | str) -> bool:
    """Whether a file's suffix is one ``pipe predict`` reads (any case: ``IMG_0001.JPG`` counts)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(folder: Path) -> tuple[list[Path], list[Failure]]:
    """The image files under ``folder``, in path order, skipping hidden files and folders (``.ipynb_checkpoints``,
    ``.DS_Store``, editors' temporary copies), which are never meant as inputs.

    A subfolder that cannot be listed is a failure of its own, not the end of the walk."""
    found: list[Path] = []
    failures: list[Failure] = []

    def unreadable(exc: OSError) -> None:
        failures.append(Failure(Path(exc.filename or folder), _one_line(exc.strerror or str(exc))))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        found += [Path(root) / f for f in files if not _hidden(f) and is_image_name(f)]
    found.sort(key=lambda p: p.relative_to(folder).parts)
    return found, failures


def _one_source(source: Path) -> tuple[list[Path], list[Failure]]:
    """An existing file or folder named on the command line."""
    if source.is_dir():
        found, failures = _walk(source)
        if not found and not failures:
            failures.append(Failure(source, f"folder holds no images ({FORMATS})"))
        return found, failures
    if not source.is_file():
        return [], [Failure(source, "not a regular file")]
    if not is_image_name(source):
        kind = f"unsupported file type {source.suffix}" if source.suffix else "no file type suffix"
        return [], [Failure(source, f"{kind}; pipe reads {FORMATS}")]
    return [source], []


def _pattern(pattern: str) -> tuple[list[Path], list[Failure]]:
    """A glob pattern (``**`` spans folders): the image files it matches, folders it matches expanded.

    Non-image files a pattern happens to match are skipped, as a folder's are; a pattern that gives no image
    at all is a failure naming it."""
    found: list[Path] = []
    failures: list[Failure] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            walked, failed = _walk(path)
            found += walked
            failures += failed
        elif path.is_file() and is_image_name(path):
            found.append(path)
    if not found:
        failures.append(Failure(Path(pattern), f"pattern matches no images ({FORMATS})"))
    return found, failures


def expand(sources: Sequence[str | Path]) -> tuple[list[Path], list[Failure]]:
    """Every image the sources name, in command-line order, each once; and the sources that gave none.

    Paths are made absolute (not resolved, so a symlink keeps its own name for the outputs); duplicates are
    recognised by their resolved path, so ``a.png``, ``./a.png`` and a folder holding it give one image."""
    images: list[Path] = []
    failures: list[Failure] = []
    seen: set[Path] = set()
    for source in sources:
        text = str(source)
        if os.path.exists(text):  # a file whose name holds '*' is that file, not a pattern
            found, failed = _one_source(Path(text))
        elif os.path.lexists(text):
            found, failed = [], [Failure(Path(text), "broken symbolic link")]
        elif glob.has_magic(text):
            found, failed = _pattern(text)
        else:
            found, failed = [], [Failure(Path(text), "not found")]
        failures += failed
        for path in found:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                images.append(Path(os.path.abspath(path)))
    return images, failures


def walked(sources: Sequence[str | Path]) -> list[Path]:
    """The folders ``expand`` searches recursively for ``sources``: each folder named, and each folder a pattern
    matches (not a pattern's literal root: ``*.png`` reads the files it matches, not the folder they are in)."""
    folders: list[Path] = []
    for source in sources:
        text = str(source)
        if os.path.exists(text):
            folders += [Path(text)] if os.path.isdir(text) else []
        elif glob.has_magic(text):
            folders += [Path(m) for m in sorted(glob.glob(text, recursive=True)) if os.path.isdir(m)]
    return folders


# --- names of the per-image outputs -----------------------------------------------------------------------

MAX_NAME_BYTES = 200  # below every filesystem's 255-byte limit, leaving room for "_mask.png" and temp names


def _short(name: str) -> str:
    """A name shortened to fit the filesystem: a hash of the whole, then the end (which holds the file name)."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    tail = name.encode()[-(MAX_NAME_BYTES - 9):].decode(errors="ignore")
    return f"{hashlib.sha1(name.encode()).hexdigest()[:8]}_{tail}"


def _stem_key(name: str) -> str:
    """What two names must not share: the name without its suffix, in any case."""
    return os.path.splitext(name)[0].lower()


def output_names(paths: Sequence[Path]) -> list[str]:
    """One name per image for the files written about it: its path below the images' common folder, with
    ``/`` as ``_`` (``test/good/000.png`` -> ``test_good_000.png``, as ``workspace.flat_name``), so images of
    the same name in different folders stay apart; a single image keeps its own name.

    Names are unique even once their suffix is replaced (overlays and masks are PNGs: ``a.png`` and ``a.jpg``)
    and on case-insensitive filesystems; a clash gets ``-2``, ``-3``, ... before the suffix."""
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    parent = os.path.commonpath([os.path.dirname(p) for p in absolute])
    names: list[str] = []
    taken: set[str] = set()
    for path in absolute:
        name = _short(flat_name(Path(os.path.relpath(path, parent)).as_posix()))
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 1
        while _stem_key(candidate) in taken:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        taken.add(_stem_key(candidate))
        names.append(candidate)
    return names


# --- reading one image ------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_JPEG_SIGNATURE = b"\xff\xd8\xff"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length: TEM, RST0-7


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an APP1 Exif payload (a TIFF structure); 1 when absent or
    unreadable (a broken EXIF block leaves the pixels readable, as viewers treat it)."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:  # SHORT: the value sits in the field's first two bytes
                (orientation,) = struct.unpack_from(order + "H", value)
                return orientation if 1 <= orientation <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


def _jpeg_structure(data: bytes) -> tuple[str | None, int]:
    """Check a JPEG's segments up to its first scan, then that its end is there: (what is wrong, or None;
    the EXIF orientation).

    A JPEG that ends before its end-of-image marker is truncated; some OpenCV builds decode it anyway, the
    missing part filled with grey, which would be scored as a real image. Data after EOI (camera trailers,
    motion photos, a second picture appended by MPF) is allowed.

    Segments are walked up to the first scan; from there the end-of-image marker is searched for with
    ``bytes.find`` (a few ms for a 12-megapixel photo, where a marker-by-marker walk of the compressed data
    costs a third of the decoding). Compressed data cannot hold the marker (every 0xFF in it is followed by
    0x00 or a restart marker), so finding it means the data reached its end."""
    n, pos, orientation, exif_seen = len(data), 2, 1, False
    while True:
        if pos >= n:
            return f"cut short at byte {n} (no end-of-image marker)", orientation
        if data[pos] != 0xFF:
            return f"no marker at byte {pos}", orientation
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= n:
            return f"cut short at byte {n} (no end-of-image marker)", orientation
        marker, pos = data[pos], pos + 1
        if marker == 0xD9:
            return None, orientation
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            return f"cut short at byte {n} (no end-of-image marker)", orientation
        (length,) = struct.unpack_from(">H", data, pos)
        end = pos + length
        if length < 2 or end > n:
            return f"segment 0x{marker:02X} cut short at byte {n}", orientation
        if marker == 0xE1 and not exif_seen and data[pos + 2:pos + 8] == b"Exif\x00\x00":
            exif_seen, orientation = True, _exif_orientation(data[pos + 8:end])
        pos = end
        if marker == 0xDA:  # start of the first scan: what follows must reach an end-of-image marker
            if data.find(b"\xff\xd9", pos) < 0:
                return f"cut short at byte {n} in the image data (no end-of-image marker)", orientation
            return None, orientation


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as EXIF ``orientation`` says to show them (the transposes Pillow's ``exif_transpose`` makes)."""
    if orientation == 2:
        image = image[:, ::-1]
    elif orientation == 3:
        image = image[::-1, ::-1]
    elif orientation == 4:
        image = image[::-1]
    elif orientation == 5:
        image = image.swapaxes(0, 1)
    elif orientation == 6:
        image = np.rot90(image, -1)
    elif orientation == 7:
        image = image[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        image = np.rot90(image, 1)
    return np.ascontiguousarray(image)


def _damage(data: bytes) -> tuple[str | None, int]:
    """What is wrong with the file's bytes (None when they look intact), and the JPEG EXIF orientation.

    The format is told by the signature, not the suffix: a JPEG saved as ``.png`` is still read."""
    if not data:
        return "empty file", 1
    if data.startswith(PNG_SIGNATURE):
        return png_damage(data), 1
    if data.startswith(_JPEG_SIGNATURE):
        return _jpeg_structure(data)
    if data.startswith(b"BM") or data.startswith(_TIFF_SIGNATURES):
        return None, 1  # OpenCV refuses a truncated BMP or TIFF itself
    return f"not a {FORMATS.replace(' and ', ' or ')} image", 1


def read(path: Path) -> np.ndarray:
    """The image at ``path``: BGR (H, W, 3) or greyscale (H, W) uint8, upright per its EXIF orientation (JPEG).

    Raises ``DataError`` with one line naming the file when it is missing, empty, truncated, corrupt or not
    an image format ``pipe`` reads."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({_one_line(exc.strerror or exc)})") from None
    damage, orientation = _damage(data)
    if damage:
        raise DataError(f"{path}: unreadable or truncated image ({damage})")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # noqa: BLE001 - cv2.error, MemoryError on a forged header...: one line naming it
        raise DataError(f"{path}: cannot decode image ({_one_line(exc)})") from None
    if image is None or image.size == 0:
        raise DataError(f"{path}: cannot decode image (corrupt or unsupported variant of its format)")
    try:  # whatever the pixels hold (NaN, an exotic depth), one file is one line, never the end of the run
        return _orient(to_uint8(image), orientation)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot convert its {image.dtype} pixels to 8 bits ({type(exc).__name__}: "
                        f"{_one_line(exc)})") from None
