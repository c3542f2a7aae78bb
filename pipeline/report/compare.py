"""Good-only PatchCore against the supervised stages on the shared split's test images, image- and pixel-level.

Each method is read as a defect detector (an image is defective when MVTec files it under a defect class) on the
same images: the shared split's ``test`` images that every method which ran scored. Three signals, each taken
from what its stage wrote, none measured again:

- PatchCore (``anomaly``): its image score (``test_scores``), defective at or above the image threshold it
  fitted on the split's val images and held-out train/good images (``thresholds.image``), never on test.
- The best classification attempt (``classify``, by its own selection basis): defective when its argmax is not
  ``good``, from its shared-split record (``runs/<attempt>/split.json``, ``test_predictions``). Its probability
  of not-good ranks the images only when that record holds probabilities (``probs``); a record with argmax
  predictions alone has no ranking, hence no AUROC.
- The detector (``yolo``): the highest score of any box it found in the image (0 where it found none, from
  ``detections_test.json`` mapped through the COCO test annotations' ``source``), defective at ``yolo.conf``.

AUROC is :func:`pipeline.metrics.anomaly.image_auroc`, where the images hold both classes and the method ranks
them; F1, precision and recall are :func:`pipeline.metrics.anomaly.at_threshold` at each method's own
operating point.

Pixel level (:func:`compare_pixels`), each method's per-image IoU and Dice as its stage recorded them (the union
of what it flags against the union of the true defects, at the image's own resolution):

- PatchCore: its map stretched back to the image's size, at the pixel threshold fitted with the image one
  (``test_pixel_scores``).
- SAM from the detector's boxes (``detector_prompted``) and from the true boxes (``finetuned``), each mode's
  ``per_image_scores``. Prompted with true boxes, SAM scores no good image (it has no box to prompt with).

They are averaged, with the sample standard deviation over images, on the defective test images every method
covered, and, for the methods that score good images, over every test image (a good image on which a method
flags nothing scores 1, as the stages define it). :func:`paragraph` says in words which approach wins where,
and when a lead is within one standard deviation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GOOD = "good"


@dataclass(frozen=True)
class Signal:
    """One method's verdicts on test images, keyed by MVTec path (``test/crack/000.png``)."""

    key: str  # its name in summary.json
    method: str  # its name in the report
    point: str = ""  # its operating point, in words
    decisions: Mapping[str, bool] | None = None  # defective at its operating point
    scores: Mapping[str, float] | None = None  # higher = more likely defective; None: it records no ranking
    absent: str | None = None  # why there is nothing to compare ("not run: ...")
    no_ranking: str | None = None  # why it has no AUROC although it ran
    splits_sha256: str | None = None


@dataclass(frozen=True)
class Row:
    signal: Signal
    images: int = 0
    defective: int = 0
    auroc: float | None = None
    at_point: dict[str, Any] = field(default_factory=dict)  # at_threshold's numbers at its operating point
    why_no_auroc: str | None = None

    def summary(self) -> dict[str, Any] | None:
        if self.signal.absent:
            return None
        return {"images": self.images, "defective": self.defective, "auroc": self.auroc,
                "f1": self.at_point.get("f1"), "precision": self.at_point.get("precision"),
                "recall": self.at_point.get("recall"), "operating_point": self.signal.point}


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    images: list[str]  # the test images every method that ran scored, in splits.json order
    split_images: int  # the shared split's test images
    labels: dict[str, bool]  # defective, per image
    sentence: str
    notes: list[str]

    def summary(self) -> dict[str, Any]:
        best = [r for r in self.rows if r.auroc is not None]
        top = max((r.auroc for r in best), default=None)
        return {"images": len(self.images), "defective": sum(self.labels[r] for r in self.images),
                "best_by_auroc": [r.signal.key for r in best if r.auroc == top] if best else [],
                **{r.signal.key: r.summary() for r in self.rows}}


