"""A PNG contact sheet of one sequence: every slice with its mask contour and a caption."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathseqsam.atomic import atomic_write

__all__ = ["save_contact_sheet"]


def save_contact_sheet(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    captions: Sequence[str] | None = None,
    predictions: Sequence[np.ndarray] | None = None,
    highlight: Sequence[bool] | None = None,
    title: str | None = None,
    columns: int | None = None,
    tile_inches: float = 2.2,
) -> Path:
    """Save slices side by side with mask contours (green) and predicted contours (cyan) to a PNG, atomically.

    Args:
        path: destination ``.png``.
        images: RGB slices ``[H, W, 3]`` (uint8 or float in [0, 1]).
        masks: optional binary masks ``[H, W]``, one per slice; drawn as contours.
        captions: optional text under each slice.
        predictions: optional predicted binary masks ``[H, W]``, drawn as cyan contours.
        highlight: optional flags; flagged slices get a red caption and frame (e.g. degraded ones).
        title: optional figure title.
        columns: tiles per row (default: up to 6).
        tile_inches: size of one tile.

    Returns:
        The path written.
    """
    # Figure + Agg canvas directly: no global backend switch, safe in headless servers and tests.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    if n == 0:
        raise ValueError("save_contact_sheet needs at least one image")
    columns = columns or min(n, 6)
    rows = math.ceil(n / columns)
    fig = Figure(
        figsize=(columns * tile_inches, rows * (tile_inches + 0.35) + (0.4 if title else 0.0)), dpi=100
    )
    FigureCanvasAgg(fig)
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(np.asarray(images[i]), interpolation="nearest")
        if masks is not None and np.asarray(masks[i]).any():
            ax.contour(np.asarray(masks[i], dtype=np.float32), levels=[0.5], colors=["lime"], linewidths=0.9)
        if predictions is not None and np.asarray(predictions[i]).any():
            ax.contour(
                np.asarray(predictions[i], dtype=np.float32), levels=[0.5], colors=["cyan"], linewidths=0.9
            )
        flagged = bool(highlight[i]) if highlight is not None else False
        if captions is not None:
            ax.set_xlabel(captions[i], fontsize=7, color="red" if flagged else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor("red" if flagged else "black")
            spine.set_linewidth(2.0 if flagged else 0.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
