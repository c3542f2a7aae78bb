"""What a resumable run was started with, so that ``--resume`` never continues under other settings.

A training stage calls ``guard`` before it trains. A fresh run records the configuration that shapes the
result and a digest of the data beside its checkpoints (``run_inputs.json``); a resumed run compares the
current ones with that record and stops with one line naming every key that differs. Without the check,
``--resume --set sam.lr=0.5`` would continue a run trained at another rate and record 0.5 as if it had
been used throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import PipeError
from pipeline.io import read_json, write_json

RECORD = "run_inputs.json"
IGNORED = ("device", "paths")  # where a run happens or is stored does not change what it learns


def trained_with(config: Mapping[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """The parts of a dumped config a stage's result depends on (``sections`` as the stage's registry entry declares)."""
    return {k: config[k] for k in sections if k in config and k not in IGNORED}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def differing_keys(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ (present on one side only counts as different)."""
    a, b = _flat(before), _flat(now)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))


def guard(folder: Path, config: Mapping[str, Any], data: Mapping[str, Any], resume: bool) -> Path:
    """Record ``config`` and ``data`` for a fresh run; on resume, refuse if either differs from the record."""
    path = Path(folder) / RECORD
    now = {"config": dict(config), "data": dict(data)}
    if resume and path.is_file():
        diff = [k.removeprefix("config.") for k in differing_keys(read_json(path), now)]  # config keys as set
        if diff:
            shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise PipeError(f"{path}: the interrupted run was trained with other values of {shown}; resume with "
                            f"the same settings, or run without --resume to start afresh")
        return path
    return write_json(path, now)