def _sha(record: Mapping[str, Any] | None) -> str | None:
    data = (record or {}).get("data")
    return data.get("splits_sha256") if isinstance(data, dict) else None


def _label(rel: str, splits: Mapping[str, Any] | None) -> str:
    """The class of a test image: splits.json's label, else MVTec's folder name (``test/<class>/<file>``)."""
    labels = (splits or {}).get("labels") or {}
    return labels.get(rel) or rel.split("/")[-2]


def patchcore(anomaly: Mapping[str, Any] | None, command: str) -> Signal:
    name = "PatchCore (good-only)"
    if anomaly is None:
        return Signal("patchcore", name, absent=f"not run: `{command}`")
    scores = {r: float(s) for r, s in (anomaly.get("test_scores") or {}).items()}
    t = float(anomaly["thresholds"]["image"])
    return Signal("patchcore", name, f"score ≥ {t:.4g}, fitted on val + held-out train/good",
                  {r: s >= t for r, s in scores.items()}, scores, splits_sha256=_sha(anomaly))


def classifier(cls: Mapping[str, Any] | None, record: Mapping[str, Any] | None, command: str,
               record_path: str = "") -> Signal:
    """The best attempt's shared-split test predictions, which name their images (``rel``)."""
    if cls is None:
        return Signal("classifier", "classifier (supervised)", absent=f"not run: `{command}`")
    best = (cls.get("summary") or {}).get("best")
    entry = next((a for a in cls.get("attempts") or [] if a["id"] == best), None)
    name = f"classifier, attempt {best} (supervised)"
    if entry is None:
        return Signal("classifier", name, absent="no best attempt recorded in its metrics")
    if record is None:
        return Signal("classifier", name, absent=f"no test predictions: `{record_path}` is missing")
    classes = list(cls["classes"])
    if GOOD not in classes:
        return Signal("classifier", name, absent=f"its classes ({', '.join(classes)}) do not include `{GOOD}`")
    p = record.get("test_predictions") or {}
    preds, rels = list(p.get("pred") or []), list(p.get("rel") or [])
    if not rels:
        return Signal("classifier", name, absent=f"its test predictions name no images: `{command} --force` "
                                                 f"writes them again")
    good = classes.index(GOOD)
    decisions = {r: int(y) != good for r, y in zip(rels, preds)}
    probs = p.get("probs")
    scores = ({r: 1.0 - float(row[good]) for r, row in zip(rels, probs)}
              if probs is not None and len(probs) == len(rels) else None)
    return Signal("classifier", name, f"argmax ≠ {GOOD}", decisions, scores,
                  no_ranking=None if scores else "its record holds argmax predictions only, no probabilities",
                  splits_sha256=_sha(cls))


def detector(yolo: Mapping[str, Any] | None, detections: Sequence[Mapping[str, Any]] | None,
             coco_test: Mapping[str, Any] | None, command: str, paths: tuple[str, str] = ("", "")) -> Signal:
    """The highest box score per test image (0 without a box); defective at the stage's ``yolo.conf``."""
    name = "YOLO-World detector (supervised)"
    if yolo is None:
        return Signal("detector", name, absent=f"not run: `{command}`")
    if detections is None:
        return Signal("detector", name, absent=f"no detections: `{paths[0]}` is missing")
    if coco_test is None:
        return Signal("detector", name, absent=f"no COCO test annotations to name its images: `{paths[1]}` is missing")
    source = {im["id"]: im.get("source") for im in coco_test.get("images", [])}
    if not all(source.values()):
        return Signal("detector", name, absent="the COCO test annotations do not record each image's MVTec path")
    scores = dict.fromkeys(source.values(), 0.0)
    for d in detections:
        rel = source.get(d["image_id"])
        if rel is not None:
            scores[rel] = max(scores[rel], float(d["score"]))
    conf = float(((yolo.get("config") or {}).get("yolo") or {}).get("conf", 0.25))
    return Signal("detector", name, f"a box with score ≥ {conf:g}", {r: s >= conf for r, s in scores.items()},
                  scores, splits_sha256=_sha(yolo))


