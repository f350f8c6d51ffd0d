"""The bundle's datalists: the dataset folder's ``datalist.json``, the synthetic demo set made on first
use, or (inference) a user's folder of images scanned into items."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathseqsam.data.datalist import load_datalist
from pathseqsam.data.input_folder import scan_input_folder
from pathseqsam.synthetic import generate_synthetic_dataset

__all__ = ["DEMO_FIELD_UM", "InferenceInputs", "inference_inputs", "prepare_datalist"]

DEMO_FIELD_UM = 256.0  # side of the demo's field of view

logger = logging.getLogger("pathseqsam")


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str = "datalist.json",
    generate_if_empty: bool = True,
    cases: int = 10,
    seed: int = 0,
    image_size: int = 256,
    field_um: float = DEMO_FIELD_UM,
    difficulty: str = "easy",
    workers: int = 2,
    demo_mpp_um: float | None = None,
) -> str:
    """Return the datalist of ``dataset_dir``; generate the synthetic demo set when the folder is empty.

    Args:
        dataset_dir: dataset folder.
        datalist: datalist file name inside it.
        generate_if_empty: write the synthetic serial-section demo set into an empty/missing folder.
        cases: demo cases.
        seed: demo seed.
        image_size: demo image size (ignored when ``demo_mpp_um`` is given).
        field_um: demo field of view; 256 um at 256 px is 1 um per pixel, glomeruli 60-120 px across.
        difficulty: demo difficulty (``"easy"``: no inflammatory infiltrates or arterioles, so the
            randomly initialised CPU model learns it in minutes; ``"realistic"``: every hard negative),
            see :func:`pathseqsam.synthetic.generate_synthetic_dataset`.
        workers: processes rendering the demo cases (the result does not depend on it).
        demo_mpp_um: render the demo at this pixel size (``image_size = field_um / demo_mpp_um``): the
            bundle passes its ``model_mpp_um``, so the demo is made at the working resolution
            (2 um/px: 128 px over 256 um).

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
    if demo_mpp_um is not None:
        image_size = round(field_um / float(demo_mpp_um))
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


@dataclass
class InferenceInputs:
    """The inputs of one inference run.

    Attributes:
        items: datalist items to segment.
        skipped: ``{"file", "reason"}`` for every file of a scanned folder that was not used.
        source: ``"datalist"`` (the folder's datalist.json), ``"demo"`` or ``"folder"`` (scanned).
    """

    items: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    source: str = "datalist"


def inference_inputs(
    dataset_dir: str | os.PathLike,
    split: str = "test",
    datalist: str | os.PathLike | None = None,
    mpp_um: float | None = None,
    demo_mpp_um: float | None = None,
) -> InferenceInputs:
    """What the bundle's inference segments: a datalist split, or every image of a user's folder.

    * ``datalist`` is given: that file's ``split`` (paths relative to the file);
    * ``dataset_dir`` holds ``datalist.json``: its ``split``;
    * ``dataset_dir`` is missing or empty: the synthetic demo set is generated there (as for training)
      and its ``split`` is used;
    * otherwise the folder (or a single image file) is scanned
      (:func:`pathseqsam.data.input_folder.scan_input_folder`): 2D images, stacks and sub-folders of
      slices become items, everything else is listed in ``skipped`` with the reason.

    The folder name is an argument (the config passes ``@dataset_dir``); nothing found in the folder
    is ever parsed as configuration.

    Args:
        dataset_dir: dataset folder, a user's image folder, or one image file.
        split: datalist split to segment.
        datalist: a datalist file to read instead of ``dataset_dir``'s (the bundle's ``datalist``
            setting; None: ``<dataset_dir>/datalist.json`` when it exists).
        mpp_um: pixel size of scanned inputs whose files carry none (``--mpp_um``).
        demo_mpp_um: pixel size of a demo set generated here (see :func:`prepare_datalist`).

    Returns:
        The :class:`InferenceInputs`.

    Raises:
        SequenceDataError: a bad datalist, an input folder with nothing usable, or inputs without a
            pixel size (the message says how to give it).
    """
    root = Path(dataset_dir)
    if datalist is not None:
        return InferenceInputs(load_datalist(datalist, split), [], "datalist")
    if (root / "datalist.json").is_file() or not root.exists() or (root.is_dir() and not any(root.iterdir())):
        source = "datalist" if (root / "datalist.json").is_file() else "demo"
        path = prepare_datalist(root, demo_mpp_um=demo_mpp_um)
        return InferenceInputs(load_datalist(path, split), [], source)
    scanned = scan_input_folder(root, mpp_um=mpp_um)
    logger.info(
        "%s: %d input sequence(s) found, %d file(s) skipped", root, len(scanned.items), len(scanned.skipped)
    )
    for skipped in scanned.skipped:
        logger.warning("skipped %s: %s", skipped["file"], skipped["reason"])
    return InferenceInputs(scanned.items, scanned.skipped, "folder")
