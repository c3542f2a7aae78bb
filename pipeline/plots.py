"""Figures shared by the stages and the report (matplotlib, headless), each written atomically as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.io import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return Path(path)


def confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], title: str, path: Path) -> Path:
    """A confusion matrix as an annotated heat map (rows true, columns predicted)."""
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.1 * n + 1.5), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                    color="white" if matrix[i][j] > top / 2 else "black")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def pr_curves(curves: dict[str, dict[str, Sequence[float]]], title: str, path: Path) -> Path:
    """Precision against recall, one line per named curve (``{"recall": [...], "precision": [...]}``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    for name, c in curves.items():
        ax.plot(c["recall"], c["precision"], label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def panels(images: Sequence[Any], titles: Sequence[str], title: str, path: Path) -> Path:
    """RGB images (H, W, 3 uint8) side by side in one row, each under its title: a comparison at a glance."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(3.3 * len(images), 3.8), dpi=100, squeeze=False)
    for ax, image, name in zip(axes[0], images, titles):
        ax.imshow(image)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # below the figure's title
    return _save(fig, path)


def curves(history: Sequence[dict[str, Any]], losses: Sequence[str], metric: str, title: str, path: Path,
           metric_label: str | None = None) -> Path:
    """Training curves per epoch: the named ``losses`` (left axis) and the val ``metric`` (right axis, 0 to 1),
    from a history of per-epoch rows (each with ``epoch``); a key missing from every row is left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    epochs = [r["epoch"] for r in history]
    for key in losses:
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax.plot(epochs, [float("nan") if v is None else v for v in values], label=key.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    values = [r.get(metric) for r in history]
    right.plot(epochs, [float("nan") if v is None else v for v in values], color="black", linestyle="--", marker=".",
               label=metric_label or metric.replace("_", " "))
    right.set_ylim(0, 1.02)
    right.set_ylabel(metric_label or metric.replace("_", " "))
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
