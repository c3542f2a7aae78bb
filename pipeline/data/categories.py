"""What MVTec AD contains, per category, from Bergmann et al. (CVPR 2019, Table 1).

The known image counts let ``pipe download`` verify an archive whose publisher gives no checksum per
category, and let ``pipe stats`` flag an incomplete copy. ``resolve_root`` says where the categories are
found; it lives here, away from the image readers, because every command's up-to-date check needs it and
should not pay for importing OpenCV and NumPy to skip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataError

DEFAULT_ROOT = Path("datasets/mvtec")


def resolve_root(root: str | Path | None) -> Path:
    """``--root`` (or the config's data.root), else ``$MVTEC_ROOT``, else ``datasets/mvtec``."""
    if root:
        return Path(root)
    env = os.environ.get("MVTEC_ROOT")
    return Path(env) if env else DEFAULT_ROOT


@dataclass(frozen=True)
class CategorySpec:
    name: str
    kind: str  # "object" or "texture"
    defects: tuple[str, ...]  # sorted, as the test/ folders are named
    size: int  # image side in pixels (all MVTec AD images are square)
    channels: int  # 3 (RGB) or 1 (greyscale)
    train_good: int
    test_good: int
    test_defective: int

    @property
    def classes(self) -> tuple[str, ...]:
        """Classification labels: ``good`` first, then the defects (detection uses ``defects`` only)."""
        return ("good", *self.defects)


def _spec(name, kind, defects, size, channels, train_good, test_good, test_defective) -> CategorySpec:
    return CategorySpec(name, kind, tuple(sorted(defects.split())), size, channels, train_good, test_good, test_defective)


CATEGORIES: dict[str, CategorySpec] = {
    s.name: s
    for s in [
        _spec("bottle", "object", "broken_large broken_small contamination", 900, 3, 209, 20, 63),
        _spec("cable", "object", "bent_wire cable_swap combined cut_inner_insulation cut_outer_insulation "
              "missing_cable missing_wire poke_insulation", 1024, 3, 224, 58, 92),
        _spec("capsule", "object", "crack faulty_imprint poke scratch squeeze", 1000, 3, 219, 23, 109),
        _spec("carpet", "texture", "color cut hole metal_contamination thread", 1024, 3, 280, 28, 89),
        _spec("grid", "texture", "bent broken glue metal_contamination thread", 1024, 1, 264, 21, 57),
        _spec("hazelnut", "object", "crack cut hole print", 1024, 3, 391, 40, 70),
        _spec("leather", "texture", "color cut fold glue poke", 1024, 3, 245, 32, 92),
        _spec("metal_nut", "object", "bent color flip scratch", 700, 3, 220, 22, 93),
        _spec("pill", "object", "color combined contamination crack faulty_imprint pill_type scratch", 800, 3, 267, 26, 141),
        _spec("screw", "object", "manipulated_front scratch_head scratch_neck thread_side thread_top", 1024, 1, 320, 41, 119),
        _spec("tile", "texture", "crack glue_strip gray_stroke oil rough", 840, 3, 230, 33, 84),
        _spec("toothbrush", "object", "defective", 1024, 3, 60, 12, 30),
        _spec("transistor", "object", "bent_lead cut_lead damaged_case misplaced", 1024, 3, 213, 60, 40),
        _spec("wood", "texture", "color combined hole liquid scratch", 1024, 3, 247, 19, 60),
        _spec("zipper", "texture", "broken_teeth combined fabric_border fabric_interior rough split_teeth "
              "squeezed_teeth", 1024, 1, 240, 32, 119),
    ]
}


def get_category(name: str) -> CategorySpec:
    try:
        return CATEGORIES[name]
    except KeyError:
        raise DataError(f"unknown MVTec AD category {name!r}; known: {', '.join(CATEGORIES)}") from None
