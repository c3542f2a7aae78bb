"""Image-level defect detection on the shared split's test images: good-only PatchCore against the supervised stages.

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
    split_test = list(((splits or {}).get("splits") or {}).get("test") or [])
    if not split_test:  # no splits.json to read: the images the methods scored, in a stable order
        split_test = sorted({r for s in present for r in s.decisions or {}})
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
    ranked = sorted((r for r in rows if r.auroc is not None), key=lambda r: r.auroc, reverse=True)
    bad = sum(truth[r] for r in images)
    where = f"on these {len(images)} test images ({bad} defective, {len(images) - bad} good)"
    others = [f"{r.signal.method} has none ({r.signal.absent or r.why_no_auroc})"
              for r in rows if r.auroc is None]
    if not ranked:
        return f"No method has an image AUROC{' ' + where if images else ''}: {'; '.join(others)}."
    rest = f"; {'; '.join(others)}" if others else ""
    top = [r for r in ranked if r.auroc == ranked[0].auroc]
    if len(ranked) == 1:
        lead = f"Only {top[0].signal.method} has an image AUROC {where}: {top[0].auroc:.3f}"
    elif len(top) > 1:
        lead = (f"By image AUROC {where}, {' and '.join(r.signal.method for r in top)} tie at {top[0].auroc:.3f}"
                + "".join(f", ahead of {r.signal.method} at {r.auroc:.3f}" for r in ranked[len(top):]))
    else:
        lead = (f"By image AUROC {where}, {top[0].signal.method} is best: {top[0].auroc:.3f}, against "
                + " and ".join(f"{r.auroc:.3f} for {r.signal.method}" for r in ranked[1:]))
    return lead + rest + "."
