"""``pipe report``: every stage's outputs gathered into ``report.md``, a self-contained ``report.html`` and ``summary.json``.

The report only reads what the stages wrote (``runs/<category>/<stage>/metrics.json``, the dataset card,
the conversion report); it trains nothing and measures nothing itself. Its first line says, in words,
which stages were measured and when their numbers come from synthetic data or untrained weights; it claims
real MVTec AD data and pretrained weights only when every stage that ran recorded exactly that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import PipeError
from pipeline.io import read_json, write_json, write_text
from pipeline.report import sections
from pipeline.report.document import Document
from pipeline.uptodate import wall_time

STAGES = sections.WEIGHTED  # the stages whose numbers depend on weights
ORDER = tuple(sections.COMMANDS)  # every input of the report, in pipeline order


def inputs(cfg: Config) -> dict[str, Path]:
    """Every file the report reads, by the stage that writes it (what ``pipe report``'s up-to-date check hashes)."""
    runs = Path(cfg.paths.runs) / cfg.category
    return {"stats": runs / "stats" / "card.json",
            "convert": Path(cfg.paths.datasets) / cfg.category / "convert_report.json",
            **{s: runs / s / "metrics.json" for s in STAGES}}


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
    """The stages whose outputs exist, in pipeline order: all the report can speak about."""
    return [s for s in ORDER if loaded.get(s)]


def data_kinds(loaded: dict[str, dict[str, Any] | None]) -> set[str]:
    """What each stage that ran recorded about its data ("real", "synthetic"; "unknown" where it says nothing)."""
    kinds = set()
    for stage in measured(loaded):
        data = (loaded[stage] or {}).get("data")
        kind = data.get("provenance", data.get("kind")) if isinstance(data, dict) else None
        kinds.add(kind if isinstance(kind, str) else "unknown")
    return kinds


def caveats(loaded: dict[str, dict[str, Any] | None]) -> list[str]:
    """What makes the numbers not about real defects: synthetic data, untrained weights (in words)."""
    out = []
    if "synthetic" in data_kinds(loaded):
        out.append("synthetic data (the generated stand-in for the category, not MVTec AD images)")
    untrained = []
    for s in ("yolo", "sam"):
        if loaded[s] and not loaded[s]["weights"]["pretrained"]:
            untrained.append(f"{s} ({loaded[s]['weights']['name']})")
    if loaded["yolo"] and not loaded["yolo"]["text_embeddings"]["meaningful"]:
        untrained.append("YOLO-World class prompts (stand-in text embeddings)")
    if loaded["classify"]:
        names = sorted({w["name"] for a in loaded["classify"]["attempts"] for w in a["weights"] if not w["pretrained"]})
        untrained += [f"classify ({', '.join(names)})"] if names else []
    if untrained:
        out.append("untrained, randomly initialised weights for " + "; ".join(untrained))
    return out


def headline_numbers(loaded: dict[str, dict[str, Any] | None], notes: list[str],
                     walls: dict[str, float | None]) -> dict[str, Any]:
    """summary.json: the numbers a dashboard or a regression check reads, with what they mean."""
    y, s, c = loaded["yolo"], loaded["sam"], loaded["classify"]
    best = next((a for a in c["attempts"] if a["id"] == c["summary"]["best"]), None) if c else None
    ran = measured(loaded)
    return {
        "category": next((m["category"] for m in loaded.values() if m and "category" in m), None),
        "measured": ran, "not_run": [k for k in ORDER if k not in ran],
        "meaningful": bool(ran) and not notes and data_kinds(loaded) == {"real"}, "caveats": notes,
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
        "wall_s": walls,
        "device": next((m["device"] for m in (y, s, c) if m), None),
    }


def build_report(cfg: Config, out: Path | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.html``, ``summary.json`` (and the figures) to ``runs/<category>/``."""
    out = Path(out) if out else Path(cfg.paths.runs) / cfg.category
    paths = inputs(cfg)
    loaded = {k: _load(k, p, cfg.category) for k, p in paths.items()}
    notes = caveats(loaded)
    doc = Document(f"pipe report: {cfg.category}")
    sections.headline(doc, cfg.category, measured(loaded), notes, data_kinds(loaded) == {"real"})
    sections.dataset(doc, loaded["stats"], cfg.category)
    sections.converted(doc, loaded["convert"], cfg.category)
    sections.detection(doc, loaded["yolo"], out / "figures", cfg.category)
    sections.segmentation(doc, loaded["sam"], cfg.category)
    sections.classification(doc, loaded["classify"], cfg.category)
    sections.overlays(doc, loaded["yolo"], loaded["sam"])
    walls = {k: wall_time(p.parent) for k, p in paths.items()}  # each stage's stamp sits beside its output
    sections.environment(doc, loaded, walls)
    sections.provenance(doc, loaded)
    summary = headline_numbers(loaded, notes, walls)
    write_text(out / "report.md", doc.markdown(out))
    write_text(out / "report.html", doc.html())
    write_json(out / "summary.json", summary)
    return summary
