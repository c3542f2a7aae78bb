"""``pipe classify``: every attempt on the shared split and on K stratified folds, plus one long-tail comparison.

Jobs are (attempt, long-tail variant, fold). Each finished job is written to ``runs/<job>/<fold>.json``
at once, so ``--resume`` after an interruption redoes only the unfinished ones: a job interrupted part-way
is trained again from its start, and since every job starts from the same seed, the resumed run's results
equal an uninterrupted one's. A resume under other settings, recipes or data is refused (``run_inputs.json``).
Each attempt runs its fine-tuning or its from-scratch variant (``classify.recipe``; auto: fine-tuning only when
every backbone of the attempt has ImageNet weights), recorded in its entry and in the attempts table.
Under ``torchrun`` every process trains every job on its shard; rank 0 writes. ``metrics.json`` and
``attempts.md`` come last.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline import plots
from pipeline.config import Config
from pipeline.console import LOUD
from pipeline.fetch import file_digest
from pipeline.io import read_json, write_json, write_text
from pipeline.metrics.classification import classification_metrics, mean_std
from pipeline.stages.classify import report
from pipeline.stages.classify.attempts import Attempt, load_attempt, load_attempts
from pipeline.stages.classify.data import Fold, ImageCache, Labelled, load_labelled, shared_split, stratified_folds
from pipeline.stages.classify.models import build, provenance, resolve_backbones
from pipeline.stages.classify.train import Options, fit
from pipeline.stages.common import Phases, attest, guard_resume, start, training_data
from pipeline.training import distributed, recipes
from pipeline.training.state import save, seed_everything
from pipeline.training.recipes import Recipe
from pipeline.weights import Resolved
from pipeline.workspace import ClassifyFiles, Dataset

log = logging.getLogger(__name__)


class Runner:
    """Runs (or, on resume, reloads) one job at a time with shared cache, weights and options."""

    def __init__(self, cfg: Config, data: Labelled, out: Path, o: Options, d: distributed.Dist, resume: bool) -> None:
        self.cfg, self.data, self.files, self.o, self.d, self.resume = cfg, data, ClassifyFiles(out), o, d, resume
        self.cache = ImageCache(cfg.classify.cache)
        self.weights: dict[str, Resolved] = {}

    def resolve(self, attempts: list[Attempt]) -> dict[str, Resolved]:
        """The ImageNet weights of every backbone the attempts use, looked up once per run and before any job:
        a resumed run reuses finished jobs but still records (and ``protocol`` reads) every attempt's weights."""
        missing = [b for a in attempts for b in a.backbones if b not in self.weights]
        self.weights.update(resolve_backbones(missing, Path(self.cfg.paths.weights), self.cfg.allow_random_init))
        return self.weights

    def choose(self, name: str, longtail: str | None = None) -> Recipe[Attempt]:
        """The variant of attempt ``name`` that runs: fine-tuning when every backbone of it has pretrained weights
        (``classify.recipe: auto``), else from scratch; or the one ``classify.recipe`` forces."""
        c = self.cfg.classify
        finetune = load_attempt(name, c, longtail)
        weights = self.resolve([finetune])
        pretrained = all(not weights[b].random_init for b in finetune.backbones)
        return recipes.choose(finetune, pretrained, key="classify", mode=c.recipe,
                              scratch=load_attempt(name, c, longtail, scratch=True))

    def starting(self, recipe: Recipe[Attempt]) -> tuple[dict[str, Resolved], list[dict[str, Any]]]:
        """What each backbone of the attempt starts from, and its weights records: the ImageNet weights, or (from
        scratch) a random initialisation, noted where pretrained weights were present but not used."""
        start, records = {}, []
        for b in recipe.section.backbones:
            found = self.weights[b]
            unused = recipe.scratch and found.path is not None
            start[b] = Resolved(found.spec, None, "random-init", None) if unused else found
            note = {"note": f"pretrained weights present ({found.path}) but not used: from-scratch recipe, "
                            f"{recipe.why}"} if unused else {}
            records.append({**provenance(start[b]), **note})
        return start, records

    def job(self, a: Attempt, weights: dict[str, Resolved], fold: Fold, tag: str) -> dict[str, Any]:
        path = self.files.fold_record(tag, fold.name)
        if self.resume and path.is_file():
            log.info(f"{tag} {fold.name}: finished earlier, reusing {path}")
            return read_json(path)
        seed_everything(self.o.seed)  # every job starts alike: a job redone after an interruption gives the same result
        model = build(a, len(self.data.classes), weights)
        result = fit(model, a, fold, self.data.classes, self.cache, self.o, self.d, label=f"{tag} {fold.name}")
        if self.d.main:
            if fold.name == "split":  # under the job's tag: a long-tail variant of A must not overwrite A's weights
                weights = save(self.files.best(tag), {"attempt": a.model_dump(), "classes": self.data.classes,
                                                             "state_dict": model.state_dict()})
                result["best_weights"] = {"file": str(weights), "sha256": file_digest(weights)}
            write_json(path, result)
        return result

    def protocol(self, recipe: Recipe[Attempt], tag: str, folds: list[Fold]) -> dict[str, Any]:
        """The shared split, then every fold; returns the attempt's entry for metrics.json."""
        a = recipe.section
        self.resolve([a])  # its jobs may all have finished before a resume
        weights, records = self.starting(recipe)
        split = self.job(a, weights, shared_split(self.data, self.cfg.classify.add_train_good), tag)
        results = [self.job(a, weights, f, tag) for f in folds]
        entry = {"id": a.id, "tag": tag, "name": a.name, "config": a.source, "recipe": recipe.record,
                 "hyperparameters": a.hyperparameters(), "weights": records, "split": _compact(split),
                 "best_weights": split.get("best_weights"), "cv": None,
                 "wall_s": round(split["wall_s"] + sum(r["wall_s"] for r in results), 3),
                 "images_per_s": split["images_per_s"]}
        if results:
            pooled = classification_metrics([y for r in results for y in r["test_predictions"]["label"]],
                                            [p for r in results for p in r["test_predictions"]["pred"]],
                                            self.data.classes)
            entry["cv"] = {"folds": len(results),
                           **{k: mean_std([r["test"][k] for r in results])
                              for k in ("accuracy", "balanced_accuracy", "macro_f1")},
                           "per_fold": [{"fold": r["fold"], "best_epoch": r["best_epoch"],
                                         **{k: r["test"][k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}}
                                        for r in results],
                           "pooled": pooled}
        return entry


def recipe_record(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's ``recipe``: the attempts' common recipe and why (else ``mixed``, ``per attempt``), and what each
    attempt's recipe changed, by attempt id."""
    names = list(dict.fromkeys(e["recipe"]["name"] for e in entries))
    whys = list(dict.fromkeys(e["recipe"]["why"] for e in entries))
    return {"name": names[0] if len(names) == 1 else "mixed", "why": whys[0] if len(whys) == 1 else "per attempt",
            "changes": {e["id"]: e["recipe"]["changes"] for e in entries}}


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("test_predictions", "best_weights")}


def _recall(entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Per-class recall from the pooled out-of-fold predictions when folds ran, else from the test split."""
    if entry["cv"]:
        m, basis = entry["cv"]["pooled"], f"the pooled out-of-fold predictions of {entry['cv']['folds']} folds"
    else:
        m, basis = entry["split"]["test"], "the test split"
    return {"recall": {n: c["recall"] for n, c in m["per_class"].items()},
            "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"]}, basis


def run_classify(cfg: Config, dataset: Dataset | Path, out: Path, resume: bool = False) -> dict[str, Any] | None:
    """Run the stage; return the metrics written to ``out/metrics.json`` (None on ranks other than 0)."""
    c = cfg.classify
    out, dataset = Path(out), Dataset.of(dataset)
    files = ClassifyFiles(out)
    phases = Phases()
    d, device, record = start("classify", cfg, dataset)
    load_attempts(c)  # every config error (both variants of every attempt) before any training
    data = load_labelled(dataset, c.classes, with_train_good=c.add_train_good)
    folds = stratified_folds(data, c.folds, cfg.seed, c.add_train_good) if c.folds else []
    o = Options(device, cfg.seed, c.select, c.amp, c.channels_last, c.workers)
    runner = Runner(cfg, data, out, o, d, resume)
    chosen = [runner.choose(name) for name in c.attempts]
    for r in chosen:
        r.announce(log, label=f"attempt {r.section.id}")
    attempts = [r.section for r in chosen]
    weights = runner.weights
    # before anything in ``out`` is removed: a refused --resume leaves the interrupted run as it was
    guard_resume("classify", cfg, out, d.main, resume, {
        **training_data(dataset, [dataset.splits],
                        ((s.rel, file_digest(s.path)) for s in [*data.pool, *data.train_good])),
        "weights": {b: w.sha256 or "random-init" for b, w in sorted(weights.items())}},
        extra={"recipes": {a.id: a.model_dump(exclude={"source"}) for a in attempts}})
    if d.main:
        files.metrics.unlink(missing_ok=True)
        if not resume:
            shutil.rmtree(files.fold_runs, ignore_errors=True)
    counts = {"train": len(shared_split(data, c.add_train_good).train), "val": len(data.splits["val"]),
              "test": len(data.splits["test"]), "labelled": len(data.pool), "train_good": len(data.train_good)}
    log.info(f"classify {cfg.category}: {len(attempts)} attempts x (shared split + {len(folds)} folds); "
             f"images {counts}; classes {data.classes}")

    entries = []
    for r in chosen:
        with phases(f"attempt_{r.section.id}"):
            entries.append(runner.protocol(r, r.section.id, folds))
    compare = None
    if c.compare is not None:
        with phases("compare"):
            compare = _compare(runner, next(e for e in entries if e["id"] == c.compare.attempt),
                               c.compare.attempt, c.compare.longtail, folds)
    if not d.main:
        distributed.shutdown(d)
        return None

    # every backbone any attempt used (sorted by name): the provenance block writes the caveats from these facts
    record = attest(record, sorted((w for e in entries for w in e["weights"]), key=lambda w: w["name"]))
    caveats = record["provenance"]["caveats"]
    for cav in caveats:
        log.warning(f"Classification: {cav}.", extra=LOUD)
    text, facts = report.summary(entries, caveats)
    figures = {}
    for e in entries:
        figures[e["id"]] = str(plots.confusion(e["split"]["test"]["confusion"], data.classes,
                                               f"{e['id']}: test split", files.confusion(e["id"])))
        if e["cv"]:
            figures[f"{e['id']}-cv"] = str(plots.confusion(
                e["cv"]["pooled"]["confusion"], data.classes, f"{e['id']}: pooled {e['cv']['folds']} folds",
                files.confusion(e["id"], cv=True)))
    metrics = {**record, "recipe": recipe_record(entries), "classes": data.classes, "images": counts, "folds": c.folds, "attempts": entries,
               "compare": compare, "summary": facts, "summary_text": text, "caveats": caveats,
               "confusion_plots": figures, "processes": d.world,
               "cache": {"enabled": runner.cache.enabled, "hits": runner.cache.hits, "misses": runner.cache.misses},
               "timing_s": phases.record()}
    write_text(files.attempts_md, report.markdown(metrics))
    write_json(files.metrics, metrics)
    distributed.shutdown(d)
    return metrics


def _compare(runner: Runner, entry: dict[str, Any], attempt_id: str, method: str,
             folds: list[Fold]) -> dict[str, Any]:
    """The same attempt without (``none``) and with ``method``; the main run stands in for whichever it is."""
    own = entry["hyperparameters"]["longtail"]
    name = runner.cfg.classify.attempts[[Path(n).stem for n in runner.cfg.classify.attempts].index(attempt_id)]
    variants = {}
    for side, longtail in (("without", "none"), ("with", method)):
        if own == longtail:
            variants[side] = entry
        else:  # the same recipe as the attempt's (the same backbones, so the same weights decide it)
            variants[side] = runner.protocol(runner.choose(name, longtail), f"{attempt_id}+{longtail}", folds)
    (without, basis), (with_, _) = _recall(variants["without"]), _recall(variants["with"])
    return {"attempt": attempt_id, "method": method, "basis": basis, "without": without, "with": with_,
            "runs": {side: v["tag"] for side, v in variants.items()},
            "wall_s": round(sum(v["wall_s"] for v in variants.values() if v is not entry), 3)}
