"""The bundle's datalist: the dataset folder's ``datalist.json``, or the synthetic demo set made on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pathseqsam.synthetic import generate_synthetic_dataset

__all__ = ["prepare_datalist"]

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
            see :func:`pathseqsam.synthetic.generate_synthetic_dataset`.
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
