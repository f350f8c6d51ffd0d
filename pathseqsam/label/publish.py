"""Serve a model trained through MONAI Label only when it beats the served one on held-out images.

A MONAI Label ``/train`` run writes its checkpoints into a staging folder, never over the served
``models/model.pt``. :class:`ServedModelGate` validates the served weights once before the first
epoch (the baseline) and records every validation score in ``validation.json``; the bundle's
key-metric saver keeps the best weights of the run (baseline included) in the staging folder's
``model.pt``. When the run has finished, :func:`publish_if_improved` moves that file onto the served
``model.pt`` (one ``os.replace``: the served file is never missing or half-written) only if an epoch
scored strictly better than the baseline, the same rule the saver uses.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from pathseqsam.atomic import atomic_write_json

__all__ = ["RECORD_NAME", "ServedModelGate", "publish_if_improved"]

logger = logging.getLogger(__name__)

RECORD_NAME = "validation.json"


def _score(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class ServedModelGate:
    """Validate before training (the served weights) and record every validation score.

    Attach to the trainer after the handler that loads the served weights (MONAI Label prepends its
    ``CheckpointLoader`` to the handlers), so the baseline is the served model's score.

    Args:
        validator: the evaluator the ``ValidationHandler`` runs.
        record_dir: folder of ``validation.json``.
        metric_name: the evaluator's key metric.
    """

    def __init__(self, validator: Engine, record_dir: str | os.PathLike, metric_name: str = "val_mean_dice"):
        self.validator = validator
        self.path = Path(record_dir) / RECORD_NAME
        self.metric_name = metric_name
        self.trainer: Engine | None = None
        self.validations: list[dict[str, Any]] = []

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._baseline)
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record)

    def _baseline(self, trainer: Engine) -> None:
        logger.info("validating the served model before training (the score to beat)")
        self.validator.run(max(trainer.state.epoch, 1))

    def _record(self, validator: Engine) -> None:
        epoch = int(self.trainer.state.epoch) if self.trainer is not None else 0
        value = _score(validator.state.metrics.get(self.metric_name))
        self.validations.append({"epoch": epoch, self.metric_name: value})
        best = None
        for entry in self.validations:  # strictly better, as the key-metric saver decides
            score = entry[self.metric_name]
            if best is None or (score is not None and (best[1] is None or score > best[1])):
                best = (entry["epoch"], score)
        atomic_write_json(
            self.path,
            {
                "metric": self.metric_name,
                "baseline": self.validations[0][self.metric_name],
                "best_epoch": best[0],
                "best": best[1],
                "validations": self.validations,
            },
        )


def publish_if_improved(staging_dir: str | os.PathLike, served: str | os.PathLike) -> dict[str, Any]:
    """Move the staging ``model.pt`` onto ``served`` when a trained epoch beat the baseline.

    Args:
        staging_dir: the run's checkpoint folder (``model.pt``, ``validation.json``).
        served: the served checkpoint (``models/model.pt``).

    Returns:
        ``{"published": bool, "baseline", "best", "best_epoch", "metric"}`` from the record.

    Raises:
        FileNotFoundError: no validation record (the run did not validate), naming the folder.
    """
    staging_dir = Path(staging_dir)
    record_path = staging_dir / RECORD_NAME
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} not found: the training run recorded no validation")
    record = json.loads(record_path.read_text())
    staged = staging_dir / "model.pt"
    improved = int(record["best_epoch"]) > 0 and staged.is_file()
    summary = {
        "published": improved,
        **{k: record.get(k) for k in ("metric", "baseline", "best", "best_epoch")},
    }
    if improved:
        os.replace(staged, served)
        logger.info(
            "published the model of epoch %d (%s %.4f, served model %s) to %s",
            record["best_epoch"],
            record["metric"],
            record["best"],
            record["baseline"],
            served,
        )
    else:
        logger.info(
            "kept the served model: no epoch beat its %s of %s on the validation images",
            record["metric"],
            record["baseline"],
        )
    return summary
