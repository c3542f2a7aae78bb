"""``pipe report``: every stage's outputs gathered into ``report.md``, a self-contained ``report.html`` and ``summary.json``.

The report only reads what the stages wrote (each stage's ``metrics.json``, the dataset card, the
conversion report), found through the workspace wherever the stages put them; it trains nothing and measures nothing itself. Its first line says, in words,
which stages were measured and when their numbers come from synthetic data or untrained weights; it claims
real MVTec AD data and pretrained weights only when every stage that ran recorded exactly that. What each stage
recorded is its ``provenance`` block (``pipeline.provenance``); the report merges the blocks and judges nothing
itself.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from pipeline.config import TRAINING, Config
from pipeline.errors import PipeError
from pipeline.io import read_json, write_json, write_text
from pipeline.provenance import STAND_IN_TEXT_EMBEDDINGS, merge, provenance
from pipeline.registry import results
from pipeline.report import compare, figures, sections
from pipeline.report.document import Document
from pipeline.uptodate import wall_time
from pipeline.workspace import Dataset, ReportFiles, Workspace

STAGES = sections.WEIGHTED  # the stages whose numbers depend on weights
ORDER = sections.ORDER  # every input of the report, in pipeline order (the registry's stages with a result file)


def _load(stage: str, path: Path, category: str) -> dict[str, Any] | None:
    """A stage's output, or None when it has not run; an unreadable one stops with the command that rewrites it."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise PipeError(f"{path}: cannot read the {stage} output ({exc}); rerun `{sections.command(stage, category)}"
                        " --force` to write it again") from None


def measured(loaded: dict[str, dict[str, Any] | None]) -> list[str]:
    """The stages whose outputs exist, in pipeline order (then any other loaded output): all the report can
    speak about, and every output whose provenance block :func:`merged` merges."""
    return [s for s in (*ORDER, *(k for k in loaded if k not in ORDER)) if loaded.get(s)]


def stage_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """A stage output's provenance block. An output written before the block existed gets one derived from the
    fields it did record (data kind, weights, YOLO's text embeddings); with no data kind its data is unknown."""
    block = record.get("provenance")
    if isinstance(block, dict):
        return block
    data = record.get("data")
    kind = data.get("provenance", data.get("kind")) if isinstance(data, dict) else None
    weights = record.get("weights")
    listed = [weights] if isinstance(weights, dict) else [w for a in record.get("attempts") or [] for w in a["weights"]]
    stand_in = (record.get("text_embeddings") or {}).get("meaningful") is False
    return provenance(kind, listed, [STAND_IN_TEXT_EMBEDDINGS] if stand_in else [])


