"""Connected components of defect masks: the one definition of an 'instance' every stage shares."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CONNECTIVITY = 8  # diagonal neighbours belong to the same defect, as in MVTec's own region metrics


@dataclass(frozen=True)
class Component:
    label: int  # index in the label map
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # x, y, w, h: the tight box, inclusive of every pixel


def components(mask: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """Label map (int32, 0 = background) and the components of a boolean mask, in raster order."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=CONNECTIVITY)
    comps = [
        Component(i, int(stats[i, cv2.CC_STAT_AREA]),
                  (int(stats[i, 0]), int(stats[i, 1]), int(stats[i, 2]), int(stats[i, 3])))
        for i in range(1, n)
    ]
    return labels, comps
