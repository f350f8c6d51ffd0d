"""A user's folder of images as inference inputs, without a hand-written datalist.

:func:`scan_input_folder` turns a folder into datalist items (one per input sequence) and a list of
the files it skipped and why:

* a 2D image (PNG, JPEG, BMP, single-page TIFF) at the top level: a sequence of one slice;
* a multi-page TIFF whose pages have one shape (or an OME-TIFF with ``SizeZ`` > 1), a NIfTI volume:
  a stack, positioned by its spacing metadata (none: distances are estimated from the images);
* a sub-folder of 2D images: one ordered sequence, in natural order of the file names
  (``s2.png`` before ``s10.png``), positioned by a ``positions.csv`` in that folder when there is
  one (columns ``image`` and ``x_um``/``y_um``/``z_um``, see
  :func:`pathseqsam.data.datalist.slice_folder_item`), else with unknown spacing (estimated);
* a pyramidal slide (Aperio SVS, or a TIFF whose pages shrink level by level) is refused with a
  pointer to the whole-slide command; other files are skipped with the reason.

Every input needs its pixel size (:mod:`pathseqsam.data.resolution`): the file's metadata, else the
``mpp_um`` fallback; inputs with neither stop the scan with one error listing them. Sequence names
(the output folders) are the file or folder names, made unique: two inputs with the same name never
share an output folder. File names are only ever used as data (paths, names), never evaluated.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathseqsam.data.datalist import slice_folder_item
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import read_image_size
from pathseqsam.data.resolution import MPP_HINT, resolve_mpp_um
from pathseqsam.data.stacks import is_nifti_path, is_tiff_path, probe_stack

__all__ = [
    "EXPECTED_INPUTS",
    "IMAGE_2D_SUFFIXES",
    "WSI_POINTER",
    "FolderInputs",
    "input_name",
    "natural_key",
    "scan_input_folder",
]

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
WSI_POINTER = (
    "a pyramidal whole-slide image; run the whole-slide command on it "
    "(python -m monai.bundle run --config_file bundle/configs/inference_wsi.json ...)"
)
# What an input folder may hold, and the pixel-size rule: the tail of every "nothing to segment" error,
# so a user who typed a wrong folder (or a first try on an empty one) learns what the command wants.
EXPECTED_INPUTS = (
    "expected 2D images (.png, .jpg, .jpeg, .bmp, single-page .tif/.tiff), stacks (multi-page .tif/.tiff, "
    ".ome.tif, .nii, .nii.gz) or sub-folders of 2D images (one ordered sequence each)"
)
_MPP_NOTE = "; files without a pixel size (PNG, JPEG and BMP never have one) also need '--mpp_um <um per px>'"
POSITIONS_CSV = "positions.csv"
_RESERVED = {"summary.json"}  # names of files the inference writer puts next to the input folders
_NAME_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    ".nii.gz",
    ".tiff",
    ".tif",
    ".nii",
    ".jpeg",
    ".jpg",
    ".png",
    ".bmp",
    ".svs",
)


@dataclass
class FolderInputs:
    """What :func:`scan_input_folder` found.

    Attributes:
        items: datalist items, one per input sequence (absolute paths, ``case`` = unique name,
            ``mpp_um``, ``positions_um`` when known).
        skipped: ``{"file": path, "reason": why}`` for every file or folder not used.
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value (``s2`` before ``s10``), case-insensitively."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name.lower())
    ]


