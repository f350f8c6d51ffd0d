"""PNG plots of a comparison: per-patch Dice per variant, Dice against slice quality, validation curves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pathseqsam.atomic import atomic_write
from pathseqsam.compare.stats import PatchTable

__all__ = ["dice_boxplot", "dice_vs_quality", "quality_groups", "read_validation_curve", "validation_curves"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _style(i: int) -> dict[str, str]:
    """Colour, marker and line style of the ``i``-th variant: matplotlib's 10 colours repeat, so every
    further ten variants get another marker and line style (the ablation run plots 11)."""
    return {"color": f"C{i % 10}", "marker": "osD^v"[i // 10 % 5], "linestyle": ("-", "--", ":")[i // 10 % 3]}


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def dice_boxplot(tables: dict[str, PatchTable], path: str | Path) -> Path:
    """Box plot of per-patch Dice per variant, every patch drawn on top (red: degraded sections).

    Args:
        tables: per-patch tables by variant, in plot order.
        path: destination PNG.

    Returns:
        The written path.
    """
    names = list(tables)
    fig = _figure(max(5.0, 1.3 * len(names) + 1.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    values = [t.dice[np.isfinite(t.dice)] for t in tables.values()]
    ax.boxplot(values, showfliers=False, widths=0.55)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    rng = np.random.default_rng(0)
    for i, t in enumerate(tables.values(), start=1):
        ok = np.isfinite(t.dice)
        for mask, colour, label in (
            (t.degraded != 1, "0.45", "clean"),
            (t.degraded == 1, "tab:red", "degraded"),
        ):
            sel = ok & mask
            x = i + rng.uniform(-0.18, 0.18, int(sel.sum()))
            ax.scatter(
                x, t.dice[sel], s=10, color=colour, alpha=0.7, label=label if i == 1 else None, zorder=3
            )
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("per-patch Dice")
    ax.set_title("Per-patch Dice per variant (patches with a glomerulus)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def quality_groups(table: PatchTable) -> dict[str, np.ndarray]:
    """Boolean patch masks per slice-quality group: ``all``, ``clean``, each damage kind, ``all degraded``.

    A patch with several damage kinds belongs to each of them.
    """
    groups = {
        "all": np.ones(len(table.quality), dtype=bool),
        "clean": np.array([q == ("clean",) for q in table.quality], dtype=bool),
    }
    kinds = sorted({k for q in table.quality for k in q} - {"clean", "unknown", "degraded"})
    for kind in kinds:
        groups[kind] = np.array([kind in q for q in table.quality], dtype=bool)
    groups["all degraded"] = table.degraded == 1
    return groups


def dice_vs_quality(tables: dict[str, PatchTable], path: str | Path) -> Path:
    """Mean +- SD per-patch Dice per slice-quality group (all, clean, each damage kind, all degraded) and variant.

    Args:
        tables: per-patch tables by variant (evaluated on the same patches), in plot order.
        path: destination PNG.

    Returns:
        The written path.
    """
    first = next(iter(tables.values()))
    groups = quality_groups(first)
    names = list(tables)
    fig = _figure(min(14.0, max(6.0, 0.3 * len(groups) * len(names) + 2)), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(names), 1)
    counts = {g: int((mask & np.isfinite(first.dice)).sum()) for g, mask in groups.items()}
    for j, (name, table) in enumerate(tables.items()):
        means, sds = [], []
        for mask in groups.values():
            v = table.dice[mask & np.isfinite(table.dice)]
            means.append(v.mean() if v.size else np.nan)
            sds.append(v.std() if v.size else np.nan)
        x = np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width
        style = _style(j)
        ax.errorbar(x, means, yerr=sds, fmt=style["marker"], color=style["color"], capsize=3, label=name)
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={counts[g]})" for g in groups])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("per-patch Dice (mean +- SD)")
    ax.set_xlabel("slice quality")
    ax.set_title("Dice vs slice quality")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def read_validation_curve(path: str | Path, metric: str = "val_mean_dice") -> tuple[np.ndarray, np.ndarray]:
    """Epochs and validation metric from a training run's ``curves.csv`` (the bundle's ``TrainingCurves``).

    Args:
        path: the ``curves.csv``.
        metric: its metric column.

    Returns:
        ``(epochs, values)`` of the epochs that ran a validation.

    Raises:
        ValueError: the file has no ``epoch`` or ``metric`` column (the message names the file).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "epoch" not in reader.fieldnames or metric not in reader.fieldnames:
            raise ValueError(f"{path}: expected columns 'epoch' and {metric!r}, found {reader.fieldnames}")
        pairs = [(int(r["epoch"]), float(r[metric])) for r in reader if r[metric] not in ("", None)]
    epochs = np.array([e for e, _ in pairs], dtype=int)
    return epochs, np.array([v for _, v in pairs], dtype=float)


def validation_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Validation Dice per epoch of every variant (the split that chose each best model), one line each.

    Shows where a time budget stopped a run and whether a variant was still rising there.

    Args:
        curves: ``(epochs, values)`` by variant (:func:`read_validation_curve`), in plot order.
        path: destination PNG.

    Returns:
        The written path.
    """
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, (epochs, values)) in enumerate(curves.items()):
        ax.plot(epochs, values, markersize=3, label=name, **_style(i))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation per-patch Dice")
    ax.set_title("Validation Dice per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
