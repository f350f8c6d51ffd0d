"""Resuming a training run: find the latest ``checkpoint_epoch=N.pt`` and restore it before ``run()``."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint

__all__ = ["latest_checkpoint", "resume_from_latest"]

logger = logging.getLogger("pathseqsam")


def latest_checkpoint(directory: str | os.PathLike, prefix: str = "checkpoint_epoch=") -> str | None:
    """The ``<prefix><epoch>.pt`` with the highest epoch in ``directory``, or None."""
    found = []
    for p in Path(directory).glob(f"{prefix}*.pt"):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return str(max(found)[1]) if found else None


class _ResumeLoader:
    """Restore a checkpoint into the run's objects when the trainer starts (like MONAI's CheckpointLoader).

    Objects the checkpoint does not hold (one written before random states and the best score were
    saved) are left as they are, with a warning that names them; the trainer's ``max_epochs`` stays
    the configured one.
    """

    def __init__(self, path: str, load_dict: dict, map_location: Any = None) -> None:
        self.path, self.load_dict, self.map_location = path, load_dict, map_location

    def attach(self, trainer: Any) -> None:
        trainer.add_event_handler(Events.STARTED, self)

    def __call__(self, trainer: Any) -> None:
        checkpoint = torch.load(self.path, map_location=self.map_location, weights_only=True)
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            logger.warning(
                "%s holds no %s (written by an older version): resuming without them, so the run will not "
                "repeat the uninterrupted one exactly",
                self.path,
                missing,
            )
        max_epochs = trainer.state.max_epochs
        Checkpoint.load_objects(
            to_load={k: v for k, v in self.load_dict.items() if k in checkpoint}, checkpoint=checkpoint
        )
        if max_epochs is not None:
            if trainer.state.epoch > max_epochs:
                raise ValueError(
                    f"{self.path} is from epoch {trainer.state.epoch}, beyond this run's max_epochs {max_epochs}"
                )
            trainer.state.max_epochs = max_epochs


def resume_from_latest(
    trainer: Any, ckpt_dir: str | os.PathLike, load_dict: dict, map_location: Any = None
) -> str:
    """Restore the latest ``checkpoint_epoch=*.pt`` of ``ckpt_dir`` into ``load_dict`` when ``trainer`` starts.

    Training then continues from that epoch: model, optimizer, scheduler and engine state, and (in
    the bundle's ``checkpoint_dict``) the best validation score kept by the ``model.pt`` saver and
    every random stream (:class:`~pathseqsam.engine.random_state.RandomStates`), so the resumed run
    repeats the uninterrupted one.

    Args:
        trainer: the MONAI trainer, before ``run()``.
        ckpt_dir: checkpoint folder.
        load_dict: objects to restore (``{"model": ..., "optimizer": ..., "trainer": ...}``).
        map_location: device for the loaded tensors.

    Returns:
        The checkpoint path.

    Raises:
        FileNotFoundError: there is no checkpoint to resume from (a resume that silently started a
            fresh run would overwrite the folder's ``model.pt`` with a worse model).
    """
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise FileNotFoundError(
            f"resume requested but {ckpt_dir} has no checkpoint_epoch=*.pt to resume from; "
            "start a fresh run with --resume false (or point ckpt_dir at the run to continue)"
        )
    logger.info("resuming from %s", path)
    _ResumeLoader(path, load_dict, map_location).attach(trainer)
    return path
