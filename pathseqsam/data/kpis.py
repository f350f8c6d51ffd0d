"""KPIs 2024 Task 1 (patch level) reader: case folders -> ordered patch sequences -> datalist JSON.

Layout (see the KPIs challenge data description)::

    Task1_patch_level/<train|validation|test>/<normal|56Nx|56NX|DN|NEP25>/<case>/img/*_img.jpg
                                                                          /mask/*_mask.jpg

* Case folders are spelled with underscores in train (``12_116``) and hyphens in validation/test
  (``12-173``); the folder name is kept verbatim as the item's ``case``.
* File names are ``<stem>_<A>_<B>_img.<ext>`` / ``..._mask.<ext>`` where ``<stem>`` may or may not start
  with the class (``56Nx_12_116_4_4096_0_img.jpg``, ``08_373_01_242_4096_14336_img.jpg``). ``A, B`` are
  the patch's pixel offset in its slide. Their order is ambiguous in the wild (the first-place
  solution reads (x=column, y=row), the organisers' tiling script writes (row, column)); it is the
  ``offset_order`` setting, default ``"xy"``.
* Images and masks are paired by ``(<stem>, A, B)``, so their extensions may differ.
* Each case becomes ONE sequence ordered along a short path through the patch centres
  (:mod:`pathseqsam.data.ordering`), with ``positions_um = (offset + size / 2) * mpp``: the centre in
  micrometres, from a per-class microns-per-pixel setting (default 0.25 um/px for the 40x classes,
  0.5 um/px for NEP25, which is scanned at 20x).

Bad input raises :class:`~pathseqsam.data.errors.SequenceDataError` naming the file and what was
expected. With ``strict=False`` unparseable file names and empty cases are skipped with a warning
instead; a missing mask is an error when ``masks="required"`` (training) and drops the case's labels
with a warning when ``masks="optional"`` (inference).

CLI::

    python -m pathseqsam.data.kpis --root DIR --out datalist.json [--offset-order xy|yx]
        [--mpp NEP25=0.5 --mpp normal=0.25 ...] [--masks required|optional] [--lenient] [--verify]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.data.datalist import DATALIST_SPLITS, validate_positions, write_datalist
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import IMAGE_SUFFIXES, read_image_size, read_slice
from pathseqsam.data.ordering import short_path_order

__all__ = [
    "KPIS_DEFAULT_MPP_UM",
    "KPIS_SPLIT_FOLDERS",
    "KPIsPatch",
    "build_kpis_datalist",
    "canonical_class",
    "main",
    "parse_kpis_name",
    "scan_kpis",
]

# Split folder (lower-case) -> datalist split.
KPIS_SPLIT_FOLDERS = {
    "train": "training",
    "training": "training",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}
KPIS_DEFAULT_MPP_UM = {"normal": 0.25, "56Nx": 0.25, "DN": 0.25, "NEP25": 0.5}
_CANONICAL_CLASSES = {name.lower(): name for name in KPIS_DEFAULT_MPP_UM}
_NAME_RE = re.compile(
    r"^(?P<stem>.+?)_(?P<a>\d+)_(?P<b>\d+)_(?P<kind>img|mask)(?P<ext>\.[A-Za-z]+)$", re.IGNORECASE
)
_EXPECTED_NAME = "'<prefix>_<A>_<B>_img.jpg' (or _mask.jpg), e.g. 56Nx_12_116_4_4096_0_img.jpg"
_IGNORED_FILES = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class KPIsPatch:
    """One image patch of a case, with its mask (if any) and its offset in the slide.

    Attributes:
        image: image file.
        mask: mask file, or None.
        offset_xy: ``(x, y)`` pixel offset of the patch's top-left corner in the slide.
        size_hw: ``(height, width)`` of the patch in pixels.
    """

    image: Path
    mask: Path | None
    offset_xy: tuple[int, int]
    size_hw: tuple[int, int]


def canonical_class(name: str) -> str:
    """Canonical class name: ``56NX`` -> ``56Nx``, ``nep25`` -> ``NEP25``; unknown names unchanged.

    Args:
        name: class folder name.

    Returns:
        The canonical spelling.
    """
    return _CANONICAL_CLASSES.get(name.lower(), name)


def parse_kpis_name(name: str, offset_order: str = "xy") -> tuple[str, str, tuple[int, int]]:
    """Parse a KPIs patch file name.

    Args:
        name: file name such as ``56Nx_12_116_4_4096_0_img.jpg``.
        offset_order: ``"xy"`` if the two numbers before ``_img`` are (x=column, y=row), ``"yx"`` if
            they are (row, column).

    Returns:
        ``(key, kind, (x, y))``: ``key`` identifies the patch within its case (shared by the image and
        its mask), ``kind`` is ``"img"`` or ``"mask"``.

    Raises:
        SequenceDataError: the name does not follow the pattern or ``offset_order`` is invalid.
    """
    if offset_order not in ("xy", "yx"):
        raise SequenceDataError(f"offset_order must be 'xy' or 'yx', got {offset_order!r}")
    match = _NAME_RE.match(name)
    if match is None or match["ext"].lower() not in IMAGE_SUFFIXES:
        raise SequenceDataError(f"{name}: unparseable KPIs file name; expected {_EXPECTED_NAME}")
    a, b = int(match["a"]), int(match["b"])
    xy = (a, b) if offset_order == "xy" else (b, a)
    return f"{match['stem']}_{match['a']}_{match['b']}", match["kind"].lower(), xy


def _warn_or_raise(message: str, strict: bool) -> None:
    if strict:
        raise SequenceDataError(message)
    warnings.warn(message + " (skipped)", stacklevel=3)


def _list_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _IGNORED_FILES
    )


def _find_subdir(parent: Path, name: str) -> Path | None:
    for child in parent.iterdir():
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def _parse_folder(
    folder: Path, kind: str, offset_order: str, strict: bool
) -> dict[str, tuple[Path, tuple[int, int]]]:
    found: dict[str, tuple[Path, tuple[int, int]]] = {}
    for path in _list_files(folder):
        try:
            key, file_kind, xy = parse_kpis_name(path.name, offset_order)
        except SequenceDataError:
            _warn_or_raise(f"{path}: unparseable KPIs file name; expected {_EXPECTED_NAME}", strict)
            continue
        if file_kind != kind:
            _warn_or_raise(
                f"{path}: a '{file_kind}' file in the '{folder.name}' folder; expected *_{kind}.*", strict
            )
            continue
        if key in found:
            raise SequenceDataError(
                f"{path}: same patch as {found[key][0].name}; expected one file per patch"
            )
        found[key] = (path, xy)
    return found


def _scan_case(
    case_dir: Path, offset_order: str, masks: str, strict: bool, verify: bool
) -> list[KPIsPatch] | None:
    img_dir = _find_subdir(case_dir, "img")
    images = _parse_folder(img_dir, "img", offset_order, strict) if img_dir is not None else {}
    if not images:
        _warn_or_raise(
            f"{case_dir}: empty case; expected image patches in {case_dir / 'img'} named {_EXPECTED_NAME}",
            strict,
        )
        return None
    mask_dir = _find_subdir(case_dir, "mask")
    mask_files = _parse_folder(mask_dir, "mask", offset_order, strict) if mask_dir is not None else {}
    for key in sorted(set(mask_files) - set(images)):
        warnings.warn(f"{mask_files[key][0]}: mask without an image patch (ignored)", stacklevel=3)

    patches = []
    missing: list[Path] = []
    for key in sorted(images):
        image, xy = images[key]
        size = read_image_size(image)
        mask = mask_files.get(key, (None, None))[0]
        if mask is None:
            missing.append(image)
        else:
            mask_size = read_image_size(mask)
            if mask_size != size:
                raise SequenceDataError(
                    f"{mask}: mask is {mask_size[1]}x{mask_size[0]} px but its image {image.name} is "
                    f"{size[1]}x{size[0]} px; expected equal sizes"
                )
        if verify:  # full decode: catches truncated files whose header still parses
            read_slice(image)
            if mask is not None:
                read_slice(mask)
        patches.append(KPIsPatch(image=image, mask=mask, offset_xy=xy, size_hw=size))
    if missing:
        expected = (mask_dir or case_dir / "mask") / missing[0].name.replace("_img.", "_mask.")
        message = (
            f"{missing[0]}: no mask found (expected {expected}); {len(missing)} of {len(patches)} "
            f"patches in case {case_dir.name} lack masks"
        )
        if masks == "required":
            raise SequenceDataError(message)
        warnings.warn(message + "; the case is kept without labels", stacklevel=3)
        patches = [KPIsPatch(p.image, None, p.offset_xy, p.size_hw) for p in patches]
    return patches


def _case_item(
    patches: list[KPIsPatch], case: str, class_name: str, mpp: float, where: str
) -> dict[str, Any]:
    centres = np.array(
        [[p.offset_xy[0] + p.size_hw[1] / 2.0, p.offset_xy[1] + p.size_hw[0] / 2.0] for p in patches]
    )
    # Duplicate offsets would give zero distances: refuse them (names both files).
    validate_positions(centres, len(patches), where, [str(p.image) for p in patches])
    order = short_path_order(centres)
    item: dict[str, Any] = {
        "image": [str(patches[i].image) for i in order],
        "positions_um": [[float(v) * mpp for v in centres[i]] for i in order],
        "case": case,
        "class": class_name,
        "mpp_um": mpp,
    }
    if all(p.mask is not None for p in patches):
        item["label"] = [str(patches[i].mask) for i in order]
    return item


def _resolve_root(root: Path) -> Path:
    if not root.is_dir():
        raise SequenceDataError(f"{root}: KPIs root folder not found")
    task = _find_subdir(root, "task1_patch_level")
    return task if task is not None else root


def scan_kpis(
    root: str | os.PathLike,
    offset_order: str = "xy",
    mpp_um: Mapping[str, float] | None = None,
    masks: str = "required",
    strict: bool = True,
    verify: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Scan a KPIs Task 1 tree into sequence items (absolute paths), one per case.

    Args:
        root: folder containing ``Task1_patch_level`` or the split folders themselves.
        offset_order: ``"xy"`` (default) or ``"yx"``; see :func:`parse_kpis_name`.
        mpp_um: microns per pixel per class (case-insensitive names), merged over
            :data:`KPIS_DEFAULT_MPP_UM`.
        masks: ``"required"`` (training: a missing mask is an error) or ``"optional"`` (inference).
        strict: raise on unparseable names and empty cases; when False warn and skip them.
        verify: decode every file (slow) instead of reading headers only.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; cases are sorted by class then
        case folder name.

    Raises:
        SequenceDataError: bad layout or bad input (see the module docstring).
    """
    if masks not in ("required", "optional"):
        raise SequenceDataError(f"masks must be 'required' or 'optional', got {masks!r}")
    if offset_order not in ("xy", "yx"):
        raise SequenceDataError(f"offset_order must be 'xy' or 'yx', got {offset_order!r}")
    mpp = {canonical_class(k): float(v) for k, v in KPIS_DEFAULT_MPP_UM.items()}
    for k, v in (mpp_um or {}).items():
        if not (np.isfinite(v) and v > 0):
            raise SequenceDataError(f"microns per pixel for class {k!r} must be a positive number, got {v}")
        mpp[canonical_class(k)] = float(v)
    task = _resolve_root(Path(root))
    split_dirs = [
        (KPIS_SPLIT_FOLDERS[d.name.lower()], d)
        for d in sorted(task.iterdir())
        if d.is_dir() and d.name.lower() in KPIS_SPLIT_FOLDERS
    ]
    if not split_dirs:
        raise SequenceDataError(
            f"{task}: no split folders; expected train/, validation/ and/or test/ (or a Task1_patch_level folder)"
        )
    out: dict[str, list[dict[str, Any]]] = {split: [] for split in DATALIST_SPLITS}
    for split, split_dir in split_dirs:
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            class_name = canonical_class(class_dir.name)
            if class_name not in mpp:
                raise SequenceDataError(
                    f"{class_dir}: no microns-per-pixel setting for class {class_dir.name!r}; "
                    f"expected one of {sorted(mpp)} or pass --mpp {class_dir.name}=<um per px>"
                )
            for case_dir in sorted(
                d for d in class_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
            ):
                patches = _scan_case(case_dir, offset_order, masks, strict, verify)
                if patches:
                    out[split].append(
                        _case_item(patches, case_dir.name, class_name, mpp[class_name], str(case_dir))
                    )
    return out


