"""Ignite handlers for PathSeqSAM runs: progress with ETA, NaN guard, curves, validation summary, overlays."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver, from_engine

from pathseqsam.atomic import atomic_write
from pathseqsam.engine.output_names import UniqueNames
from pathseqsam.metrics import summarise
from pathseqsam.visualize import overlay_strip

__all__ = [
    "AtomicCheckpointSaver",
    "NaNLossGuard",
    "OverlaySaver",
    "ProgressLogger",
    "TrainingCurves",
    "ValidationSummary",
]

logger = logging.getLogger("pathseqsam")


def _loss(engine: Engine) -> float:
    return float(from_engine(["loss"], first=True)(engine.state.output))


class NaNLossGuard:
    """Stop training at the first non-finite loss, with a message that says where and what to try.

    Args:
        loss_fn: the loss module (its ``last_terms`` are reported when present).
    """

    def __init__(self, loss_fn: Any = None) -> None:
        self.loss_fn = loss_fn

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = _loss(engine)
        if math.isfinite(loss):
            return
        terms = getattr(self.loss_fn, "last_terms", None)
        raise FloatingPointError(
            f"non-finite training loss {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
            + (f" (terms: {terms})" if terms else "")
            + ": check the inputs for NaN pixels, lower the learning rate, or train in fp32 instead of bf16 autocast"
        )


class ProgressLogger:
    """Log ``epoch e/E  iter i/I  loss  (terms)  lr  ETA`` every ``interval`` iterations.

    Args:
        interval: iterations between lines.
        loss_fn: loss module whose ``last_terms`` are shown.
        optimizer: to show the learning rate.
    """

    def __init__(self, interval: int = 10, loss_fn: Any = None, optimizer: Any = None) -> None:
        self.interval, self.loss_fn, self.optimizer = interval, loss_fn, optimizer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.t0, self.it0 = time.time(), engine.state.iteration

    def __call__(self, engine: Engine) -> None:
        s = engine.state
        per_epoch = s.epoch_length or 1
        total = s.max_epochs * per_epoch
        done = s.iteration - self.it0
        rate = (time.time() - self.t0) / max(done, 1)
        eta = rate * (total - s.iteration)
        terms = getattr(self.loss_fn, "last_terms", {}) or {}
        lr = f" lr {self.optimizer.param_groups[0]['lr']:.2e}" if self.optimizer is not None else ""
        logger.info(
            "epoch %d/%d  iter %d/%d  loss %.4f (%s)%s  %.2fs/it  ETA %s",
            s.epoch,
            s.max_epochs,
            (s.iteration - 1) % per_epoch + 1,
            per_epoch,
            _loss(engine),
            " ".join(f"{k} {v:.3f}" for k, v in terms.items()),
            lr,
            rate,
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )


class TrainingCurves:
    """Training loss and validation metric per epoch, as ``curves.csv`` and ``curves.png``.

    Attach to the trainer after the ``ValidationHandler``: at each epoch end it reads the
    validator's latest metric.

    Args:
        output_dir: where to write.
        validator: the evaluator run by the ValidationHandler (optional).
        metric_name: validator metric to plot.
    """

    def __init__(
        self, output_dir: str | Path, validator: Engine | None = None, metric_name: str = "val_mean_dice"
    ) -> None:
        self.output_dir, self.validator, self.metric_name = Path(output_dir), validator, metric_name
        self.losses: dict[int, list[float]] = {}
        self.metrics: dict[int, float] = {}
        self._pending: float | None = None  # validator metric not yet assigned to an epoch

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._validated)

    def _loss(self, engine: Engine) -> None:
        self.losses.setdefault(engine.state.epoch, []).append(_loss(engine))

    def _validated(self, validator: Engine) -> None:
        value = validator.state.metrics.get(self.metric_name)
        self._pending = None if value is None else float(value)

    def _epoch(self, engine: Engine) -> None:
        if self._pending is not None:  # a validation ran during this epoch
            self.metrics[engine.state.epoch] = self._pending
            self._pending = None
        self._write(engine)

    def _write(self, _engine: Engine) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.output_dir.mkdir(parents=True, exist_ok=True)
        epochs = sorted(self.losses)
        rows = [(e, float(np.mean(self.losses[e])), self.metrics.get(e, "")) for e in epochs]

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["epoch", "train_loss", self.metric_name])
                w.writerows(rows)

        atomic_write(self.output_dir / "curves.csv", write_csv)

        fig = Figure(figsize=(6, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(epochs, [r[1] for r in rows], "o-", color="tab:blue", label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="tab:blue")
        if self.metrics:
            ax2 = ax.twinx()
            me = sorted(self.metrics)
            ax2.plot(me, [self.metrics[e] for e in me], "s-", color="tab:green", label=self.metric_name)
            ax2.set_ylabel(self.metric_name, color="tab:green")
            ax2.set_ylim(0, 1)
        ax.set_title("PathSeqSAM training")
        fig.tight_layout()
        atomic_write(self.output_dir / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))


class ValidationSummary:
    """Log mean +- SD over patches of a per-slice metric after each evaluation (Table 1 style).

    Args:
        metric_name: the evaluator metric saved with ``save_details=True``.
    """

    def __init__(self, metric_name: str = "val_mean_dice") -> None:
        self.metric_name = metric_name
        self.last: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            return
        self.last = summarise(details)
        logger.info(
            "%s per patch: %.4f +- %.4f (median %.4f, %d patches)",
            self.metric_name,
            self.last["mean"],
            self.last["std"],
            self.last["median"],
            self.last["count"],
        )


class OverlaySaver:
    """After each evaluation, write overlays (image, ground truth in yellow, prediction in green).

    One PNG strip per sequence for the first ``max_sequences`` sequences, overwritten at every
    validation so the folder always shows the latest model. Case names are made safe file names
    (no ``../``) and unique within one evaluation (a repeated case gets ``<case>_2.png``).

    Args:
        output_dir: folder for ``<case>.png``.
        max_sequences: how many sequences to draw.
        max_slices: slices per strip.
    """

    def __init__(self, output_dir: str | Path, max_sequences: int = 4, max_slices: int = 12) -> None:
        self.output_dir, self.max_sequences, self.max_slices = Path(output_dir), max_sequences, max_slices

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, _engine: Engine) -> None:
        self.count = 0
        self._names = UniqueNames("overlay of case")

    def __call__(self, engine: Engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, meta in zip(items, batch):
            if self.count >= self.max_sequences:
                return
            self.count += 1
            pred = torch.as_tensor(item["pred"])[0, : self.max_slices]
            label = item.get("label")
            label = None if label is None else torch.as_tensor(label)[0, : self.max_slices]
            image = torch.as_tensor(item["image"])[:, : self.max_slices]
            case = (
                str(meta.get("case", f"sequence{self.count}"))
                if isinstance(meta, dict)
                else f"sequence{self.count}"
            )
            name = self._names(case, fallback=f"sequence{self.count}")  # safe, unique in this evaluation
            overlay_strip(image, pred, label, self.output_dir / f"{name}.png")


class _AtomicDiskSaver(DiskSaver):
    """Ignite's atomic DiskSaver (temp file + rename) with MONAI's fixed-filename option, group-readable.

    Ignite's ``Checkpoint`` asks the saver to ``remove`` the file it replaces BEFORE it writes the new
    one; with a fixed name (``model.pt``) that deletes the very file about to be rewritten, and with
    ``n_saved=1`` it deletes the only latest checkpoint. A kill or a full disk in between would leave
    none. Here removals wait until the new file is in place (``os.replace`` of a complete temp file),
    and a file that is being rewritten is replaced, never removed.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), require_empty=False, atomic=True)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)  # raises (old files untouched) if the write fails
        if idist.get_rank() == self.save_on_rank:  # other ranks of a distributed run write nothing
            (Path(self.dirname) / filename).chmod(0o644)  # the temp file was created 0600
            for old in self._pending_removal:
                if old != filename:
                    (Path(self.dirname) / old).unlink(missing_ok=True)
        self._pending_removal.clear()

    def remove(self, filename: str) -> None:
        self._pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every file atomically, never removing before replacing.

    MONAI writes in place and (through ignite) removes the previous file first; here every file is
    written to a temp file and moved into place, and the file it supersedes is removed only after
    that (see ``_AtomicDiskSaver``). A run killed or out of disk while saving keeps the previous
    ``model.pt`` and latest checkpoint intact. Same arguments as ``monai.handlers.CheckpointSaver``.

    With ``save_key_metric`` it is also stateful: ``state_dict()`` is the best score(s) kept so far
    (what MONAI's ``load_state_dict`` restores), so a resumed run that has it in its checkpoint
    dict keeps ``model.pt`` unless a validation beats the best of the run it continues.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            ckpt = getattr(self, name, None)
            if ckpt is not None:
                old = ckpt.save_handler
                ckpt.save_handler = _AtomicDiskSaver(old.dirname, getattr(old, "filename", None))

    def state_dict(self) -> dict[str, Any]:
        """The key-metric tracking list ``{"_saved": [(score, filename)]}`` (empty without a key metric)."""
        if self._key_metric_checkpoint is None:
            return {"_saved": []}
        saved = self._key_metric_checkpoint.state_dict()["_saved"]
        return {"_saved": [(float(score), str(name)) for score, name in saved]}  # weights_only-loadable
