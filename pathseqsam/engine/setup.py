"""Run setup used by the bundle configs: find or make the datalist, find the latest checkpoint."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["latest_checkpoint", "prepare_datalist", "resume_from_latest"]

logger = logging.getLogger("pathseqsam")


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str = "datalist.json",
    generate_if_empty: bool = True,
    cases: int = 10,
    seed: int = 0,
    image_size: int = 256,
    field_um: float = 256.0,
    difficulty: str = "easy",
    workers: int = 2,
) -> str:
    """Return the datalist of ``dataset_dir``; generate the synthetic demo set when the folder is empty.

    Args:
        dataset_dir: dataset folder.
        datalist: datalist file name inside it.
        generate_if_empty: write the synthetic serial-section demo set into an empty/missing folder.
        cases: demo cases.
        seed: demo seed.
        image_size: demo image size.
        field_um: demo field of view; 256 um at 256 px is 1 um per pixel, glomeruli 60-120 px across.
        difficulty: demo difficulty (``"easy"``: no inflammatory infiltrates or arterioles, so the
            randomly initialised CPU model learns it in minutes; ``"realistic"``: every hard negative),
            see :func:`pathseqsam.data.synthetic.generate_synthetic_dataset`.
        workers: processes rendering the demo cases (the result does not depend on it).

    Returns:
        Path of the datalist JSON.

    Raises:
        FileNotFoundError: the folder has data but no datalist (say how to make one).
    """
    root = Path(dataset_dir)
    path = root / datalist
    if path.is_file():
        return str(path)
    if root.exists() and any(root.iterdir()):
        raise FileNotFoundError(
            f"{path} not found, and {root} is not empty. For KPIs data run "
            f"'python -m pathseqsam.data.kpis --root {root} --out {path}', or point 'datalist' at an existing file."
        )
    if not generate_if_empty:
        raise FileNotFoundError(f"{path} not found and {root} is empty")
    from pathseqsam.data.synthetic import generate_synthetic_dataset

    logger.info(
        "%s is empty: generating the synthetic demo set (%d cases, seed %d, %s)",
        root,
        cases,
        seed,
        difficulty,
    )
    return str(
        generate_synthetic_dataset(
            root,
            cases=cases,
            seed=seed,
            image_size=image_size,
            field_um=field_um,
            difficulty=difficulty,
            workers=workers,
        )
    )


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
    from monai.handlers import CheckpointLoader

    path = latest_checkpoint(ckpt_dir)
    if path is None:
        logger.info("resume requested but %s has no checkpoint_epoch=*.pt: starting a fresh run", ckpt_dir)
        return None
    logger.info("resuming from %s", path)
    CheckpointLoader(load_path=path, load_dict=load_dict, map_location=map_location).attach(trainer)
    return path
