"""MONAI-style sequence datalists: validation, writing (atomic, relative paths) and loading.

A datalist is a JSON object ``{"training": [...], "validation": [...], "test": [...]}`` with one item
per SEQUENCE (the slices of one subject), e.g.::

    {"image": ["case/img/a.jpg", "case/img/b.jpg"], "label": ["case/mask/a.jpg", "case/mask/b.jpg"],
     "positions_um": [[1024.0, 512.0], [1536.0, 512.0]], "case": "12_116", "class": "56Nx"}

* ``image``: list of slice files, or ONE stack file (multi-page TIFF, NIfTI);
* ``label``: the same shape as ``image``; absent for unlabelled (inference) data;
* ``positions_um``: one row per slice, ``[x, y]`` (KPIs patch centres), ``[z]`` or ``[x, y, z]`` (stacks),
  in micrometres; finite and pairwise distinct (two slices at the same place make distances useless);
* ``case``, ``class``: strings; ``degraded`` (optional): one 0/1 flag per slice.

Paths are stored relative to the datalist's folder (POSIX separators) unless they are on another
drive; :func:`load_datalist` resolves them against that folder, exactly like MONAI's
``load_decathlon_datalist(path, base_dir=None)``, which therefore reads these files too.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write_json
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import IMAGE_SUFFIXES, read_image_size

__all__ = [
    "DATALIST_SPLITS",
    "load_datalist",
    "slice_folder_item",
    "validate_positions",
    "validate_sequence_item",
    "write_datalist",
]

DATALIST_SPLITS = ("training", "validation", "test")
_PATH_KEYS = ("image", "label")


def validate_positions(
    positions: Any, n_slices: int | None, where: str, names: Sequence[str] | None = None
) -> np.ndarray:
    """Check one sequence's positions and return them as a float64 array ``[N, D]``.

    Args:
        positions: list of ``[x, y]`` / ``[z]`` / ``[x, y, z]`` rows (a flat list of numbers is read as
            ``[z]`` rows).
        n_slices: expected number of rows, or None when unknown (a stack not yet opened).
        where: description of the sequence for error messages (datalist file, split, case).
        names: optional slice names, so duplicate positions can name both slices.

    Returns:
        float64 array ``[N, D]`` with D in {1, 2, 3}.

    Raises:
        SequenceDataError: wrong length or dimension, non-numeric, non-finite or duplicate positions.
    """
    try:
        arr = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SequenceDataError(
            f"{where}: 'positions_um' must be a list of numeric rows ([x, y], [z] or [x, y, z]); {exc}"
        ) from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] not in (1, 2, 3) or arr.shape[0] == 0:
        raise SequenceDataError(
            f"{where}: 'positions_um' must have one row of 1, 2 or 3 coordinates per slice, got shape {arr.shape}"
        )
    if n_slices is not None and arr.shape[0] != n_slices:
        raise SequenceDataError(
            f"{where}: 'positions_um' has {arr.shape[0]} rows, expected one per slice ({n_slices})"
        )
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        i = int(bad[0])
        label = f" ({names[i]})" if names is not None else ""
        raise SequenceDataError(
            f"{where}: non-finite position {arr[i].tolist()} at slice {i}{label}; expected finite micrometres"
        )
    order = np.lexsort(arr.T[::-1])
    same = np.flatnonzero((np.abs(np.diff(arr[order], axis=0)) < 1e-9).all(axis=1))
    if same.size:
        i, j = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        label = f" ({names[i]} and {names[j]})" if names is not None else ""
        raise SequenceDataError(
            f"{where}: duplicate position {arr[i].tolist()} for slices {i} and {j}{label}; "
            "expected every slice of a sequence at a distinct place"
        )
    return arr


def _n_slices(value: Any) -> int | None:
    return len(value) if isinstance(value, (list, tuple)) else None


def validate_sequence_item(item: Mapping[str, Any], where: str, require_label: bool = False) -> None:
    """Check the structure of one datalist item (files are not opened).

    Args:
        item: datalist item (see the module docstring).
        where: description for error messages.
        require_label: raise when the item has no ``label`` (training data).

    Raises:
        SequenceDataError: a field is missing, of the wrong type or of the wrong length.
    """
    if not isinstance(item, Mapping):
        raise SequenceDataError(f"{where}: expected a JSON object per sequence, got {type(item).__name__}")
    image = item.get("image")
    if isinstance(image, (list, tuple)):
        if not image or not all(isinstance(p, (str, os.PathLike)) for p in image):
            raise SequenceDataError(f"{where}: 'image' must be a non-empty list of file paths")
    elif not isinstance(image, (str, os.PathLike)):
        raise SequenceDataError(
            f"{where}: 'image' must be a stack path or a list of slice paths, got {image!r}"
        )
    label = item.get("label")
    if label is None:
        if require_label:
            raise SequenceDataError(f"{where}: 'label' is missing; training data needs masks")
    elif isinstance(image, (list, tuple)) != isinstance(label, (list, tuple)) or (
        isinstance(label, (list, tuple)) and len(label) != len(image)
    ):
        raise SequenceDataError(
            f"{where}: 'label' must match 'image' (a list of the same length, or one stack path), "
            f"got {_n_slices(label)} labels for {_n_slices(image)} images"
        )
    n = _n_slices(image)
    names = [Path(p).name for p in image] if isinstance(image, (list, tuple)) else None
    if "positions_um" in item:
        validate_positions(item["positions_um"], n, where, names)
    if "degraded" in item:
        flags = item["degraded"]
        if not isinstance(flags, (list, tuple)) or any(f not in (0, 1) for f in flags):
            raise SequenceDataError(f"{where}: 'degraded' must be a list of 0/1 flags, one per slice")
        if n is not None and len(flags) != n:
            raise SequenceDataError(f"{where}: 'degraded' has {len(flags)} flags, expected {n}")
    for key in ("case", "class"):
        if key in item and not isinstance(item[key], str):
            raise SequenceDataError(f"{where}: {key!r} must be a string, got {item[key]!r}")


def _relative(path: str | os.PathLike, base: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return Path(os.path.relpath(absolute, base)).as_posix()
    except ValueError:  # another drive on Windows: keep it absolute
        return absolute.as_posix()


def write_datalist(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and write a sequence datalist atomically, with paths relative to its folder.

    Args:
        datalist: ``{"training": [...], "validation": [...], "test": [...]}``; missing splits are
            written as empty lists. Item paths may be absolute or relative to the current directory.
        path: destination JSON file.
        extra: optional top-level entries (e.g. ``{"description": ...}``) written alongside the splits.

    Returns:
        The path written.

    Raises:
        SequenceDataError: unknown split name or an invalid item (nothing is written then).
    """
    path = Path(path)
    base = Path(os.path.abspath(path.parent))
    unknown = sorted(set(datalist) - set(DATALIST_SPLITS))
    if unknown:
        raise SequenceDataError(f"{path}: unknown split(s) {unknown}; expected {list(DATALIST_SPLITS)}")
    out: dict[str, Any] = dict(extra or {})
    for split in DATALIST_SPLITS:
        items = []
        for i, item in enumerate(datalist.get(split, [])):
            validate_sequence_item(item, f"{path} [{split}][{i}] (case {item.get('case')!r})")
            new = {k: v for k, v in item.items() if not (k == "label" and v is None)}
            for key in _PATH_KEYS:
                if key in new:
                    value = new[key]
                    new[key] = (
                        [_relative(p, base) for p in value]
                        if isinstance(value, (list, tuple))
                        else _relative(value, base)
                    )
            items.append(new)
        out[split] = items
    return atomic_write_json(path, out)