def merged(loaded: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The provenance blocks of the stages that ran, merged in pipeline order (``pipeline.provenance.merge``)."""
    return merge(stage_provenance(loaded[s]) for s in measured(loaded))


def data_kinds(loaded: dict[str, dict[str, Any] | None]) -> set[str]:
    """What each stage that ran recorded about its data ("real", "synthetic"; "unknown" where it says nothing)."""
    return set(merged(loaded)["data"])


def caveats(loaded: dict[str, dict[str, Any] | None]) -> list[str]:
    """What makes the numbers not about real defects: the union of the stages' caveats, in pipeline order."""
    return merged(loaded)["caveats"]


def anomaly_numbers(a: dict[str, Any] | None) -> dict[str, Any] | None:
    """PatchCore's headline: MVTec's whole test set (threshold-free) and the shared split at its fitted threshold."""
    if a is None:
        return None
    w, i = a["whole_test"], a["split"]["test"]["image"]
    return {"image_auroc": w["image_auroc"], "pixel_auroc": w["pixel_auroc"], "aupro": w["aupro"],
            "whole_test_images": w["images"], "test_f1": i["f1"], "test_image_auroc": i.get("auroc"),
            "test_images": i["images"], "test_pixel_iou": a["split"]["test"]["pixel"]["mean_iou"],
            "threshold_fitted_on": "val + held-out train/good (never test)"}


def headline_numbers(loaded: dict[str, dict[str, Any] | None], notes: list[str],
                     walls: dict[str, float | None],
                     comparison: compare.Comparison | None = None,
                     pixel: compare.PixelComparison | None = None) -> dict[str, Any]:
    """summary.json: the numbers a dashboard or a regression check reads, with what they mean."""
    y, s, c = loaded.get("yolo"), loaded.get("sam"), loaded.get("classify")
    best = next((a for a in c["attempts"] if a["id"] == c["summary"]["best"]), None) if c else None
    ran = measured(loaded)
    return {
        "category": next((m["category"] for m in loaded.values() if m and "category" in m), None),
        "measured": ran, "not_run": [k for k in ORDER if k not in ran],
        "meaningful": merged(loaded)["meaningful"], "caveats": notes,
        "recipes": {k: (loaded[k].get("recipe") or {}).get("name") for k in TRAINING if loaded.get(k)},
        "detection": None if y is None else {
            "map50_zero_shot": y["zero_shot"]["map50"], "map50_finetuned": y["finetuned"]["map50"],
            "map50_95_zero_shot": y["zero_shot"]["map50_95"], "map50_95_finetuned": y["finetuned"]["map50_95"]},
        "segmentation": None if s is None else {
            "iou_zero_shot": s["zero_shot"]["mean_iou"], "iou_finetuned": s["finetuned"]["mean_iou"],
            "dice_finetuned": s["finetuned"]["mean_dice"], "mask_ap50_finetuned": s["finetuned"]["mask_ap"]["map50"],
            "iou_detector_prompted": (s.get("detector_prompted") or {}).get("mean_iou")},
        "classification": None if best is None else {
            "best_attempt": best["id"], "basis": c["summary"]["basis"], "test_accuracy": best["split"]["test"]["accuracy"],
            "cv_accuracy": (best.get("cv") or {}).get("accuracy"), "cv_macro_f1": (best.get("cv") or {}).get("macro_f1")},
        "anomaly": anomaly_numbers(loaded.get("anomaly")),
        "defect_detection": None if comparison is None else comparison.summary(),
        "defect_segmentation": None if pixel is None else pixel.summary(),
        "comparison_text": None if comparison is None or pixel is None else compare.paragraph(comparison, pixel),
        "wall_s": walls,
        "device": next((loaded[k]["device"] for k in STAGES if loaded.get(k) and "device" in loaded[k]), None),
    }


def _stage_dataset(ws: Workspace, record: dict[str, Any] | None) -> Dataset:
    """The converted dataset a stage recorded it read (``data.dataset``), else the workspace's."""
    folder = ((record or {}).get("data") or {}).get("dataset")
    return Dataset(Path(folder)) if folder else ws.dataset


def comparison_inputs(ws: Workspace, loaded: dict[str, dict[str, Any] | None], category: str,
                      splits: dict[str, Any] | None) -> compare.Comparison:
    """The comparison's signals, from the stages' outputs and the files beside them, found through the workspace:
    the best classification attempt's shared-split record, the detector's COCO detections and the COCO test
    annotations of the dataset the detector read (they name each image's MVTec path), and the shared splits."""
    a, c, y = loaded.get("anomaly"), loaded.get("classify"), loaded.get("yolo")
    record = record_path = None
    if c:
        entry = next((e for e in c.get("attempts") or [] if e["id"] == (c.get("summary") or {}).get("best")), None)
        if entry:
            record_path = ws.classify.fold_record(entry.get("tag") or entry["id"], "split")
            record = _load("classify", record_path, category)
    detections = annotations = None
    det_path = ws.yolo.detections()
    ann_path = _stage_dataset(ws, y).coco.annotations("test")
    if y:
        detections = _load("yolo", det_path, category)
        annotations = _load("convert", ann_path, category)
    signals = [compare.patchcore(a, sections.command("anomaly", category)),
               compare.classifier(c, record, sections.command("classify", category), str(record_path)),
               compare.detector(y, detections, annotations, sections.command("yolo", category),
                                (str(det_path), str(ann_path)))]
    return compare.compare(signals, splits)


SAM_MASKS = {"sam_detector": "detector", "sam_true_boxes": "gt_boxes"}  # compare.SAM_MODES -> SamFiles.masks


def pixel_inputs(ws: Workspace, loaded: dict[str, dict[str, Any] | None], category: str,
                 splits: dict[str, Any] | None) -> tuple[compare.PixelComparison, figures.PanelSources]:
    """The pixel-level comparison from the per-image records in the anomaly and SAM outputs, and what its
    figures draw: the test images and true masks of the dataset the stages read, PatchCore's saved maps, SAM's
    masks as COCO results."""
    a, s = loaded.get("anomaly"), loaded.get("sam")
    sam_command = sections.command("sam", category)
    methods = [compare.patchcore_masks(a, sections.command("anomaly", category)),
               *(compare.sam_masks(s, k, sam_command, sections.command("yolo", category)) for k in compare.SAM_MODES)]
    result = compare.compare_pixels(methods, splits)
    dataset = _stage_dataset(ws, s or a)
    ran = [m.key for m in methods if not m.absent]
    annotations = _load("convert", dataset.coco.annotations("test"), category) if ran else None
    sam = {k: _load("sam", ws.sam.masks(SAM_MASKS[k]), category) for k in ran if k in SAM_MASKS}
    return result, figures.PanelSources(
        dataset.coco, annotations, _maps(ws.anomaly.test_maps, category) if "patchcore" in ran else {},
        float(a["thresholds"]["pixel"]) if "patchcore" in ran else None,
        {k: v for k, v in sam.items() if v is not None})


def _maps(path: Path, category: str) -> dict[str, Any]:
    """PatchCore's saved test maps (none when the file is missing); an unreadable file stops with the command that
    writes it again, as an unreadable output does."""
    try:
        return figures.load_maps(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise PipeError(f"{path}: cannot read the anomaly maps ({exc}); rerun `{sections.command('anomaly', category)}"
                        " --force` to write them again") from None


def pixel_figures(result: compare.PixelComparison, sources: figures.PanelSources, folder: Path) -> list[Path]:
    """The side-by-side figures, replacing those of an earlier report (its examples may have been others)."""
    for old in folder.glob("pixels_*.png"):
        old.unlink()
    return figures.side_by_side(result, sources, folder)


def build_report(cfg: Config, out: Path | None = None, ws: Workspace | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.html``, ``summary.json`` (and the figures) to ``out`` (default: the
    workspace's report folder, ``runs/<category>/``), from each stage's outputs wherever the workspace has them."""
    ws = ws or Workspace.from_config(cfg)
    files = ReportFiles(Path(out) if out else ws.target("report"))
    out = files.folder
    paths = results(ws)
    loaded = {k: _load(k, p, cfg.category) for k, p in paths.items()}
    notes = caveats(loaded)
    doc = Document(f"pipe report: {cfg.category}")
    sections.headline(doc, cfg.category, measured(loaded), notes, data_kinds(loaded) == {"real"})
    sections.dataset(doc, loaded["stats"], cfg.category)
    sections.converted(doc, loaded["convert"], cfg.category)
    sections.detection(doc, loaded["yolo"], files.pr_curve, cfg.category, files.curves("yolo"))
    sections.segmentation(doc, loaded["sam"], cfg.category, files.curves("sam"))
    sections.classification(doc, loaded["classify"], cfg.category, files.curves("classify"))
    sections.anomaly(doc, loaded["anomaly"], cfg.category)
    splits = _load("convert", ws.dataset.splits, cfg.category)
    versus = comparison_inputs(ws, loaded, cfg.category, splits)
    pixel, panels = pixel_inputs(ws, loaded, cfg.category, splits)
    sections.comparison(doc, versus, pixel, pixel_figures(pixel, panels, files.figures))
    sections.overlays(doc, loaded["yolo"], loaded["sam"])
    walls = {k: wall_time(p.parent) for k, p in paths.items()}  # each stage's stamp sits beside its output
    sections.environment(doc, loaded, walls)
    sections.provenance(doc, loaded)
    summary = headline_numbers(loaded, notes, walls, versus, pixel)
    write_text(files.markdown, doc.markdown(out))
    write_text(files.html, doc.html())
    write_json(files.summary, summary)
    return summary
