"""Slide-level evaluation (KPIs Task 2): segment slides, score the mask TIFFs against ground truth.

:func:`score_mask_files` compares a predicted and a ground-truth mask TIFF (anything
:func:`~pathseqsam.wsi.reader.open_slide` reads; foreground = non-zero) in level-0 geometry, in
row bands of bounded size (:class:`~pathseqsam.wsi.metrics.SlideScorer`): Dice, object F1 at
IoU >= 0.5 one-to-one, and the KPIs script's greedy variant beside it.

:class:`SlideEvaluator` runs :class:`~pathseqsam.wsi.segment.SlideSegmenter` for each
mode (``"sequence"``: the tiles as one PathSeqSAM sequence; ``"per_tile"``: no memory, the
baseline), scores every slide, and writes ``slides.csv`` (one row per slide and mode, then the mean
per mode, as KPIs reports) and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseqsam.atomic import atomic_write_json, atomic_write_text
from pathseqsam.wsi.kpis import kpis_task2_pairs, pair_slides_with_masks
from pathseqsam.wsi.metrics import SlideScorer
from pathseqsam.wsi.reader import SlideError, open_slide
from pathseqsam.wsi.segment import SlideInferenceSettings, SlideSegmenter, list_slides

__all__ = ["CSV_COLUMNS", "MODES", "SlideEvaluator", "score_mask_files"]

logger = logging.getLogger("pathseqsam")

MODES = ("sequence", "per_tile")
CSV_COLUMNS = (
    "slide",
    "mode",
    "dice",
    "f1",
    "precision",
    "recall",
    "tp",
    "fp",
    "fn",
    "n_pred",
    "n_gt",
    "f1_kpis",
    "precision_kpis",
    "recall_kpis",
)
_MEAN_COLUMNS = ("dice", "f1", "precision", "recall", "f1_kpis", "precision_kpis", "recall_kpis")


def score_mask_files(
    prediction: str | os.PathLike, ground_truth: str | os.PathLike, band_pixels: int = 1 << 21
) -> dict[str, float]:
    """Score a predicted mask TIFF against a ground-truth mask TIFF of the same level-0 size.

    Args:
        prediction: predicted mask (e.g. ``mask.tif`` of slide inference).
        ground_truth: ground-truth mask (e.g. KPIs ``<id>_mask.tiff``).
        band_pixels: pixels per band (rows = band_pixels // width): bounds memory.

    Returns:
        :meth:`SlideScorer.result`.

    Raises:
        SlideError: unreadable mask, or sizes that differ (both files and sizes named).
    """
    with (
        open_slide(prediction, require_mpp=False) as pred,
        open_slide(ground_truth, require_mpp=False) as gt,
    ):
        if (pred.width, pred.height) != (gt.width, gt.height):
            raise SlideError(
                f"{ground_truth}: ground-truth mask is {gt.width}x{gt.height} px but the prediction "
                f"{prediction} is {pred.width}x{pred.height} px; the mask must have the slide's level-0 size"
            )
        scorer = SlideScorer()
        rows = max(1, band_pixels // max(gt.width, 1))
        for y in range(0, gt.height, rows):
            h = min(rows, gt.height - y)
            p = pred.read_level_region(0, 0, y, pred.width, h)[..., 0] > 0
            g = gt.read_level_region(0, 0, y, gt.width, h)[..., 0] > 0
            scorer.update(p, g)
        return scorer.result()


class SlideEvaluator:
    """Segment slides and score them against ground-truth masks.

    Give ``slides`` and ``masks`` (paths, folders or glob patterns; masks are matched to slides by
    name, see :mod:`pathseqsam.wsi.kpis`), or else ``dataset_dir`` (a KPIs Task 2 root).

    Args:
        network: the PathSeqSAM network.
        output_dir: ``predictions_<mode>/<slide>/`` (slide inference outputs), ``slides.csv``,
            ``summary.json``.
        slides: slides to evaluate.
        masks: their ground-truth masks.
        dataset_dir: a KPIs Task 2 root instead of ``slides`` / ``masks``.
        modes: ``"sequence"`` and/or ``"per_tile"``.
        checkpoint: optional weights for ``network``.
        device: torch device.
        amp: bf16 autocast on CUDA.
        settings: a :class:`~pathseqsam.wsi.segment.SlideInferenceSettings` (the bundle's
            ``slide_settings``) or a mapping of its fields; ``per_tile`` is set by ``modes``.
        **fields: :class:`~pathseqsam.wsi.segment.SlideInferenceSettings` fields that replace
            those of ``settings``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        slides: str | Sequence[str] | None = None,
        masks: str | Sequence[str] | None = None,
        dataset_dir: str | os.PathLike | None = None,
        modes: Sequence[str] = MODES,
        checkpoint: str | os.PathLike | None = None,
        device: Any = None,
        amp: bool = False,
        settings: SlideInferenceSettings | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        bad = [m for m in modes if m not in MODES]
        if bad or not modes:
            raise ValueError(f"modes must be a non-empty list of {MODES}, got {list(modes)}")
        if bool(slides) != bool(masks):
            raise ValueError("give both slides and masks (or neither, and a dataset_dir)")
        if slides and masks:  # explicit files win over the (default) dataset_dir
            self.pairs = pair_slides_with_masks(list_slides(slides), list_slides(masks))
        elif dataset_dir:
            self.pairs = kpis_task2_pairs(dataset_dir)
        else:
            raise ValueError("give dataset_dir (a KPIs Task 2 root) or both slides and masks")
        self.output_dir = Path(output_dir)
        self.modes = list(modes)
        if isinstance(settings, SlideInferenceSettings):
            settings = asdict(settings)
        settings = {**(settings or {}), **fields}
        settings.pop("per_tile", None)
        self.segmenters = {
            mode: SlideSegmenter(
                network,
                self.output_dir / f"predictions_{mode}",
                checkpoint=checkpoint if i == 0 else None,
                device=device,
                amp=amp,
                shard=False,
                settings=settings,
                per_tile=(mode == "per_tile"),
            )
            for i, mode in enumerate(self.modes)
        }

    def run(self) -> dict[str, Any]:
        """Segment and score every slide in every mode; write ``slides.csv`` and ``summary.json``."""
        rows: list[dict[str, Any]] = []
        inference: dict[str, list[dict[str, Any]]] = {m: [] for m in self.modes}
        for pair in self.pairs:
            for mode, segmenter in self.segmenters.items():
                summary = segmenter.segment(pair["slide"])
                inference[mode].append(summary)
                pred = segmenter.output_dir / summary["name"] / "mask.tif"
                scores = score_mask_files(pred, pair["mask"])
                row = {"slide": pair["slide"], "mode": mode, **{k: scores[k] for k in CSV_COLUMNS[2:]}}
                rows.append(row)
                logger.info(
                    "%s (%s): Dice %.4f, F1 %.4f (KPIs greedy %.4f), %d predicted / %d true glomeruli",
                    pair["slide"],
                    mode,
                    row["dice"],
                    row["f1"],
                    row["f1_kpis"],
                    row["n_pred"],
                    row["n_gt"],
                )
        means = {
            mode: {c: float(np.mean([r[c] for r in rows if r["mode"] == mode])) for c in _MEAN_COLUMNS}
            for mode in self.modes
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "slides.csv", _csv(rows, means))
        summary = {
            "slides": len(self.pairs),
            "modes": self.modes,
            "mean": means,
            "per_slide": rows,
            "inference": {
                mode: [
                    {k: s[k] for k in ("name", "tiles", "count", "tissue_mm2", "timings_s")} for s in items
                ]
                for mode, items in inference.items()
            },
        }
        atomic_write_json(self.output_dir / "summary.json", summary)
        return summary


def _csv(rows: list[dict[str, Any]], means: dict[str, dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    for mode, m in means.items():
        writer.writerow(
            {
                "slide": "mean",
                "mode": mode,
                **{k: (f"{v:.6f}" if math.isfinite(v) else "") for k, v in m.items()},
            }
        )
    return buf.getvalue()