def load_datalist(
    path: str | os.PathLike, split: str = "training", require_label: bool = False
) -> list[dict[str, Any]]:
    """Read one split of a sequence datalist, resolving relative paths against the file's folder.

    Args:
        path: datalist JSON file.
        split: "training", "validation" or "test".
        require_label: raise for items without ``label``.

    Returns:
        The validated items with absolute ``image``/``label`` paths.

    Raises:
        SequenceDataError: unreadable JSON, missing split or invalid item.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SequenceDataError(f"{path}: datalist file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SequenceDataError(f"{path}: cannot read datalist JSON ({exc})") from exc
    if not isinstance(content, dict) or split not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise SequenceDataError(f"{path}: expected a JSON object with a {split!r} list, found {keys}")
    if not isinstance(content[split], list):
        raise SequenceDataError(f"{path}: {split!r} must be a list of sequence items")
    base = path.parent
    items = []
    for i, item in enumerate(content[split]):
        where = f"{path} [{split}][{i}]"
        validate_sequence_item(item, where, require_label)
        new = dict(item)
        for key in _PATH_KEYS:
            value = new.get(key)
            if isinstance(value, list):
                new[key] = [os.path.normpath(base / p) for p in value]
            elif isinstance(value, str):
                new[key] = os.path.normpath(base / value)
        items.append(new)
    return items


_IMAGE_COLUMNS = ("image", "file", "filename")
_LABEL_COLUMNS = ("label", "mask")
_POSITION_COLUMNS = ("x_um", "y_um", "z_um")


def slice_folder_item(
    positions_csv: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    label_dir: str | os.PathLike | None = None,
    case: str | None = None,
    class_name: str = "slices",
    masks: str = "optional",
) -> dict[str, Any]:
    """Datalist item for a folder of 2D slices (PNG/JPEG/TIFF) described by a positions CSV.

    The CSV has a header row; columns ``image`` (file name, relative to ``image_dir``, default the CSV's
    folder), optional ``label`` (relative to ``label_dir``, default the CSV's folder), and one or more of
    ``x_um``, ``y_um``, ``z_um`` (micrometres). Row order is sequence order. Without a ``label`` column,
    a file of the same name in ``label_dir`` (if given) is the mask.

    Args:
        positions_csv: the CSV file.
        image_dir: folder of the image slices.
        label_dir: folder of the mask slices.
        case: case name (default: the image folder's name).
        class_name: value of the item's ``class``.
        masks: ``"required"`` (every slice needs a mask) or ``"optional"`` (no labels unless all exist).

    Returns:
        Datalist item with absolute paths.

    Raises:
        SequenceDataError: missing/malformed CSV, missing files, size mismatch, bad positions.
    """
    csv_path = Path(positions_csv)
    if not csv_path.is_file():
        raise SequenceDataError(f"{csv_path}: positions CSV not found")
    image_root = Path(image_dir) if image_dir is not None else csv_path.parent
    label_root = Path(label_dir) if label_dir is not None else csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SequenceDataError(f"{csv_path}: cannot read CSV ({exc})") from exc
    if not rows:
        raise SequenceDataError(f"{csv_path}: no slices; expected a header row and one row per slice")
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in rows]
    image_col = next((c for c in _IMAGE_COLUMNS if c in header), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in header), None)
    pos_cols = [c for c in _POSITION_COLUMNS if c in header]
    if image_col is None or not pos_cols:
        raise SequenceDataError(
            f"{csv_path}: columns {header}; expected an 'image' column and at least one of {list(_POSITION_COLUMNS)}"
        )
    images, labels, positions = [], [], []
    for line, row in enumerate(rows, start=2):
        image = image_root / row[image_col]
        if not row[image_col] or not image.is_file():
            raise SequenceDataError(f"{csv_path} line {line}: image file {image} not found")
        try:
            positions.append([float(row[c]) for c in pos_cols])
        except ValueError as exc:
            raise SequenceDataError(
                f"{csv_path} line {line}: position columns {pos_cols} must be numbers ({exc})"
            ) from exc
        # Masks: the 'label' column, else a file of the same name in label_dir (only when given).
        if label_col:
            label = label_root / row[label_col] if row[label_col] else None
        else:
            label = Path(label_dir) / row[image_col] if label_dir is not None else None
        if label is not None and label.is_file():
            size, label_size = read_image_size(image), read_image_size(label)
            if size != label_size:
                raise SequenceDataError(
                    f"{label}: mask is {label_size[1]}x{label_size[0]} px but image {image.name} is "
                    f"{size[1]}x{size[0]} px; expected equal sizes"
                )
            labels.append(str(label))
        else:
            if masks == "required":
                expected = label if label is not None else "a 'label' column or label_dir"
                raise SequenceDataError(
                    f"{csv_path} line {line}: no mask for {image.name} (expected {expected})"
                )
            labels.append(None)
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            warnings.warn(f"{image}: unusual image suffix; will try to read it with Pillow", stacklevel=2)
        images.append(str(image))
    validate_positions(positions, len(images), str(csv_path), [Path(p).name for p in images])
    item: dict[str, Any] = {
        "image": images,
        "positions_um": positions,
        "case": case or image_root.resolve().name,
        "class": class_name,
    }
    if all(lbl is not None for lbl in labels):
        item["label"] = labels
    elif label_col or label_dir is not None:
        warnings.warn(
            f"{csv_path}: some slices have no mask; the sequence is kept without labels", stacklevel=2
        )
    return item