def compare(signals: list[Signal], splits: Mapping[str, Any] | None) -> Comparison:
    """Every signal on the images all present ones scored, with the sentence naming the best by AUROC."""
    present = [s for s in signals if not s.absent]
    split_test = _split_test(splits, [s.decisions or {} for s in present])
    images = [r for r in split_test if all(r in (s.decisions or {}) for s in present)] if present else []
    truth = {r: _label(r, splits) != GOOD for r in split_test}
    y = np.array([truth[r] for r in images], bool)
    rows = []
    for s in signals:
        if s.absent:
            rows.append(Row(s))
            continue
        if not images:
            rows.append(Row(s, why_no_auroc="no test image in common"))
            continue
        # imported here, once a method has images to measure: scikit-learn takes about a second to import
        from pipeline.metrics import anomaly as metrics

        decided = np.array([float(s.decisions[r]) for r in images])
        point = metrics.at_threshold(decided, y, 1.0)
        why = (s.no_ranking if s.scores is None
               else None if 0 < y.sum() < len(y) else "the images hold one class only")
        auroc = metrics.image_auroc([s.scores[r] for r in images], y) if why is None else None
        rows.append(Row(s, len(images), int(y.sum()), auroc, point, why))
    notes = []
    if present and len(images) < len(split_test):
        notes.append(f"Only {len(images)} of the shared split's {len(split_test)} test images were scored by "
                     "every method that ran; the table uses those.")
    digests = {s.splits_sha256 for s in present if s.splits_sha256}
    if len(digests) > 1:
        notes.append("The stages recorded different splits.json digests: they did not all read the same split; "
                     "only the images they share are compared.")
    return Comparison(rows, images, len(split_test), truth, _sentence(rows, images, truth), notes)


def _sentence(rows: list[Row], images: list[str], truth: Mapping[str, bool]) -> str:
    bad = sum(truth[r] for r in images)
    where = f"on these {len(images)} test images ({bad} defective, {len(images) - bad} good)" if images else ""
    others = [f"{r.signal.method} has none ({r.signal.absent or r.why_no_auroc})"
              for r in rows if r.auroc is None]
    return _verdict("image AUROC", "an image AUROC", where,
                    [Standing(r.signal.method, r.auroc) for r in rows if r.auroc is not None], others)


# --- wording shared by the image- and pixel-level sentences ---------------------------------------------


@dataclass(frozen=True)
class Standing:
    """One method's value of the measure a sentence ranks by, with its spread over images where it has one."""

    name: str
    value: float
    std: float | None = None

    def __str__(self) -> str:
        return f"{self.value:.3f}" + (f" ± {self.std:.3f}" if self.std is not None else "")


def _noise(a: Standing, b: Standing) -> float | None:
    """The larger spread of the two, the yardstick of a gap between them (None: neither has a spread)."""
    spreads = [s.std for s in (a, b) if s.std is not None]
    return max(spreads) if spreads else None


def _gap(best: Standing, other: Standing) -> str:
    """`` (a gap of g)``, saying when it is within one standard deviation, as the classifier's summary does;
    nothing between values without a spread (AUROC, F1: one number over the images, not a mean)."""
    noise = _noise(best, other)
    if noise is None:
        return ""
    gap = best.value - other.value
    within = f", within one standard deviation ({noise:.3f}): not a reliable difference" if gap <= noise else ""
    return f" (a gap of {gap:.3f}{within})"


def _top(standings: list[Standing]) -> tuple[list[Standing], list[Standing]]:
    """The standings best first, and those tied for first."""
    ranked = sorted(standings, key=lambda s: s.value, reverse=True)
    return ranked, [s for s in ranked if s.value == ranked[0].value]


