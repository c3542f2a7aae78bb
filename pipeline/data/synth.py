"""A deterministic synthetic stand-in for an MVTec AD category, in the exact MVTec layout.

It exists so that tests and the embedded default (`just all` on a machine with no data) exercise every
stage on real files. For ``bottle`` it imitates the real geometry: a top-down bottle mouth (dark glass,
a bright rim ring, a dark opening) on a light background, with ``broken_large`` (a large chunk missing at
the rim), ``broken_small`` (one to three chips on the rim) and ``contamination`` (a foreign blob inside).
Other categories get a generic object or texture with one blob or scratch per defect class. Each image is
drawn from its own seeded generator, so any subset regenerates identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.console import track
from pipeline.data.categories import CategorySpec, get_category
from pipeline.data.layout import SYNTHETIC_MARKER
from pipeline.errors import DataError
from pipeline.io import atomic_dir, write_json

GENERATOR_VERSION = 1
Drawer = Callable[[np.random.Generator, int, str], tuple[np.ndarray, np.ndarray]]


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, jag: float = 0.3, n: int = 16) -> np.ndarray:
    """An irregular star-shaped polygon around (cx, cy): always simple, so its fill is one component."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = r * (1 + jag * rng.uniform(-1, 1, n))
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).round().astype(np.int32)


def _fill(img: np.ndarray, mask: np.ndarray, poly: np.ndarray, colour: tuple[int, int, int]) -> None:
    cv2.fillPoly(img, [poly], colour)
    cv2.fillPoly(mask, [poly], 255)


def _finish(rng: np.random.Generator, img: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.normal(0, sigma, img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _bottle(rng: np.random.Generator, size: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    s = size
    cx, cy = s / 2 + rng.uniform(-0.015, 0.015) * s, s / 2 + rng.uniform(-0.015, 0.015) * s
    c = (round(cx), round(cy))
    scale = rng.uniform(0.97, 1.03)
    img = np.full((s, s, 3), 232, np.uint8)
    # Dark glass with soft concentric rings, a bright rim band with orange glints, a dark opening.
    for frac, grey in [(0.47, 60), (0.44, 45), (0.41, 62), (0.38, 50)]:
        cv2.circle(img, c, round(frac * scale * s), (grey, grey + 2, grey + 4), -1)
    r_rim_out, r_rim_in, r_hole = 0.36 * scale * s, 0.27 * scale * s, 0.22 * scale * s
    cv2.circle(img, c, round(r_rim_out), (70, 78, 72), -1)
    for _ in range(3):
        a0 = rng.uniform(0, 360)
        cv2.ellipse(img, c, (round(0.345 * scale * s),) * 2, 0, a0, a0 + rng.uniform(30, 90), (40, 95, 180),
                    max(1, round(0.008 * s)))
    cv2.circle(img, c, round(r_rim_in), (48, 56, 50), -1)
    cv2.circle(img, c, round(r_hole), (30, 22, 28), -1)
    img = cv2.GaussianBlur(img, (0, 0), max(0.6, s / 300))
    mask = np.zeros((s, s), np.uint8)

    if label == "broken_large":
        a0, span = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(35, 70))
        angles = np.linspace(a0, a0 + span, 24)
        outer = r_rim_out * 1.05 * (1 + 0.04 * rng.uniform(-1, 1, angles.size))
        inner = r_hole * 0.95 * (1 + 0.04 * rng.uniform(-1, 1, angles.size))
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, outer)]
        pts += [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles[::-1], inner[::-1])]
        _fill(img, mask, np.round(pts).astype(np.int32), tuple(int(v) for v in rng.integers(140, 190, 3)))
    elif label == "broken_small":
        k = int(rng.integers(1, 4))
        base = rng.uniform(0, 2 * math.pi)
        for i in range(k):  # chips spread around the rim so they never touch
            a = base + i * 2 * math.pi / k + rng.uniform(-0.3, 0.3)
            r = rng.uniform(0.29, 0.34) * scale * s
            poly = _blob(rng, cx + r * math.cos(a), cy + r * math.sin(a), max(2.0, rng.uniform(0.018, 0.035) * s))
            _fill(img, mask, poly, tuple(int(v) for v in rng.integers(170, 230, 3)))
    elif label == "contamination":
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.2) * s
        poly = _blob(rng, cx + r * math.cos(a), cy + r * math.sin(a), max(3.0, rng.uniform(0.03, 0.07) * s), jag=0.4)
        _fill(img, mask, poly, (int(rng.integers(60, 110)), int(rng.integers(90, 140)), int(rng.integers(120, 170))))
    return _finish(rng, img), mask


