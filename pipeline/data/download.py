"""Getting a category onto disk: the official MVTec AD download, or a local archive or folder.

MVTec publishes a SHA-256 only for the full archive (via anomalib); the per-category archives have none,
so after extraction every category is also checked against its published image counts. Installation
goes through a staging folder and one rename: a category folder under the data root is always complete.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

from pipeline.data.categories import CategorySpec, get_category
from pipeline.data.layout import validate_dir
from pipeline.errors import DataError
from pipeline.fetch import FetchError, fetch
from pipeline.io import atomic_dir

log = logging.getLogger(__name__)

HOMEPAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
_BASE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
FULL_URL = _BASE + "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
FULL_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
CATEGORY_URLS = {
    "bottle": _BASE + "420937370-1629951468/bottle.tar.xz",
    "cable": _BASE + "420937413-1629951498/cable.tar.xz",
    "capsule": _BASE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _BASE + "420937484-1629951672/carpet.tar.xz",
    "grid": _BASE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _BASE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _BASE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _BASE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/420938129-1629953099/pill.tar.xz",
    "screw": _BASE + "420938130-1629953152/screw.tar.xz",
    "tile": _BASE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _BASE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _BASE + "420938166-1629953277/transistor.tar.xz",
    "wood": _BASE + "420938383-1629953354/wood.tar.xz",
    "zipper": _BASE + "420938385-1629953449/zipper.tar.xz",
}
ARCHIVE_SUFFIXES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar", ".zip")


def _find_category_dir(folder: Path, name: str) -> Path:
    """The folder holding train/ and test/: ``folder`` itself, ``folder/<name>``, or one level deeper."""
    for cand in [folder, folder / name, *sorted(folder.glob(f"*/{name}"))]:
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise DataError(f"{folder}: no {name}/train and {name}/test inside; is this an MVTec AD {name} copy?")


def _extract(archive: Path, name: str, dest: Path) -> None:
    """Extract only ``<name>/...`` members (or a bare category) into ``dest``, refusing unsafe paths."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
            return
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if f"/{name}/" in f"/{m.name}/"] or tf.getmembers()
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            if not safe and any(m.name.startswith("/") or ".." in Path(m.name).parts for m in members):
                raise DataError(f"{archive}: refusing to extract members with absolute or '..' paths")
            tf.extractall(dest, members=members, **safe)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); the archive is damaged or incomplete, fetch it again") from None


def _check_counts(cat_dir: Path, spec: CategorySpec, strict: bool) -> None:
    cat = validate_dir(cat_dir, spec)
    train = sum(1 for s in cat.samples if s.split == "train")
    test_good = sum(1 for s in cat.samples if s.split == "test" and s.label == "good")
    defective = sum(1 for s in cat.samples if s.split == "test" and s.label != "good")
    found, expected = (train, test_good, defective), (spec.train_good, spec.test_good, spec.test_defective)
    if found != expected:
        msg = (f"{spec.name}: found train/good, test/good, test defective = {found}, but MVTec AD publishes "
               f"{expected}")
        if strict:
            raise DataError(msg + "; the download is incomplete, fetch it again")
        log.warning(msg + "; installing anyway (a modified copy?)")


def install(category: str, root: Path, source: Path | None = None, full: bool = False,
            sha256: str | None = None, force: bool = False, cache: Path | None = None) -> Path:
    """Put ``<root>/<category>`` in place from the official download or from ``source``; return it."""
    spec = get_category(category)
    target = Path(root) / category
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: a file stands where the category folder goes; move it away and run again")
    if target.exists() and not force:
        log.info(f"{target} already exists; pass --force to replace it")
        return target
    if source is not None:
        source = Path(source)
        if not source.exists():
            raise DataError(f"{source}: no such file or folder (--from expects an MVTec archive or extracted folder)")
        archive = source if source.is_file() else None
        strict = False
    else:
        url = FULL_URL if full else CATEGORY_URLS[category]
        expected = sha256 or (FULL_SHA256 if full else None)
        archive = (cache or Path(root) / ".downloads") / url.rsplit("/", 1)[1]
        try:
            fetch(url, archive, sha256=expected)
        except FetchError as exc:
            raise DataError(
                f"{exc}: download {category}.tar.xz by hand from {HOMEPAGE}, then run "
                f"`pipe download {category} --from PATH` (or extract it so that {target}/train/good exists)"
            ) from None
        strict = True
    with atomic_dir(target) as staging:
        if archive is not None:
            unpack = staging.with_name(staging.name + ".unpack")
            try:
                _extract(archive, category, unpack)
                found = _find_category_dir(unpack, category)
                shutil.rmtree(staging)
                shutil.move(str(found), staging)
            finally:
                shutil.rmtree(unpack, ignore_errors=True)
        else:
            found = _find_category_dir(source, category)  # type: ignore[arg-type]
            shutil.rmtree(staging)
            shutil.copytree(found, staging)
        _check_counts(staging, spec, strict)
    return target
