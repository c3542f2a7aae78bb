"""Every category's good-only numbers in one table, in the layout published MVTec AD tables use.

One row per category (image AUROC, pixel AUROC, AUPRO@0.3, fit time, ms per image), then the mean over
the categories measured. The rows are read from each category's ``metrics.json`` wherever its workspace
has it; a category that was not run is listed as such, never averaged in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.io import write_json, write_text
from pipeline.workspace import AnomalyTableFiles

COLUMNS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"),
           ("fit_s", "fit s"), ("ms_per_image", "ms/image"))


def row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The table's numbers from one category's anomaly ``metrics.json``."""
    w = metrics["whole_test"]
    return {"image_auroc": w["image_auroc"], "pixel_auroc": w["pixel_auroc"], "aupro": w["aupro"],
            "fit_s": metrics["timing_s"].get("fit"), "ms_per_image": metrics.get("ms_per_image"),
            "data": metrics.get("provenance", {}).get("data"), "meaningful": metrics.get("provenance", {}).get(
                "meaningful")}


def table(rows: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Rows by category (None: not run) and the mean of each column over the categories that ran."""
    ran = {c: r for c, r in rows.items() if r is not None}
    mean = {k: round(sum(r[k] for r in ran.values()) / len(ran), 4) if ran and all(r[k] is not None
                                                                                 for r in ran.values()) else None
            for k, _ in COLUMNS}
    return {"categories": dict(rows), "mean": mean if ran else None, "measured": sorted(ran),
            "not_run": sorted(c for c, r in rows.items() if r is None)}


def markdown(doc: Mapping[str, Any]) -> str:
    head = "| category | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]

    def cells(r: Mapping[str, Any]) -> str:
        return " | ".join("" if r[k] is None else f"{r[k]:.3f}" if k in ("image_auroc", "pixel_auroc", "aupro")
                          else f"{r[k]:.1f}" for k, _ in COLUMNS)

    for category, r in doc["categories"].items():
        lines.append(f"| {category} | " + (cells(r) if r else " | ".join("not run" for _ in COLUMNS)) + " |")
    if doc["mean"]:
        lines.append(f"| **mean ({len(doc['measured'])})** | " + cells(doc["mean"]) + " |")
    notes = sorted({r["data"] for r in doc["categories"].values() if r} - {"real"})
    tail = [f"\nNumbers from {', '.join(notes)} data: not comparable with published tables."] if notes else []
    untrained = [c for c, r in doc["categories"].items() if r and not r["meaningful"]]
    if untrained:
        tail.append(f"\nNot meaningful (see each category's provenance: synthetic data or untrained weights): "
                    f"{', '.join(untrained)}.")
    return "\n".join(["# Good-only detection (PatchCore), every category", "", *lines, *tail]) + "\n"


def write(doc: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    files = AnomalyTableFiles(Path(folder))
    return write_json(files.json, doc), write_text(files.markdown, markdown(doc))