def _generic(spec: CategorySpec) -> Drawer:
    """Objects: a centred ellipse on a plain background; textures: a periodic pattern. One defect each."""

    def draw(rng: np.random.Generator, size: int, label: str) -> tuple[np.ndarray, np.ndarray]:
        s = size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        if spec.kind == "texture":
            period = s / rng.uniform(8, 14)
            base = 120 + 40 * np.sin(2 * math.pi * xx / period) * np.cos(2 * math.pi * yy / period)
            img = np.repeat(base[..., None], 3, 2).astype(np.uint8)
        else:
            img = np.full((s, s, 3), 40, np.uint8)
            cv2.ellipse(img, (s // 2, s // 2), (round(0.35 * s), round(0.28 * s)), rng.uniform(0, 180), 0, 360,
                        (150, 160, 170), -1)
        mask = np.zeros((s, s), np.uint8)
        if label != "good":
            idx = spec.defects.index(label)
            colour = tuple(int(v) for v in ((idx * 67) % 200 + 30, (idx * 131) % 200 + 30, (idx * 29) % 200 + 30))
            cx, cy = rng.uniform(0.3, 0.7, 2) * s
            if idx % 2:  # scratches: thick line segments
                a = rng.uniform(0, math.pi)
                length = rng.uniform(0.1, 0.25) * s
                p0 = (round(cx - length * math.cos(a)), round(cy - length * math.sin(a)))
                p1 = (round(cx + length * math.cos(a)), round(cy + length * math.sin(a)))
                width = max(2, round(0.015 * s))
                cv2.line(img, p0, p1, colour, width)
                cv2.line(mask, p0, p1, 255, width)
            else:
                _fill(img, mask, _blob(rng, cx, cy, max(3.0, rng.uniform(0.04, 0.08) * s)), colour)
        return _finish(rng, img), mask

    return draw


def _drawer(spec: CategorySpec) -> Drawer:
    return _bottle if spec.name == "bottle" else _generic(spec)


def synthesize(
    category: str,
    root: str | Path,
    size: int = 256,
    train_good: int = 40,
    test_good: int = 8,
    test_per_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write ``<root>/<category>/`` in MVTec layout (atomically: all or nothing) and return it."""
    spec = get_category(category)
    draw = _drawer(spec)
    params: dict[str, Any] = {"generator": "pipe synth", "version": GENERATOR_VERSION, "category": category,
                              "size": size, "train_good": train_good, "test_good": test_good,
                              "test_per_defect": test_per_defect, "seed": seed, "channels": spec.channels}
    jobs = [("train", "good", i) for i in range(train_good)]
    jobs += [("test", "good", i) for i in range(test_good)]
    jobs += [("test", d, i) for d in spec.defects for i in range(test_per_defect)]
    target = Path(root) / category
    if target.exists() and not (target / SYNTHETIC_MARKER).is_file() and not (target.is_dir() and
                                                                            not any(target.iterdir())):
        raise DataError(f"{target}: holds a category that is not synthetic (no {SYNTHETIC_MARKER}); pipe synth "
                        f"never writes over real data: pass another --root")
    with atomic_dir(target) as tmp:
        for split, label, i in track(jobs, f"synthesising {category} ({size}px)"):
            class_id = spec.classes.index(label)
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, class_id, i])
            img, mask = draw(rng, size, label)
            if spec.channels == 1:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            out = tmp / split / label / f"{i:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), img)
            if label != "good":
                m = tmp / "ground_truth" / label / f"{i:03d}_mask.png"
                m.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(m), mask)
        write_json(tmp / SYNTHETIC_MARKER, params)
    return target