def _verdict(measure: str, only: str, where: str, standings: list[Standing], missing: list[str]) -> str:
    """One sentence ranking the methods by ``measure`` (``only``: the measure with its article), then those
    that have none (``missing``, each "<method> has none (why)")."""
    if not standings:
        return f"No method has {only}{' ' + where if where else ''}: {'; '.join(missing)}."
    ranked, top = _top(standings)
    at = f" {where}" if where else ""
    if len(ranked) == 1:
        lead = f"Only {top[0].name} has {only}{at}: {top[0]}"
    elif len(top) > 1:
        lead = (f"By {measure}{at}, {' and '.join(s.name for s in top)} tie at {top[0].value:.3f}"
                + "".join(f", ahead of {s.name} at {s}" for s in ranked[len(top):]))
    else:
        lead = (f"By {measure}{at}, {top[0].name} is best: {top[0]}, against "
                + " and ".join(f"{s} for {s.name}{_gap(top[0], s)}" for s in ranked[1:]))
    return lead + "".join(f"; {m}" for m in missing) + "."


# --- pixel level: PatchCore's thresholded map against SAM's masks ---------------------------------------


@dataclass(frozen=True)
class Masks:
    """One method's masks as its stage scored them on each test image: the union of what it flags against the
    union of the true defects, at the image's own resolution, ``rel`` -> ``{"iou", "dice"}``."""

    key: str  # its name in summary.json
    method: str  # its name in the report
    made: str = ""  # how its mask is made, in words
    scores: Mapping[str, Mapping[str, float]] | None = None
    absent: str | None = None  # why there is nothing to compare
    skips_good: str | None = None  # why it scores no good image (None: it scores them)
    sees_truth: bool = False  # prompted with where the true defects are: a reference, not a contender


def _std(values: np.ndarray) -> float:
    """The sample standard deviation, as the classifier's cross-validation reports it (0 for one value)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (0 for one image) of IoU and Dice over ``images`` images."""

    images: int
    iou: float
    iou_std: float
    dice: float
    dice_std: float

    @classmethod
    def over(cls, scores: Mapping[str, Mapping[str, float]], images: list[str]) -> Spread | None:
        if not images:
            return None
        iou, dice = (np.array([float(scores[r][k]) for r in images]) for k in ("iou", "dice"))
        return cls(len(images), float(iou.mean()), _std(iou), float(dice.mean()), _std(dice))

    def summary(self) -> dict[str, Any]:
        return {"images": self.images, **{k: round(getattr(self, k), 6)
                                          for k in ("iou", "iou_std", "dice", "dice_std")}}


@dataclass(frozen=True)
class PixelRow:
    masks: Masks
    defective: Spread | None = None  # over the defective test images every method covered
    every: Spread | None = None  # over every test image the methods that score good images covered

    def summary(self) -> dict[str, Any] | None:
        if self.masks.absent:
            return None
        return {"mask": self.masks.made, "defective": self.defective and self.defective.summary(),
                "all_images": self.every and self.every.summary(), "why_not_all_images": self.masks.skips_good}


@dataclass(frozen=True)
class PixelComparison:
    rows: list[PixelRow]
    defective_images: list[str]  # the defective test images every method that ran scored, in splits.json order
    all_images: list[str]  # every test image each method that scores good images scored
    good_images: int  # of all_images
    sentence: str
    notes: list[str]

    def best(self) -> list[PixelRow]:
        """The rows with the highest mean IoU on the defective images (several when tied)."""
        scored = [r for r in self.rows if r.defective]
        top = max((r.defective.iou for r in scored), default=None)
        return [r for r in scored if r.defective.iou == top]

    def summary(self) -> dict[str, Any]:
        return {"defective_images": len(self.defective_images), "all_images": len(self.all_images),
                "good_images": self.good_images, "best_by_iou": [r.masks.key for r in self.best()],
                **{r.masks.key: r.summary() for r in self.rows}}

    def examples(self, limit: int) -> list[str]:
        """Up to ``limit`` defective images to draw, one per defect class in turn (their folder names them)."""
        by_class: dict[str, list[str]] = {}
        for rel in self.defective_images:
            by_class.setdefault(rel.split("/")[-2], []).append(rel)
        queues = list(by_class.values())
        picked = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
        return picked[:limit]


