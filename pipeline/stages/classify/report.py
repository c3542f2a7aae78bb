"""What ``pipe classify`` writes for a reader: the attempts table and the generated summary.

The summary is computed from the numbers, never typed: it names the best attempt by the selection
basis (cross-validated macro-F1 when folds ran, else val macro-F1; never test), lists the
hyperparameters in which it differs from each other attempt, and says when the gap is within the spread.
"""

from __future__ import annotations

from typing import Any


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pm(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def weights_label(weights: list[dict[str, Any]]) -> str:
    return " + ".join(f"ImageNet ({w['enum'].split('.')[-1]})" if w["pretrained"] else "random init" for w in weights)


def _value(v: Any) -> str:
    """A config value as YAML writes it (``0.001``, ``true``, ``null``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else "null" if v is None else str(v)


def changes_text(changes: dict[str, Any]) -> str:
    """A recipe's changes as ``key old → new, ...``."""
    return ", ".join(f"{k} {_value(a)} → {_value(b)}" for k, (a, b) in changes.items())


def recipe_label(recipe: dict[str, Any] | None) -> str:
    """``finetune``, or ``scratch`` and what its variant changed (``key old → new``); ``–`` for an output written
    before recipes were recorded."""
    if not recipe:
        return "–"
    changed = changes_text(recipe.get("changes") or {})
    return recipe["name"] + (f" ({changed})" if changed else "")


def attempts_rows(attempts: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The coursework table, one row per attempt, plus test macro-F1 and the cross-validated numbers. The recipe
    column says which variant ran (fine-tuning or from scratch) and, for a from-scratch one, what it changed."""
    header = ["id", "recipe", "resize", "epochs", "lr (backbone / head)", "optimizer", "batch size", "backbone", "weights",
              "train loss / acc", "val loss / acc", "test acc", "test macro-F1", "CV acc (mean ± std)", "CV macro-F1"]
    rows = []
    for a in attempts:
        h, s = a["hyperparameters"], a["split"]
        cv = a.get("cv") or {}
        rows.append([a["id"], recipe_label(a.get("recipe")), f"{h['imgsz']}×{h['imgsz']}", f"{h['epochs']} (best {s['best_epoch']})",
                     f"{h['lr_backbone']:g} / {h['lr_head']:g}", h["optimizer"], str(h["batch"]), h["backbone"],
                     weights_label(a["weights"]), f"{_f(s['train']['epoch_loss'])} / {_f(s['train']['epoch_acc'])}",
                     f"{_f(s['val']['loss'])} / {_f(s['val']['accuracy'])}", _f(s["test"]["accuracy"]),
                     _f(s["test"]["macro_f1"]), _pm(cv.get("accuracy")), _pm(cv.get("macro_f1"))])
    return header, rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def recall_rows(compare: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-class recall without and with the long-tail method, then the two balanced summaries."""
    rows = [[n, _f(compare["without"]["recall"][n]), _f(compare["with"]["recall"][n])] for n in compare["without"]["recall"]]
    rows += [[f"**{k.replace('_', ' ')}**", _f(compare["without"][k]), _f(compare["with"][k])]
             for k in ("balanced_accuracy", "macro_f1")]
    return ["class", "recall without", f"recall with {compare['method']}"], rows


def _basis(a: dict[str, Any]) -> tuple[float, float | None, str]:
    cv = a.get("cv")
    if cv and cv["macro_f1"]["mean"] is not None:
        return cv["macro_f1"]["mean"], cv["macro_f1"]["std"], f"{cv['folds']}-fold cross-validated macro-F1"
    return a["split"]["val"]["macro_f1"] or 0.0, None, "val macro-F1 on the shared split"


def summary(attempts: list[dict[str, Any]], caveats: list[str]) -> tuple[str, dict[str, Any]]:
    """A few sentences naming the best attempt and what sets it apart, and the same facts as a dict."""
    ranked = sorted(attempts, key=lambda a: _basis(a)[0], reverse=True)
    best = ranked[0]
    value, spread, basis = _basis(best)
    lines = [f"**Best attempt: {best['id']}** ({best['name']}) by {basis}: {value:.3f}"
             + (f" ± {spread:.3f}" if spread is not None else "")
             + f"; its test accuracy on the shared split is {_f(best['split']['test']['accuracy'])}."]
    differences = {}
    for other in ranked[1:]:
        diff = {k: (v, other["hyperparameters"][k]) for k, v in best["hyperparameters"].items()
                if other["hyperparameters"].get(k) != v}
        differences[other["id"]] = {k: list(v) for k, v in diff.items()}
        o_value, o_spread, _ = _basis(other)
        factors = ", ".join(f"{k} ({b} vs {o})" for k, (b, o) in diff.items()) or "nothing in its recipe"
        gap = value - o_value
        noise = max(spread or 0.0, o_spread or 0.0)
        verdict = (f"a gap of {gap:.3f}, within one standard deviation ({noise:.3f}): not a reliable difference"
                   if spread is not None and gap <= noise else f"a gap of {gap:.3f}")
        lines.append(f"- vs {other['id']} ({o_value:.3f}): differs in {factors}; {verdict}.")
    lines += [f"- Caveat: {c}" for c in caveats]
    return "\n".join(lines), {"best": best["id"], "basis": basis, "value": value, "std": spread,
                              "ranking": [a["id"] for a in ranked], "differences": differences}


def markdown(metrics: dict[str, Any]) -> str:
    """``attempts.md``: the table, the summary, the cross-validation detail and the long-tail comparison."""
    parts = [f"# Classification: {metrics['category']} ({', '.join(metrics['classes'])})", ""]
    parts += [f"> {c}" for c in metrics["caveats"]] + ([""] if metrics["caveats"] else [])
    parts += ["## Attempts", "", md_table(*attempts_rows(metrics["attempts"])), "", "## Summary", "", metrics["summary_text"], ""]
    if metrics.get("compare"):
        c = metrics["compare"]
        parts += [f"## Long tail: attempt {c['attempt']} without and with {c['method']}", "",
                  f"Per-class recall on {c['basis']}.", "", md_table(*recall_rows(c)), ""]
    return "\n".join(parts)