def build_kpis_datalist(root: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> Path:
    """Scan a KPIs tree (see :func:`scan_kpis`) and write the datalist JSON atomically.

    Args:
        root: KPIs root folder.
        out: datalist JSON to write; paths inside are relative to its folder.
        **kwargs: forwarded to :func:`scan_kpis`.

    Returns:
        The datalist path.
    """
    datalist = scan_kpis(root, **kwargs)
    return write_datalist(
        datalist, out, extra={"description": f"KPIs Task 1 patch sequences from {Path(root).resolve()}"}
    )


def _parse_mpp(values: Sequence[str]) -> dict[str, float]:
    out = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise SequenceDataError(f"--mpp {value!r}: expected CLASS=MICRONS_PER_PIXEL, e.g. NEP25=0.5")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pathseqsam.data.kpis", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--root", required=True, help="folder holding Task1_patch_level (or its split folders)"
    )
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument(
        "--offset-order", choices=("xy", "yx"), default="xy", help="order of the two offsets in names"
    )
    parser.add_argument(
        "--mpp", action="append", default=[], metavar="CLASS=UM", help="microns per pixel of a class"
    )
    parser.add_argument("--masks", choices=("required", "optional"), default="required")
    parser.add_argument("--lenient", action="store_true", help="warn and skip bad names / empty cases")
    parser.add_argument("--verify", action="store_true", help="decode every file (slow)")
    args = parser.parse_args(argv)
    try:
        path = build_kpis_datalist(
            args.root,
            args.out,
            offset_order=args.offset_order,
            mpp_um=_parse_mpp(args.mpp),
            masks=args.masks,
            strict=not args.lenient,
            verify=args.verify,
        )
    except SequenceDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import json

    content = json.loads(path.read_text())
    for split in DATALIST_SPLITS:
        n_slices = sum(len(item["image"]) for item in content[split])
        print(f"{split}: {len(content[split])} cases, {n_slices} patches")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
