"""The provenance block every stage output carries: data kind, weights, whether its numbers mean anything, caveats.

Stages pass facts (the data kind, each weight's name and whether it is pretrained) and only the caveats
peculiar to them; the sentences for synthetic data and untrained weights are written here, once, so the
dataset card, ``convert_report.json``, each ``metrics.json`` and the report (which only merges the blocks)
all say the same thing. Each caveat is a noun phrase that completes "These numbers come from ...".

Plain values only, importing nothing of the pipeline: the data layer and the converter use it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DATA_KINDS = ("real", "synthetic", "unknown")
SYNTHETIC = "synthetic data (the generated stand-in for the category, not MVTec AD images)"
UNTRAINED = "untrained, randomly initialised weights for "
STAND_IN_TEXT_EMBEDDINGS = ("stand-in text embeddings for the YOLO-World class prompts (no CLIP weights or cache, "
                            "so they carry no language)")
WEIGHT_FACTS = ("name", "pretrained", "source", "sha256")  # what the block keeps of a weights record


def data_kind(kind: Any) -> str:
    """``real`` or ``synthetic`` as recorded; anything else (missing, misspelt) is ``unknown``, never real."""
    return kind if kind in DATA_KINDS else "unknown"


def weight_facts(weights: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each weight once (by name, first wins), reduced to the facts the block records."""
    seen: dict[str, dict[str, Any]] = {}
    for w in weights:
        facts = {k: w[k] for k in WEIGHT_FACTS if k in w}
        seen.setdefault(str(w["name"]), {**facts, "pretrained": w.get("pretrained") is True})
    return list(seen.values())


def untrained(weights: Iterable[Mapping[str, Any]]) -> list[str]:
    """The caveat for the weights that are not pretrained (one phrase naming them all), or none."""
    names = [w["name"] for w in weight_facts(weights) if not w["pretrained"]]
    return [UNTRAINED + ", ".join(names)] if names else []


def provenance(kind: Any, weights: Iterable[Mapping[str, Any]] = (), caveats: Iterable[str] = ()) -> dict[str, Any]:
    """The block: ``{"data", "weights", "meaningful", "caveats"}``.

    ``caveats`` are the stage's own (e.g. stand-in text embeddings); synthetic data and untrained weights add
    theirs here. The numbers are ``meaningful`` only on real data with no caveat at all.
    """
    data, facts = data_kind(kind), weight_facts(weights)
    notes = [SYNTHETIC] if data == "synthetic" else []
    notes += untrained(facts)
    notes += [c for c in dict.fromkeys(caveats) if c not in notes]
    return {"data": data, "weights": facts, "meaningful": data == "real" and not notes, "caveats": notes}


def merge(blocks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several stages' blocks as one: every data kind, every weight, the union of the caveats in order; meaningful
    only when there is at least one block and every block is (real data, no caveat)."""
    blocks = list(blocks)
    kinds = list(dict.fromkeys(data_kind(b.get("data")) for b in blocks))
    notes = list(dict.fromkeys(c for b in blocks for c in b.get("caveats", [])))
    return {"data": kinds, "weights": weight_facts(w for b in blocks for w in b.get("weights", [])),
            "meaningful": bool(blocks) and all(b.get("meaningful") is True and data_kind(b.get("data")) == "real"
                                               and not b.get("caveats") for b in blocks),
            "caveats": notes}
