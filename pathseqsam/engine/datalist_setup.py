"""The bundle's datalists: the dataset folder's ``datalist.json``, the synthetic demo set made on first
use, or (inference) a user's folder of images scanned into items.

Only a training job makes the demo set, and only in the bundle's own demo folder (``demo_dir``, the
configs' ``demo_dataset_dir``, ``<bundle_root>/data/synthetic_demo``): any other missing or empty folder
is a mistake (a typo, a first try) and stops the job with an error naming it, rather than filling it
with synthetic tissue and carrying on as if it were the user's data."""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathseqsam.data.datalist import load_datalist
from pathseqsam.data.input_folder import scan_input_folder
from pathseqsam.synthetic import generate_synthetic_dataset

__all__ = ["DEMO_FIELD_UM", "InferenceInputs", "demo_command", "inference_inputs", "prepare_datalist"]

DEMO_FIELD_UM = 256.0  # side of the demo's field of view
_DEMO_SUBDIR = ("data", "synthetic_demo")  # the configs' demo_dataset_dir below bundle_root

logger = logging.getLogger("pathseqsam")


def _train_command(demo_dir: str | os.PathLike | None) -> str:
    """The bundle's training command; its configs folder found from the demo folder where possible."""
    configs = "bundle/configs"  # the repository checkout, as the README runs it
    if demo_dir is not None and Path(demo_dir).parts[-2:] == _DEMO_SUBDIR:
        candidate = Path(demo_dir).parent.parent / "configs"
        if (candidate / "train.json").is_file():
            configs = str(candidate)
    return (
        f"python -m monai.bundle run training --config_file {configs}/train.json "
        f"--meta_file {configs}/metadata.json --logging_file {configs}/logging.conf"
    )


def _same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one folder (relative or absolute, through links; neither need exist)."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _demo_image_size(image_size: int, field_um: float, demo_mpp_um: float | None) -> int:
    """The demo's image side in pixels: ``field_um / demo_mpp_um`` when a pixel size is given."""
    return image_size if demo_mpp_um is None else round(field_um / float(demo_mpp_um))


def demo_command(
    dataset_dir: str | os.PathLike,
    cases: int = 10,
    seed: int = 0,
    image_size: int = 256,
    field_um: float = DEMO_FIELD_UM,
    difficulty: str = "easy",
    workers: int = 2,
    demo_mpp_um: float | None = None,
) -> str:
    """The one shell command that writes the demo set :func:`prepare_datalist` would make in ``dataset_dir``.

    The defaults are :func:`prepare_datalist`'s (a test holds them equal).

    Args:
        dataset_dir: the demo folder.
        cases: demo cases.
        seed: demo seed.
        image_size: demo image size (ignored when ``demo_mpp_um`` is given).
        field_um: demo field of view in micrometres.
        difficulty: demo difficulty.
        workers: rendering processes.
        demo_mpp_um: render at this pixel size (``image_size = field_um / demo_mpp_um``).

    Returns:
        The command line (``python -m pathseqsam.synthetic ...``), quoted for a POSIX shell.
    """
    image_size = _demo_image_size(image_size, field_um, demo_mpp_um)
    args = ["--out", str(dataset_dir), "--cases", str(cases), "--seed", str(seed)]
    args += ["--image-size", str(image_size), "--field-um", f"{float(field_um):g}"]
    args += ["--difficulty", difficulty, "--workers", str(workers)]
    return "python -m pathseqsam.synthetic " + shlex.join(args)