def input_name(path: str | os.PathLike) -> str:
    """The name of an input: the file name without its image suffixes (``a.ome.tif`` -> ``a``)."""
    name = Path(path).name
    for suffix in _NAME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _tiff_kind(path: Path) -> str:
    """``"2d"``, ``"stack"`` or ``"pyramid"`` for a TIFF; raises SequenceDataError for other layouts."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_svs or any(len(s.levels) > 1 for s in tif.series):
                return "pyramid"
            shapes = [tuple(p.shape) for p in tif.pages]
            if len(set(shapes)) > 1:
                sizes = [s[0] * s[1] if len(s) >= 2 else 0 for s in shapes]
                if sizes[0] == max(sizes) and any(b < a for a, b in itertools.pairwise(sizes)):
                    return "pyramid"
                raise SequenceDataError(
                    f"{path}: pages of different sizes {sorted(set(shapes))[:4]}; expected one page (a 2D "
                    "image) or pages of one shape (a stack)"
                )
    except SequenceDataError:
        raise
    except Exception as exc:
        raise SequenceDataError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    info = probe_stack(path, z_spacing_um=1.0)  # the layout only; spacing is looked at separately
    return "stack" if info.n_slices > 1 else "2d"


def _stack_item(path: Path) -> dict[str, Any]:
    info = probe_stack(path, z_spacing_um=1.0)
    if info.spacing_source == "setting":  # no spacing metadata: distances are estimated
        return {"image": str(path), "spacing_source": "unknown"}
    return {
        "image": str(path),
        "positions_um": [[z] for z in info.z_positions_um],
        "spacing_source": info.spacing_source,
    }


def _classify(path: Path) -> str:
    """``"2d"``, ``"stack"``, ``"pyramid"`` or ``"other"``; SequenceDataError for an unreadable image."""
    name = path.name.lower()
    if name.endswith(IMAGE_2D_SUFFIXES):
        # the header only (no pixels): a truncated or mis-named file is skipped with the reason here
        # rather than stopping the run mid-way, and a folder of only such files is "no readable image"
        read_image_size(path)
        return "2d"
    if name.endswith(".svs"):
        return "pyramid"
    if is_tiff_path(path):
        return _tiff_kind(path)
    if is_nifti_path(path):
        return "stack"
    return "other"


def _folder_item(folder: Path, skipped: list[dict[str, str]]) -> dict[str, Any] | None:
    slices = []
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith(".") or entry.name == POSITIONS_CSV:
            continue
        try:
            kind = "folder" if entry.is_dir() else _classify(entry)
        except SequenceDataError as exc:
            skipped.append({"file": str(entry), "reason": str(exc)})
            continue
        if kind == "2d":
            slices.append(entry)
        elif kind == "pyramid":
            skipped.append({"file": str(entry), "reason": WSI_POINTER})
        else:
            skipped.append(
                {
                    "file": str(entry),
                    "reason": "in a sub-folder only 2D images (PNG, JPEG, single-page TIFF) form a sequence",
                }
            )
    if not slices:
        skipped.append({"file": str(folder), "reason": "sub-folder without 2D images"})
        return None
    csv_path = folder / POSITIONS_CSV
    if csv_path.is_file():
        item = slice_folder_item(csv_path, image_dir=folder, masks="optional")
        item.pop("label", None)
        listed = {Path(p).name for p in item["image"]}
        for p in slices:
            if p.name not in listed:
                skipped.append({"file": str(p), "reason": f"not listed in {csv_path}"})
        return {"image": item["image"], "positions_um": item["positions_um"]}
    return {"image": [str(p) for p in slices]}


def _unique_names(entries: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Output names: the input names, with the suffix (or ``_dir``) and then a counter added on clashes."""
    base = [input_name(p) if not p.is_dir() else p.name for p, _ in entries]
    counts = {n.lower(): 0 for n in base}
    for n in base:
        counts[n.lower()] += 1
    names, used = [], set(_RESERVED)
    for (p, _), n in zip(entries, base):
        if counts[n.lower()] > 1 or n.lower() in used:
            tag = "dir" if p.is_dir() else p.name[len(n) :].lstrip(".").replace(".", "_").lower() or "file"
            n = f"{n}_{tag}"
        candidate, k = n, 2
        while candidate.lower() in used:
            candidate, k = f"{n}_{k}", k + 1
        used.add(candidate.lower())
        names.append(candidate)
    return names


def scan_input_folder(
    root: str | os.PathLike, mpp_um: float | None = None, class_name: str = "input"
) -> FolderInputs:
    """Datalist items for every input in ``root`` (see the module docstring), and what was skipped.

    Args:
        root: the folder (or one image file).
        mpp_um: pixel size of inputs whose files carry none (PNG, JPEG, TIFF without resolution).
        class_name: the items' ``class``.

    Returns:
        The :class:`FolderInputs`.

    Raises:
        SequenceDataError: ``root`` does not exist, is empty, holds no usable input (lists what was
            skipped), or inputs lack a pixel size (lists them and says how to give one); each message
            names ``root`` and says what was expected (:data:`EXPECTED_INPUTS`, and ``--mpp_um`` when
            ``mpp_um`` is not given).
    """
    root = Path(root)
    # the folder as given, and where that is when it was relative (the command's working directory)
    named = str(root) if root.is_absolute() else f"{root} ({Path.cwd() / root})"
    expected = EXPECTED_INPUTS + ("" if mpp_um is not None else _MPP_NOTE)
    if not root.exists():
        raise SequenceDataError(f"input folder {named} not found: {expected}")
    if root.is_dir() and not any(not p.name.startswith(".") for p in root.iterdir()):
        raise SequenceDataError(f"input folder {named} is empty: {expected}")
    result = FolderInputs()
    entries: list[tuple[Path, dict[str, Any]]] = []
    candidates = [root] if root.is_file() else sorted(root.iterdir(), key=lambda p: natural_key(p.name))
    for path in candidates:
        if path.name.startswith("."):
            continue
        try:
            if path.is_dir():
                item = _folder_item(path, result.skipped)
                if item is not None:
                    entries.append((path, item))
                continue
            kind = _classify(path)
            if kind == "2d":
                entries.append((path, {"image": [str(path)]}))
            elif kind == "stack":
                entries.append((path, _stack_item(path)))
            elif kind == "pyramid":
                result.skipped.append({"file": str(path), "reason": WSI_POINTER})
            else:
                result.skipped.append(
                    {"file": str(path), "reason": "not an image (expected PNG, JPEG, BMP, TIFF or NIfTI)"}
                )
        except SequenceDataError as exc:
            result.skipped.append({"file": str(path), "reason": str(exc)})
    if not entries:
        more = f"; +{len(result.skipped) - 10} more" if len(result.skipped) > 10 else ""
        listed = "; ".join(f"{s['file']}: {s['reason']}" for s in result.skipped[:10]) + more
        raise SequenceDataError(f"no readable input image in {named} (skipped: {listed}): {expected}")
    missing = []
    for (path, item), name in zip(entries, _unique_names(entries)):
        first = item["image"][0] if isinstance(item["image"], list) else item["image"]
        try:
            item["mpp_um"], item["mpp_source"] = resolve_mpp_um(None, first, mpp_um, f"input {path}")
        except SequenceDataError:
            missing.append(str(path))
            continue
        item.update(case=name, **{"class": class_name, "input": str(path)})
        result.items.append(item)
    if missing:
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        raise SequenceDataError(
            f"{len(missing)} input(s) have no pixel size: {', '.join(missing[:10])}{more}; {MPP_HINT}"
        )
    return result
