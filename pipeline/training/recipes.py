"""Two recipes per training stage, chosen from the weights' provenance: fine-tuning and from scratch.

A training section (``yolo``, ``sam``, ``classify``, or a classification attempt) holds the fine-tuning recipe
in its own keys and the keys the from-scratch recipe changes in its ``scratch`` block (``configs/default.yaml``).
``recipe: auto`` picks fine-tuning when the stage's pretrained weights resolved and from scratch when they did
not (a random initialisation); ``finetune`` and ``scratch`` force one. Every stage calls :func:`choose` once,
right after resolving its weights, trains with the :class:`Recipe`'s ``section``, records ``Recipe.record`` in its
``metrics.json`` and logs :meth:`Recipe.line`.

Forcing ``scratch`` while pretrained weights are present trains from a random initialisation (the stage does not
load them and its provenance says so); forcing ``finetune`` on a random initialisation runs the fine-tuning
values on random weights, with a loud warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pipeline.config import RECIPE_KEYS, ClassifyConfig, Recipes, SamConfig, Section, YoloConfig, merge
from pipeline.console import LOUD

log = logging.getLogger(__name__)

NAMES = ("finetune", "scratch")
AUTO_PRETRAINED = "auto: pretrained weights present"
AUTO_RANDOM = "auto: random initialisation"
KEYS = {YoloConfig: "yolo", SamConfig: "sam", ClassifyConfig: "classify"}  # config key of each training section

S = TypeVar("S", bound=Section)


@dataclass(frozen=True)
class Recipe(Generic[S]):
    key: str  # the config key that chose it: yolo | sam | classify
    name: str  # finetune | scratch
    why: str  # AUTO_PRETRAINED, AUTO_RANDOM or "forced by <key>.recipe"
    pretrained: bool  # whether the stage's pretrained weights resolved
    section: S  # the settings to train with: the section, merged with its scratch block for ``scratch``
    changes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> [fine-tuning value, value used]

    @property
    def scratch(self) -> bool:
        return self.name == "scratch"

    @property
    def random_init(self) -> bool:
        """Whether training starts from random weights: from scratch, or no pretrained weights to start from."""
        return self.scratch or not self.pretrained

    @property
    def unused_weights(self) -> bool:
        """Pretrained weights are present but not loaded: ``scratch`` forced over them."""
        return self.scratch and self.pretrained

    @property
    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` records under ``recipe``."""
        return {"name": self.name, "why": self.why, "changes": {k: list(v) for k, v in self.changes.items()}}

    def line(self) -> str:
        """One line naming the recipe, why, and what it changed."""
        changed = "; ".join(f"{k} {_show(a)} → {_show(b)}" for k, (a, b) in self.changes.items())
        return f"{self.key}: {self.name} recipe ({self.why})" + (f": {changed}" if changed else "")

    def announce(self, logger: logging.Logger | None = None, label: str = "") -> None:
        """Log :meth:`line` (with ``label``, e.g. an attempt's id); warn loudly when the choice was forced against
        the weights' provenance."""
        logger = logger or log
        logger.info((f"{label}: " if label else "") + self.line())
        if not self.scratch and not self.pretrained:
            logger.warning(f"{label or self.key}: the fine-tuning recipe (forced by {self.key}.recipe) runs on RANDOMLY "
                           f"INITIALISED weights: its small learning rates and short schedule are made to adapt "
                           f"pretrained weights, not to learn from nothing; set {self.key}.recipe=auto for the "
                           f"from-scratch recipe.", extra=LOUD)
        elif self.unused_weights:
            logger.warning(f"{label or self.key}: pretrained weights are present but NOT USED: the from-scratch recipe "
                           f"(forced by {self.key}.recipe) trains from a random initialisation.", extra=LOUD)


def _show(v: Any) -> str:
    """A value as YAML writes it (``0.001``, ``true``, ``null``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(before: Section, after: Section) -> dict[str, list[Any]]:
    """The dotted keys whose values differ, ``[before, after]``, in the section's order (recipe keys left out)."""
    a = _flat({k: v for k, v in before.model_dump(mode="json").items() if k not in RECIPE_KEYS})
    b = _flat({k: v for k, v in after.model_dump(mode="json").items() if k not in RECIPE_KEYS})
    return {k: [a.get(k), b.get(k)] for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)}


def with_scratch(section: S) -> S:
    """``section`` merged with its ``scratch`` block (validated at config load, so this cannot fail there)."""
    scratch = getattr(section, "scratch", None) or {}
    return type(section).model_validate(merge(section.model_dump(), scratch)) if scratch else section


def choose(section: S, pretrained: bool, *, key: str | None = None, mode: str | None = None,
           scratch: S | None = None) -> Recipe[S]:
    """The recipe for ``section`` given whether its pretrained weights resolved.

    ``mode`` defaults to ``section.recipe`` (a config section's; else ``auto``) and ``key`` to the section's config key; ``scratch`` is the from-scratch
    section when it is not simply ``section`` merged with its scratch block (a classification attempt, whose
    run-wide overrides come after its scratch block)."""
    key = key or KEYS.get(type(section), type(section).__name__)
    mode = mode or (section.recipe if isinstance(section, Recipes) else "auto")
    if mode == "auto":
        name, why = ("finetune", AUTO_PRETRAINED) if pretrained else ("scratch", AUTO_RANDOM)
    elif mode in NAMES:
        name, why = mode, f"forced by {key}.recipe"
    else:
        raise ValueError(f"{key}.recipe: expected auto, finetune or scratch, got {mode!r}")
    if name == "finetune":
        return Recipe(key, name, why, pretrained, section)
    effective = scratch if scratch is not None else with_scratch(section)
    return Recipe(key, name, why, pretrained, effective, changes(section, effective))
