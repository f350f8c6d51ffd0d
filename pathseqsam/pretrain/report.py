"""What a pretraining run leaves behind for people: the loss curve and the checkpoint's record."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write

__all__ = ["plot_pretraining_curve", "running_median", "sha256_of"]


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file.

    Args:
        path: the file.

    Returns:
        64 hex characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running median (the first points use what exists so far). A median, not a mean:
    SAM2's focal term jumps by orders of magnitude on the few objects whose object score says "no
    object" (their logits are set to -1024), which would swamp a mean.

    Args:
        values: 1-D series.
        window: points per median.

    Returns:
        Same length as ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.array([np.median(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))])


def plot_pretraining_curve(
    history: list[dict[str, Any]],
    evaluations: list[dict[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    focal_weight: float = 20.0,
) -> Path:
    """PNG of the pretraining: loss per frame (image and video batches apart, running medians of 50)
    and its terms against iteration; held-out Dice (click on the first frame, propagated frames) on
    the right.

    Args:
        history: per-iteration rows of :func:`pathseqsam.pretrain.trainer.pretrain`.
        evaluations: its held-out evaluations.
        path: destination PNG.
        title: figure title.
        focal_weight: the run's focal weight (the focal term is drawn weighted).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2))
    FigureCanvasAgg(fig)
    ax_loss, ax_terms, ax_eval = fig.subplots(1, 3)
    it = np.array([r["iteration"] for r in history])
    frames = np.array([r["frames"] for r in history])
    for label, sel, colour in (
        ("single images", frames == 1, "tab:blue"),
        ("stacks", frames > 1, "tab:orange"),
    ):
        if sel.any():
            loss = np.array([r["loss"] for r in history])[sel]
            ax_loss.plot(it[sel], loss, ".", ms=1.5, alpha=0.25, color=colour)
            ax_loss.plot(it[sel], running_median(loss, 50), color=colour, label=f"{label} (median of 50)")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("SAM2 loss per frame")
    ax_loss.legend(fontsize=8)
    weights = {"mask": focal_weight, "dice": 1.0, "iou": 1.0, "class": 1.0}
    for key, name in (
        ("mask", f"{focal_weight:g} x focal"),
        ("dice", "dice"),
        ("iou", "IoU L1"),
        ("class", "object score"),
    ):
        values = weights[key] * np.array([r[key] for r in history])
        ax_terms.plot(it, running_median(values, 50), label=name)
    ax_terms.set_yscale("log")
    ax_terms.set_xlabel("iteration")
    ax_terms.set_title("loss terms per frame (median of 50)", fontsize=9)
    ax_terms.legend(fontsize=8)
    if evaluations:
        e_it = [e["iteration"] for e in evaluations]
        for key, name in (
            ("click_first", "1 click, prompted slice"),
            ("click_propagated", "1 click, propagated slices"),
            ("mask_propagated", "mask, propagated slices"),
            ("other_mask_propagated", "another object's mask, propagated (low: memory used)"),
            ("other_click_first", "another object's click, prompted slice (low: click used)"),
        ):
            if all(key in e for e in evaluations):  # records from before this key was measured lack it
                ax_eval.plot(e_it, [e[key] for e in evaluations], "o-", label=name)
        ax_eval.set_ylim(0, 1)
        ax_eval.legend(fontsize=8)
    ax_eval.set_xlabel("iteration")
    ax_eval.set_ylabel("held-out Dice (H&E stacks)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
