"""Resuming a training run: find the latest ``checkpoint_epoch=N.pt`` and restore it before ``run()``."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from monai.handlers import CheckpointLoader

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


def resume_from_latest(
    trainer: Any, ckpt_dir: str | os.PathLike, load_dict: dict, map_location: Any = None
) -> str | None:
    """Attach a ``CheckpointLoader`` for the latest ``checkpoint_epoch=*.pt`` to ``trainer``, if any.

    Training then continues from that epoch (model, optimizer, scheduler and engine state restored).

    Args:
        trainer: the MONAI trainer, before ``run()``.
        ckpt_dir: checkpoint folder.
        load_dict: objects to restore (``{"model": ..., "optimizer": ..., "trainer": ...}``).
        map_location: device for the loaded tensors.

    Returns:
        The checkpoint path, or None when there is nothing to resume (a fresh run).
    """
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        logger.info("resume requested but %s has no checkpoint_epoch=*.pt: starting a fresh run", ckpt_dir)
        return None
    logger.info("resuming from %s", path)
    CheckpointLoader(load_path=path, load_dict=load_dict, map_location=map_location).attach(trainer)
    return path
