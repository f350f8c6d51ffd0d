"""One row per evaluated patch (slice): its identity, slice quality and the evaluator's per-patch metrics.

MONAI's ``MetricsSaver`` writes per-patch Dice keyed by name only. Comparing models on degraded
slices, or plotting Dice against slice quality, also needs each patch's ``degraded`` flag (and its
position and object counts): :class:`PerPatchSaver` collects them from the evaluator's batches in
the order the per-slice metrics were accumulated and writes them next to the metrics, atomically.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pathseqsam.atomic import atomic_write
from pathseqsam.engine.distributed import gather_lists
from pathseqsam.metrics import slice_names_for_saver
from pathseqsam.ranks import dist_rank_and_world

__all__ = ["PER_PATCH_COLUMNS", "PerPatchSaver"]

logger = logging.getLogger("pathseqsam")

PER_PATCH_COLUMNS = ("patch", "case", "slice_index", "position_um", "degraded", "dice", "tp", "fp", "fn")


def _per_slice(item: dict[str, Any], key: str, n: int) -> list[Any]:
    value = item.get(key)
    if value is None:
        return [None] * n
    arr = np.asarray(torch.as_tensor(value).detach().cpu())
    if arr.shape[0] != n:
        raise ValueError(f"case {item.get('case')!r}: {key!r} has {arr.shape[0]} entries for {n} slices")
    return list(arr)


class PerPatchSaver:
    """Write ``<output_dir>/<filename>``: one CSV row per patch after each evaluation.

    Columns (:data:`PER_PATCH_COLUMNS`): ``patch`` (``case/slice name``, as ``MetricsSaver``),
    ``case``, ``slice_index``, ``position_um`` (``;``-joined coordinates, empty when unknown),
    ``degraded`` (0/1, empty when the datalist has no flags), ``dice`` (the evaluator's per-patch
    Dice, ``nan`` for patches it leaves out: no glomerulus) and ``tp``, ``fp``, ``fn`` (object
    matches of the object-F1 metric, empty without one).

    Args:
        output_dir: folder of the CSV.
        filename: CSV name.
        dice_metric: the evaluator's per-patch Dice metric (saved with ``save_details``).
        object_metric: the object-F1 metric whose details are per-patch TP/FP/FN; None to omit.
    """

    def __init__(
        self,
        output_dir: str | Path,
        filename: str = "per_patch.csv",
        dice_metric: str = "val_mean_dice",
        object_metric: str | None = "val_object_f1",
    ) -> None:
        self.path = Path(output_dir) / filename
        self.dice_metric, self.object_metric = dice_metric, object_metric
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item in batch:
            names = [d["filename_or_obj"] for d in slice_names_for_saver(item)]
            n = len(names)
            positions = _per_slice(item, "positions", n)
            for name, index, pos, degraded in zip(
                names,
                _per_slice(item, "slice_index", n),
                positions,
                _per_slice(item, "degraded", n),
            ):
                coords = [] if pos is None else [float(v) for v in np.atleast_1d(pos)]
                self.rows.append(
                    {
                        "patch": name,
                        "case": str(item.get("case", "")),
                        "slice_index": "" if index is None else int(index),
                        "position_um": ";".join(f"{v:g}" for v in coords if np.isfinite(v)),
                        "degraded": "" if degraded is None else int(degraded),
                    }
                )

    def _details(self, engine: Engine, name: str, width: int) -> np.ndarray:
        details = getattr(engine.state, "metric_details", {}).get(name)
        if details is None:
            raise RuntimeError(
                f"PerPatchSaver: the evaluator has no per-patch details of {name!r} "
                "(add the metric with save_details=True)"
            )
        arr = np.asarray(torch.as_tensor(details).detach().float().cpu()).reshape(-1, width)
        if len(arr) != len(self.rows):
            raise RuntimeError(
                f"PerPatchSaver: {name!r} has {len(arr)} per-patch values for {len(self.rows)} patches "
                "(the metric must score one row per slice: output_transform=pathseqsam.metrics.per_slice_output)"
            )
        return arr

    def _write(self, engine: Engine) -> None:
        # distributed evaluation: MONAI gathers the per-patch metrics over the ranks in rank order;
        # gather the rows the same way (every rank runs this handler, rank 0 writes)
        self.rows = gather_lists(self.rows)
        dice = self._details(engine, self.dice_metric, 1)[:, 0]
        counts = self._details(engine, self.object_metric, 3) if self.object_metric else None
        for k, row in enumerate(self.rows):
            row["dice"] = float(dice[k])
            tp, fp, fn = ("", "", "") if counts is None else (int(c) for c in counts[k])
            row.update(tp=tp, fp=fp, fn=fn)
        if dist_rank_and_world()[0] != 0:
            return

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=PER_PATCH_COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, write_csv)
        logger.info("per-patch metrics of %d patches written to %s", len(self.rows), self.path)