def patchcore_masks(anomaly: Mapping[str, Any] | None, command: str) -> Masks:
    """PatchCore's map at its pixel threshold (fitted on val + held-out train/good), as the stage recorded it."""
    name = "PatchCore (good-only)"
    if anomaly is None:
        return Masks("patchcore", name, absent=f"not run: `{command}`")
    scores = anomaly.get("test_pixel_scores")
    if scores is None:
        return Masks("patchcore", name, absent=f"no per-image record: `{command} --force` writes one")
    t = float(anomaly["thresholds"]["pixel"])
    return Masks("patchcore", name, f"map ≥ {t:.4g}, fitted on val + held-out train/good", scores)


SAM_MODES = {  # summary key -> (the SAM stage's record, its name, how its masks are made)
    "sam_detector": ("detector_prompted", "SAM from the detector's boxes (supervised)",
                     "fine-tuned SAM prompted with the detector's boxes"),
    "sam_true_boxes": ("finetuned", "SAM from the true boxes (upper bound)",
                       "fine-tuned SAM prompted with the true boxes"),
}


def sam_masks(sam: Mapping[str, Any] | None, key: str, command: str, detector_command: str) -> Masks:
    """SAM's masks in one prompting mode (``SAM_MODES``). Prompted with the true boxes it scores no good image:
    a good image has no box to prompt."""
    record, name, made = SAM_MODES[key]
    if sam is None:
        return Masks(key, name, absent=f"not run: `{command}`")
    mode = sam.get(record)
    if mode is None:
        return Masks(key, name, absent=f"not run: it needs the detector's boxes: `{detector_command}`, then "
                                       f"`{command} --force`")
    scores = mode.get("per_image_scores")
    if scores is None:
        return Masks(key, name, absent=f"no per-image record: `{command} --force` writes one")
    if key == "sam_detector" and mode.get("conf") is not None:
        made += f" (score ≥ {float(mode['conf']):g})"
    truth = key == "sam_true_boxes"
    return Masks(key, name, made, scores, skips_good="a good image has no true box to prompt with" if truth else None,
                 sees_truth=truth)


def _split_test(splits: Mapping[str, Any] | None, scored: list[Mapping[str, Any]]) -> list[str]:
    """The shared split's test images, in splits.json order; without a splits.json to read, every image a method
    scored (the keys of ``scored``), in a stable order."""
    split_test = list(((splits or {}).get("splits") or {}).get("test") or [])
    return split_test or sorted({r for s in scored for r in s})


def _covered(rels: list[str], methods: list[Masks]) -> list[str]:
    return [r for r in rels if all(r in m.scores for m in methods)] if methods else []


def compare_pixels(methods: list[Masks], splits: Mapping[str, Any] | None) -> PixelComparison:
    """Each method's mean IoU and Dice, with their spread, on the defective test images every method that ran
    scored; and on every test image, good ones included, for the methods that score good images (one that
    flags nothing on a good image scores 1 there, as the stages define it)."""
    present = [m for m in methods if not m.absent]
    split_test = _split_test(splits, [m.scores for m in present])
    truth = {r: _label(r, splits) != GOOD for r in split_test}
    defective = _covered([r for r in split_test if truth[r]], present)
    whole = [m for m in present if m.skips_good is None]
    every = _covered(split_test, whole)
    rows = [PixelRow(m) if m.absent else
            PixelRow(m, Spread.over(m.scores, defective), None if m.skips_good else Spread.over(m.scores, every))
            for m in methods]
    notes = []
    n_bad = sum(truth.values())
    if present and len(defective) < n_bad:
        notes.append(f"Only {len(defective)} of the shared split's {n_bad} defective test images were scored by "
                     "every method that ran; the defective-image columns use those.")
    good = sum(not truth[r] for r in every)
    return PixelComparison(rows, defective, every, good, _pixel_sentence(rows, len(defective), len(every), good),
                           notes)