def _no_dataset_message(root: Path, state: str, datalist: str, demo_dir: str | os.PathLike) -> str:
    named = str(root) if root.is_absolute() else f"{root} ({Path.cwd() / root})"
    return (
        f"dataset folder {named} {state}: expected a folder holding {datalist} (for KPIs data: "
        f"'python -m pathseqsam.data.kpis --root <kpis folder> --out {root / datalist}'), or 'datalist' "
        "pointing at a datalist file. The synthetic demo set is generated only by the training job, and only "
        f"in the bundle's demo folder {demo_dir} (leave --dataset_dir at its default to use it)."
    )


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
    demo_dir: str | os.PathLike | None = None,
) -> str:
    """Return the datalist of ``dataset_dir``; generate the synthetic demo set when the folder is empty.

    Args:
        dataset_dir: dataset folder.
        datalist: datalist file name inside it.
        generate_if_empty: write the synthetic serial-section demo set into an empty/missing folder
            (the training job; evaluation passes False and is told to train first).
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
        demo_dir: the only folder the demo set may be generated in (the bundle passes its
            ``demo_dataset_dir``); any other missing or empty ``dataset_dir`` is an error. None: no
            such restriction (a Python caller that asks for a demo set in a folder of its own).

    Returns:
        Path of the datalist JSON.

    Raises:
        FileNotFoundError: the folder has data but no datalist (say how to make one); or it is missing
            or empty and the demo set may not be generated there (names the folder and what was
            expected; for the demo folder itself, the command that makes it).
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
    state = "is empty" if root.exists() else "does not exist"
    is_demo = demo_dir is None or _same_folder(root, demo_dir)
    if not is_demo:
        raise FileNotFoundError(_no_dataset_message(root, state, datalist, demo_dir))
    if not generate_if_empty:
        made_by = demo_command(
            root, cases, seed, image_size, field_um, difficulty, workers, demo_mpp_um=demo_mpp_um
        )
        raise FileNotFoundError(
            f"{path} not found: the demo folder {root} {state}. The training job generates it: run it first "
            f"({_train_command(demo_dir)}), or make only the demo set with: {made_by}"
        )
    image_size = _demo_image_size(image_size, field_um, demo_mpp_um)
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
        source: ``"datalist"`` (a datalist file or the folder's datalist.json) or ``"folder"`` (scanned).
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
    demo_dir: str | os.PathLike | None = None,
) -> InferenceInputs:
    """What the bundle's inference segments: a datalist split, or every image of a user's folder.

    * ``datalist`` is given: that file's ``split`` (paths relative to the file);
    * ``dataset_dir`` holds ``datalist.json``: its ``split`` (the demo set made by the training job);
    * ``dataset_dir`` is the demo folder ``demo_dir`` but missing or empty: an error that says to run
      the training job first (inference never generates data), with the command that makes the demo;
    * otherwise the folder (or a single image file) is scanned
      (:func:`pathseqsam.data.input_folder.scan_input_folder`): 2D images, stacks and sub-folders of
      slices become items, everything else is listed in ``skipped`` with the reason. A missing or
      empty folder, or one without a readable image, stops the run with an error naming it.

    The folder name is an argument (the config passes ``@dataset_dir``); nothing found in the folder
    is ever parsed as configuration.

    Args:
        dataset_dir: dataset folder, a user's image folder, or one image file.
        split: datalist split to segment.
        datalist: a datalist file to read instead of ``dataset_dir``'s (the bundle's ``datalist``
            setting; None: ``<dataset_dir>/datalist.json`` when it exists).
        mpp_um: pixel size of scanned inputs whose files carry none (``--mpp_um``).
        demo_mpp_um: pixel size the demo set is made at (only for the command in the demo-folder error).
        demo_dir: the bundle's demo folder (the config's ``demo_dataset_dir``); None: no folder is
            treated as the demo's.

    Returns:
        The :class:`InferenceInputs`.

    Raises:
        FileNotFoundError: ``dataset_dir`` is the demo folder and it has not been made yet.
        SequenceDataError: a bad datalist, a missing or empty input folder, one with nothing usable, or
            inputs without a pixel size (each message names the folder or files and what was expected).
    """
    root = Path(dataset_dir)
    if datalist is not None:
        return InferenceInputs(load_datalist(datalist, split), [], "datalist")
    if (root / "datalist.json").is_file():
        return InferenceInputs(load_datalist(root / "datalist.json", split), [], "datalist")
    if demo_dir is not None and _same_folder(root, demo_dir) and not (root.exists() and any(root.iterdir())):
        # the demo folder before the training job made it: the one case where a missing folder is
        # expected, so the error says how to make it instead of what a user's folder should hold
        prepare_datalist(root, generate_if_empty=False, demo_mpp_um=demo_mpp_um, demo_dir=demo_dir)
    scanned = scan_input_folder(root, mpp_um=mpp_um)
    logger.info(
        "%s: %d input sequence(s) found, %d file(s) skipped", root, len(scanned.items), len(scanned.skipped)
    )
    for skipped in scanned.skipped:
        logger.warning("skipped %s: %s", skipped["file"], skipped["reason"])
    return InferenceInputs(scanned.items, scanned.skipped, "folder")
