"""One function per report section, each reading only the files its stage wrote.

A stage that has not run gives a section that says so and names the command that fills it, never a
number from somewhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import plots
from pipeline.registry import STAGES
from pipeline.report.compare import Comparison, PixelComparison, Spread, verdicts
from pipeline.report.document import Document, cell
from pipeline.stages.classify.report import attempts_rows, changes_text, recall_rows

Stage = dict[str, Any] | None

# The report's inputs are the stages that leave it a result file, in pipeline order (``pipeline.registry``):
# the command that writes each, and those whose numbers depend on model weights (the training stages).
COMMANDS = {s.name: f"pipe {s.cli_name}" for s in STAGES if s.result is not None}
WEIGHTED = tuple(s.name for s in STAGES if s.result is not None and s.trains)
ORDER = tuple(COMMANDS)
# What each stage's output is called in the report; a stage not named here is "the <name> outputs".
_NAMES = {"stats": "the dataset card", "convert": "the converted dataset", "yolo": "the detection metrics",
          "sam": "the segmentation metrics", "classify": "the classification metrics",
          "anomaly": "the good-only anomaly metrics"}
OUTPUTS = {s: _NAMES.get(s, f"the {s} outputs") for s in ORDER}


def command(stage: str, category: str) -> str:
    return f"{COMMANDS[stage]} {category}"


def _missing(doc: Document, stage: str, category: str) -> None:
    """A section whose stage has not run says so, and how to fill it, instead of disappearing."""
    doc.text(f"Not run: `{command(stage, category)}` produces {OUTPUTS[stage]}.")


def headline(doc: Document, category: str, measured: list[str], caveats: list[str], real_data: bool) -> None:
    """The first line: what was actually measured, and nothing more.

    It claims real MVTec AD data only when every stage that ran recorded real data, and pretrained weights
    only when a stage that uses weights ran and none of them was untrained.
    """
    if not measured:
        return doc.callout(f"Nothing has been measured yet: no stage outputs for {category} (run `just all`, or "
                           f"`{command('stats', category)}`, `{command('convert', category)}` and the stages after "
                           "them). Each section below names the command that fills it.")
    not_run = [OUTPUTS[s] for s in COMMANDS if s not in measured]
    scope = (f"Measured: {', '.join(OUTPUTS[s] for s in measured)}"
             + (f"; not run: {', '.join(not_run)}." if not_run else "."))
    if caveats:
        return doc.callout("These numbers come from " + _listed(caveats) + ". They show that the pipeline runs "
                           f"end to end; they say nothing about how well it finds real defects. {scope}")
    if not real_data:
        return doc.callout(f"{scope} The outputs do not all record real MVTec AD data, so these numbers may not "
                           "describe it; rerun the stages to record their data.")
    if any(s in WEIGHTED for s in measured):
        return doc.text(f"All numbers below were measured on the genuine MVTec AD images with pretrained weights. "
                        f"{scope}")
    doc.text(f"The numbers below describe the genuine MVTec AD images; no model has been evaluated yet. {scope}")


def _listed(phrases: list[str]) -> str:
    """``a``, ``a and b``, ``a; b; and c``: semicolons, since a caveat may hold commas (a list of weights)."""
    return " and ".join(phrases) if len(phrases) < 3 else "; ".join(phrases[:-1]) + "; and " + phrases[-1]


def dataset(doc: Document, card: Stage, category: str) -> None:
    doc.heading("Dataset")
    if card is None:
        return _missing(doc, "stats", category)
    data = card.get("data") or {}
    names = [c["name"] for c in card["classes"]]
    sizes = ", ".join(f"{k} px ({v})" for k, v in card["images"]["sizes"].items())
    doc.text(f"**{card['category']}** ({card.get('kind', '')}), {data.get('kind', 'unknown')} data from "
             f"`{data.get('root', '')}`: {card['total_images']} images ({sizes}, {card['images']['mode']}); "
             f"classes: {', '.join(names)}.")
    doc.table(*_by_class(card["counts"]))
    masks = {k: v for k, v in card.get("masks", {}).items() if k != "all"}
    if masks:
        doc.table(["defect", "masks", "defect area, median % of image", "components per mask, mean"],
                  [[k, v["area_frac"]["n"], 100 * v["area_frac"]["median"], v["components"]["mean"]]
                   for k, v in masks.items()])
    if data.get("license"):
        doc.text(f"Licence: {data['license']}.")


def _by_class(per_split: dict[str, dict[str, int]]) -> tuple[list[str], list[list[Any]]]:
    """``{split: {class: n}}`` as a table with one row per class and one column per split."""
    splits = list(per_split)
    classes = list(dict.fromkeys(c for counts in per_split.values() for c in counts))
    return ["class", *splits], [[c, *(per_split[s].get(c, 0) for s in splits)] for c in classes]


def converted(doc: Document, report: Stage, category: str) -> None:
    doc.heading("Converted dataset")
    if report is None:
        return _missing(doc, "convert", category)
    doc.text(f"Images per split: {', '.join(f'{s} {n}' for s, n in report['images_per_split'].items())}; "
             f"{report['fidelity']['instances']} defect instances, per class and split:")
    doc.table(*_by_class(report["instances_per_class"]))
    f = report["fidelity"]
    doc.table(["fidelity check", "value"], [
        ["instances checked", f.get("instances")], ["COCO polygon IoU, minimum", f.get("coco_iou_min")],
        ["YOLO-seg polygon IoU, minimum", f.get("yolo_seg_iou_min")], ["YOLO boxes exact", f.get("yolo_boxes_exact")]])


RECIPES = {"finetune": "fine-tuning", "scratch": "from scratch"}


def recipe(doc: Document, stage: dict[str, Any], what: str = "") -> None:
    """The recipe the stage ran (fine-tuning or from scratch), why, and what the from-scratch one changed."""
    r = stage.get("recipe")
    if not r:
        return doc.text("Recipe: not recorded (an output written before recipes were; rerun the stage).")
    changed = r.get("changes") or {}
    if what:  # classification: one set of changes per attempt, shown in the attempts table
        detail = f" {what}"
    else:
        detail = f"; it changed {changes_text(changed)}" if changed else ""
    doc.text(f"Recipe: **{RECIPES.get(r['name'], r['name'])}** ({r['why']}){detail}.")


def training_curves(doc: Document, history: list[dict[str, Any]] | None, losses: list[str], metric: str,
                    title: str, path: Path | None, caption: str) -> None:
    """Loss and val metric per epoch, drawn from the history the stage recorded (nothing when it recorded none)."""
    if not history or path is None:
        return
    doc.images([plots.curves(history, losses, metric, title, path)], caption)


def _recipe_name(stage: dict[str, Any]) -> str:
    return RECIPES.get((stage.get("recipe") or {}).get("name", ""), "training")


def detection(doc: Document, yolo: Stage, pr_curve: Path, category: str, curves: Path | None = None) -> None:
    doc.heading("Detection (YOLO-World)")
    if yolo is None:
        return _missing(doc, "yolo", category)
    recipe(doc, yolo)
    w = yolo.get("weights") or {}
    if w.get("built_from"):
        doc.text(f"Model: `{w['name']}` (scale {w.get('scale')}) built from `{w['built_from']}`, randomly initialised"
                 + (f"; {w['note']}" if w.get("note") else "") + ".")
    z, f = yolo["zero_shot"], yolo["finetuned"]
    doc.table(["model", "mAP50", "mAP50-95", "precision", "recall", "test images", "instances"],
              [[name, m["map50"], m["map50_95"], m["precision"], m["recall"], m["images"], m["instances"]]
               for name, m in (("zero-shot", z), ("fine-tuned", f))])
    doc.table(["class", "AP50 zero-shot", "AP50 fine-tuned"],
              [[c, z["ap50_per_class"].get(c), v] for c, v in f["ap50_per_class"].items()])
    doc.bullets([f"Caveat: {c}" for c in z.get("caveats", [])])
    pr = plots.pr_curves({"zero-shot": z["pr_curve"], "fine-tuned": f["pr_curve"]},
                         "Detection PR curve (test split, IoU 0.5, mean over classes)", pr_curve)
    doc.images([pr], "Precision-recall on the test split, before and after fine-tuning")
    training_curves(doc, (yolo.get("train") or {}).get("history"), ["box_loss", "cls_loss", "dfl_loss"], "val_map50",
                    f"YOLO-World, {_recipe_name(yolo)}: train losses and val mAP50", curves,
                    "Detection training per epoch: ultralytics' train losses (left) and val mAP50 (right, dashed)")


def segmentation(doc: Document, sam: Stage, category: str, curves: Path | None = None) -> None:
    doc.heading("Segmentation (SAM)")
    if sam is None:
        return _missing(doc, "sam", category)
    recipe(doc, sam)
    modes = [("zero-shot, true boxes", sam["zero_shot"]), ("fine-tuned, true boxes", sam["finetuned"])]
    if sam.get("detector_prompted"):
        modes.append(("fine-tuned, YOLO boxes", sam["detector_prompted"]))
    doc.table(["model and prompts", "instance IoU", "Dice", "mask AP50", "mask AP", "instances", "missed"],
              [[n, m["mean_iou"], m["mean_dice"], m["mask_ap"]["map50"], m["mask_ap"]["map"], m["instances"],
                m.get("missed_instances")] for n, m in modes])
    classes = list(sam["finetuned"]["per_class"])
    doc.table(["class", *(f"{n}: IoU / Dice" for n, _ in modes)],
              [[c, *(f"{cell(m['per_class'].get(c, {}).get('iou'))} / {cell(m['per_class'].get(c, {}).get('dice'))}"
                     for _, m in modes)] for c in classes])
    if not sam.get("detector_prompted"):
        doc.text("Detector-prompted segmentation needs the YOLO detections: run `pipe finetune yolo` first.")
    doc.bullets([f"Caveat: {c}" for c in sam["zero_shot"].get("caveats", [])])
    training_curves(doc, (sam.get("train") or {}).get("history"), ["loss", "focal", "dice", "iou_mse"], "val_iou",
                    f"SAM, {_recipe_name(sam)}: train loss and val IoU", curves,
                    "Segmentation training per epoch: the weighted loss and its parts (left) and val instance IoU with "
                    "true boxes (right, dashed)")


def classification(doc: Document, cls: Stage, category: str, curves: Path | None = None) -> None:
    doc.heading("Classification (good vs each defect)")
    if cls is None:
        return _missing(doc, "classify", category)
    recipe(doc, cls, "(per attempt: what each attempt's recipe changed is in its row of the table)")
    doc.text(f"Images: {', '.join(f'{k} {v}' for k, v in cls['images'].items())}; classes: "
             f"{', '.join(cls['classes'])}.")
    doc.table(*attempts_rows(cls["attempts"]))
    first, *rest = cls["summary_text"].splitlines()
    doc.text(first)
    doc.bullets([line.removeprefix("- ") for line in rest])
    if cls.get("folds"):
        doc.table(["attempt", "folds", "accuracy", "balanced accuracy", "macro-F1"],
                  [[a["id"], a["cv"]["folds"], *(f"{cell(a['cv'][k]['mean'])} ± {cell(a['cv'][k]['std'])}"
                                                 for k in ("accuracy", "balanced_accuracy", "macro_f1"))]
                   for a in cls["attempts"] if a.get("cv")])
    c = cls.get("compare")
    if c:
        doc.heading(f"Long tail: attempt {c['attempt']} without and with {c['method']}", 3)
        doc.text(f"Per-class recall on {c['basis']}.")
        doc.table(*recall_rows(c))
    plots_ = cls.get("confusion_plots", {})
    doc.images([Path(p) for k, p in plots_.items() if k.endswith("-cv")] or [Path(p) for p in plots_.values()],
               "Confusion matrices (rows true, columns predicted)")
    best = next((a for a in cls["attempts"] if a["id"] == (cls.get("summary") or {}).get("best")), None)
    if best:
        history = best["split"].get("history") or []
        metric = "val_macro_f1" if any(r.get("val_macro_f1") is not None for r in history) else "val_acc"
        title = (f"Attempt {best['id']}, {_recipe_name(best)}: loss and val "
                 + ("macro-F1" if metric == "val_macro_f1" else "accuracy"))
        training_curves(doc, history, ["train_loss", "val_loss"], metric, title, curves,
                        f"Classification training per epoch, best attempt {best['id']} on the shared split: train and "
                        "val loss (left) and the val selection metric (right, dashed)")


def _pct(value: float | None) -> str:
    """A ratio as published anomaly-detection tables print it: a percentage with one decimal."""
    return "–" if value is None else f"{100 * value:.1f}"


def anomaly(doc: Document, a: Stage, category: str, limit: int = 8) -> None:
    doc.heading("Good-only detection (PatchCore)")
    if a is None:
        return _missing(doc, "anomaly", category)
    m, n, w = a.get("model") or {}, a["images"], a["whole_test"]
    bank = " × ".join(str(v) for v in m.get("memory_bank") or []) or "–"
    doc.text(f"PatchCore fitted on {n['fit']} of MVTec's train/good images only ({n['holdout']} more held out for "
             f"the threshold); no defective image is used to fit it. Features: {m.get('backbone', '–')} "
             f"{'+'.join(m.get('layers') or [])} at {m.get('imgsz', '–')} px; memory bank {bank}.")
    doc.text(f"MVTec AD's whole test set ({w['images']} images), threshold-free, as published tables report it "
             "(AUROC and AUPRO in %):")
    doc.table(["image AUROC", "pixel AUROC", "AUPRO@0.3", "images", "ms / image", "fit time (s)"],
              [[_pct(w["image_auroc"]), _pct(w["pixel_auroc"]), _pct(w["aupro"]), w["images"], a.get("ms_per_image"),
                (a.get("timing_s") or {}).get("fit")]])
    s, fitted = a["split"]["test"], a["split"]["fitted_on"]
    i, p = s["image"], s["pixel"]
    doc.text(f"The shared split's operating point: the image and pixel thresholds were fitted on the split's "
             f"{fitted['val']} val images and {fitted['train_good_holdout']} held-out train/good images, never on a "
             f"test image, then applied once to the split's {i['images']} test images.")
    doc.table(["image threshold", "test images", "F1", "precision", "recall", "accuracy", "TP / FP / TN / FN",
               "AUROC (split test)"],
              [[i["threshold"], i["images"], i["f1"], i["precision"], i["recall"], i["accuracy"],
                f"{i['tp']} / {i['fp']} / {i['tn']} / {i['fn']}", i.get("auroc")]])
    doc.table(["pixel threshold", "defective images", "mean IoU", "mean Dice", "pixel F1", "pixel precision",
               "pixel recall", "good images with no pixel flagged"],
              [[p["threshold"], p["defective_images"], p["mean_iou"], p["mean_dice"], p["pixel_f1"],
                p["pixel_precision"], p["pixel_recall"],
                None if p["good_images_clean"] is None else f"{p['good_images_clean']:.3f} of {p['good_images']}"]])
    doc.images([Path(x) for x in (a.get("overlays") or [])[:limit]],
               "PatchCore: anomaly heat map over each test image, the true defect outline in white, and the verdict "
               "at the fitted image threshold")


def comparison(doc: Document, result: Comparison, pixel: PixelComparison, figures: list[Path]) -> None:
    """Defect detection (image level) and defect outlines (pixel level) by every method on the same test images
    (``pipeline.report.compare``), the paragraph saying which wins where, and example images side by side."""
    doc.heading("Good-only against supervised, on the same test images")
    doc.text("Each method read as an image-level defect detector (an image is positive when MVTec files it under a "
             "defect class) on the shared split's test images, each at its own operating point: PatchCore's image "
             "score at its fitted threshold, the best classification attempt's argmax (defective when it is not "
             "good), and the detector finding a box (its highest box score at the stage's `yolo.conf`).")
    rows = []
    for r in result.rows:
        sig = r.signal
        if sig.absent:
            rows.append([sig.method, sig.absent, *["–"] * 6])
            continue
        rows.append([sig.method, sig.point, f"{r.images} ({r.defective} / {r.images - r.defective})",
                     r.auroc if r.auroc is not None else f"– ({r.why_no_auroc})", r.at_point.get("f1"),
                     r.at_point.get("precision"), r.at_point.get("recall"), r.at_point.get("accuracy")])
    doc.table(["method", "operating point", "images (defective / good)", "AUROC", "F1", "precision", "recall",
               "accuracy"], rows)
    doc.bullets(result.notes)
    _pixel_table(doc, pixel)
    doc.bullets(verdicts(result, pixel))
    doc.images(figures, "Each example: the image with its true defect in green; PatchCore's heat map with the "
                        "region at its fitted pixel threshold in white; SAM's masks (magenta) from the detector's "
                        "boxes and from the true boxes. Titles give the IoU and Dice each stage recorded for the "
                        "image, at full resolution.", wide=True)


def _spread(s: Spread | None) -> list[str]:
    return ["–"] * 2 if s is None else [f"{cell(s.iou)} ± {cell(s.iou_std)}", f"{cell(s.dice)} ± {cell(s.dice_std)}"]


def _pixel_table(doc: Document, pixel: PixelComparison) -> None:
    over = (f" over the {len(pixel.defective_images)} defective test images every method covered, and over all "
            f"{len(pixel.all_images)} test images ({pixel.good_images} good, where a method that flags nothing "
            "scores 1) for the methods that score good images" if pixel.defective_images else "")
    doc.text("Pixel level, at each image's own resolution: the union of what each method flags against the union "
             f"of the true defects, per image, as each stage recorded it; mean ± sample standard deviation{over}.")
    rows = []
    for r in pixel.rows:
        m = r.masks
        if m.absent:
            rows.append([m.method, m.absent, *["–"] * 6])
            continue
        every = f"– ({m.skips_good})" if m.skips_good else r.every.images if r.every else "–"
        rows.append([m.method, m.made, r.defective.images if r.defective else "–", *_spread(r.defective),
                     every, *_spread(r.every)])
    doc.table(["method", "mask", "defective images", "IoU", "Dice", "all test images", "IoU (all)", "Dice (all)"],
              rows)
    doc.bullets(pixel.notes)


def overlays(doc: Document, yolo: Stage, sam: Stage, limit: int = 6) -> None:
    doc.heading("Predictions on test images")
    shown = False
    for name, stage, what in (("YOLO-World", yolo, "predicted boxes (coloured) and true boxes (white)"),
                              ("SAM", sam, "predicted masks over the true outlines")):
        if stage and stage.get("overlays"):
            doc.images([Path(p) for p in stage["overlays"][:limit]], f"{name}: {what}")
            shown = True
    if not shown:
        doc.text("No overlays yet: the detection and segmentation stages write them.")


def environment(doc: Document, stages: dict[str, Stage], walls: dict[str, float | None]) -> None:
    doc.heading("Environment and timing")
    ran = {k: v for k, v in stages.items() if v and "environment" in v}
    if not ran:
        return doc.text("No stage has run yet.")
    env = next(iter(ran.values()))["environment"]
    doc.table(["item", "value"], [["device", f"{env.get('device')} ({env.get('device_name')})"],
                                  ["torch / CUDA", f"{env.get('torch')} / {env.get('cuda')}"],
                                  ["python", env.get("python")], ["platform", env.get("platform")],
                                  *[[p, v] for p, v in (env.get("packages") or {}).items()]])
    doc.table(["stage", "device", "wall time (s)"],
              [[k, v.get("device", v["environment"].get("device")), walls.get(k) or (v.get("timing_s") or {}).get("total")]
               for k, v in ran.items()])
    total = sum(w for w in walls.values() if w)
    doc.text(f"Total wall time of the stages above: {total:.1f} s (each stage's full log: `logs/<stage>.log`).")


def provenance(doc: Document, stages: dict[str, Stage]) -> None:
    doc.heading("Provenance")
    rows = []
    for stage in WEIGHTED:  # one set of weights (yolo, sam, anomaly), or one per backbone of the attempts (classify)
        m = stages.get(stage)
        if not m:
            continue
        seen = {}
        for w in [m["weights"]] if isinstance(m.get("weights"), dict) else [
                w for a in m.get("attempts") or [] for w in a["weights"]]:
            seen[w["name"]] = w
        rows += [[stage, n, w["source"], w.get("file"), (w.get("sha256") or "")[:16] or None] for n, w in seen.items()]
        t = m.get("text_embeddings")
        if stage == "yolo" and t:
            rows.append(["yolo prompts", "text embeddings", t["source"], t.get("file"),
                         (t.get("sha256") or "")[:16] or None])
    if rows:
        doc.table(["stage", "weights", "source", "file", "sha256 (prefix)"], rows)
    else:
        doc.text("No stage that uses weights has run yet.")
    data = next((v["data"] for v in stages.values() if v and "data" in v and "splits_sha256" in v.get("data", {})), None)
    if data:
        doc.text(f"Data: {data['provenance']} `{data['dataset']}`, splits.json sha256 "
                 f"`{data['splits_sha256'][:16]}`, seed {data['seed']}.")