def _pixel_sentence(rows: list[PixelRow], defective: int, every: int, good: int) -> str:
    """Mean IoU on the defective images, then over every image for the methods that score good ones."""
    missing = [f"{r.masks.method} has none ({r.masks.absent or 'no defective test image in common'})"
               for r in rows if r.defective is None]
    text = _verdict("mean IoU", "a mean IoU", f"on the {defective} defective test images every method covered"
                    if defective else "", [Standing(r.masks.method, r.defective.iou, r.defective.iou_std)
                                           for r in rows if r.defective], missing)
    scored = [Standing(r.masks.method, r.every.iou, r.every.iou_std) for r in rows if r.every]
    if scored and good:
        left_out = [f"{r.masks.method} is left out ({r.masks.skips_good})" for r in rows if r.masks.skips_good
                    and not r.masks.absent]
        text += " " + _verdict("mean IoU", "a mean IoU", f"over all {every} test images ({good} good, where a "
                               "method that flags nothing scores 1)", scored, left_out)
    return text


def _f1_sentence(result: Comparison) -> str:
    """The image-level decisions at each method's own operating point, by F1 (nothing when none decided)."""
    standings = [Standing(r.signal.method, r.at_point["f1"]) for r in result.rows if r.at_point]
    if not standings:
        return ""
    return _verdict("F1 at its own operating point", "an F1",
                    f"on the same {len(result.images)} images", standings, [])


def _winners(standings: list[Standing]) -> str:
    """Who leads by a measure; a lead within one standard deviation of the runner-up says so."""
    ranked, top = _top(standings)
    text = " and ".join(s.name for s in top)
    if len(top) == 1 and len(ranked) > 1:
        noise = _noise(ranked[0], ranked[1])
        if noise is not None and ranked[0].value - ranked[1].value <= noise:
            text += f", though within one standard deviation of {ranked[1].name}"
    return text


def verdicts(image: Comparison, pixel: PixelComparison) -> list[str]:
    """The comparison in words, one line each: the image-level verdicts (AUROC, F1 at each operating point), the
    pixel-level one (mean IoU ± its spread over images), and which approach wins where. SAM prompted with the true
    boxes sees where the defects are: where it leads, the best of the methods that do not is named too."""
    ranking = [Standing(r.signal.method, r.auroc) for r in image.rows if r.auroc is not None]
    deciding = [Standing(r.signal.method, r.at_point["f1"]) for r in image.rows if r.at_point]
    outlined = [r for r in pixel.rows if r.defective]
    outlining = [Standing(r.masks.method, r.defective.iou, r.defective.iou_std) for r in outlined]
    blind = [Standing(r.masks.method, r.defective.iou, r.defective.iou_std) for r in outlined if not r.masks.sees_truth]
    where = [f"{what}: {_winners(standings)}" for what, standings in (
        ("ranking images (AUROC)", ranking), ("deciding at its operating point (F1)", deciding),
        ("outlining defects (mean IoU on the defective images)", outlining)) if standings]
    if blind and len(blind) < len(outlining) and _top(outlining)[1][0].name not in {s.name for s in blind}:
        where.append(f"outlining defects without being shown where they are: {_winners(blind)}")
    f1 = _f1_sentence(image)
    lines = [f"**Image level.** {image.sentence}" + (f" {f1}" if f1 else ""), f"**Pixel level.** {pixel.sentence}"]
    wins = "; ".join(where)
    return lines + ([f"**Where each wins.** {wins[:1].upper()}{wins[1:]}."] if where else [])


def paragraph(image: Comparison, pixel: PixelComparison) -> str:
    """:func:`verdicts` as one paragraph (what summary.json keeps)."""
    return " ".join(verdicts(image, pixel))
