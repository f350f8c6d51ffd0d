"""Cells of the mechanisms study: one trained (arm, seed) with its evaluations, saved once finished.

A cell's file ``<cells>/<arm>__seed<k>.json.gz`` holds its record (arm, seed, git commit, the
code fingerprint, the data fingerprint, timings) and one row per evaluated slice
(:data:`CELL_COLUMNS`). It is written atomically when the cell has finished, so a cell file either
exists complete or not at all; a rerun of the grid skips every cell whose file exists, after checking
that it was made by the same model and training code (:func:`code_fingerprint`) on the same data: a
study never mixes cells from different code.

:func:`write_cells_csv` gathers the finished cells into one ``cells.csv.gz`` (gzip without a time
stamp, so the same cells give the same bytes).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pathseqsam.atomic import atomic_write

__all__ = [
    "CELL_COLUMNS",
    "CODE_PATHS",
    "CellMismatchError",
    "cell_path",
    "check_cell",
    "code_fingerprint",
    "git_commit",
    "read_cell",
    "read_cells_csv",
    "write_cell",
    "write_cells_csv",
]

# one row per evaluated slice; `dial` names the test set, `damage_kind` is "+"-joined ("none": clean)
CELL_COLUMNS = (
    "arm",
    "seed",
    "dial",
    "case",
    "slice",
    "position_um",
    "damage_kind",
    "degraded",
    "truth_empty",
    "pred_empty",
    "dice",
)
# The model and training code whose change makes earlier cells incomparable: the network, losses,
# engine (trainer, inferers), data loading and transforms, metrics, the generator (the data), the
# study's own training and evaluation code and the bundle configs, plus the pretrained SAM2 weights.
CODE_PATHS = (
    "pathseqsam/__init__.py",
    "pathseqsam/modeling",
    "pathseqsam/losses",
    "pathseqsam/engine",
    "pathseqsam/data",
    "pathseqsam/metrics.py",
    "pathseqsam/synthetic",
    "pathseqsam/compare/study.py",
    "pathseqsam/compare/cells.py",
    "bundle/configs/train.json",
    "bundle/configs/baselines",
    "bundle/configs/ablations",
    "bundle/pretrained",
)


class CellMismatchError(RuntimeError):
    """A finished cell was made by other code or on other data than the study about to resume."""


def code_fingerprint(root: str | Path, paths: Sequence[str] = CODE_PATHS) -> str:
    """sha256 over the files under ``paths`` (relative to ``root``): names and contents, sorted.

    Python caches and hidden files are skipped; a missing path is hashed as missing.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for rel in paths:
        target = root / rel
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for path in files:
            name = path.relative_to(root).as_posix()
            if "__pycache__" in name or any(part.startswith(".") for part in Path(name).parts):
                continue
            digest.update(name.encode() + b"\0")
            digest.update(path.read_bytes() if path.is_file() else b"<missing>")
            digest.update(b"\0")
    return digest.hexdigest()


def git_commit(root: str | Path) -> str:
    """``HEAD``'s commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cell_path(cells_dir: str | Path, arm: str, seed: int) -> Path:
    """Where cell (``arm``, ``seed``) is saved in the cell store ``cells_dir``."""
    return Path(cells_dir) / f"{arm}__seed{int(seed)}.json.gz"


def _gzip_bytes(text: str) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:  # mtime 0: same rows, same bytes
        f.write(text.encode())
    return buffer.getvalue()


def write_cell(
    path: str | Path,
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    columns: Sequence[str] = CELL_COLUMNS,
) -> Path:
    """Save a finished cell atomically (:func:`read_cell` reads it back).

    Args:
        path: the cell file.
        record: what the cell was (arm, seed, code and data fingerprints, timings).
        rows: its result rows.
        columns: the columns every row must have (default the mechanism study's).

    Raises:
        ValueError: a row lacks one of ``columns``.
    """
    for row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"cell {path}: a row lacks the columns {missing}")
    data = _gzip_bytes(json.dumps({"record": record, "rows": rows}, sort_keys=True))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_cell(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(record, rows)`` of a saved cell.

    Raises:
        ValueError: the file is not a cell (names the file).
    """
    try:
        content = json.loads(gzip.decompress(Path(path).read_bytes()))
        return content["record"], content["rows"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a study cell ({err}); delete it to recompute the cell") from err


def check_cell(path: str | Path, record: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a finished cell made by other code or on other data.

    Args:
        path: the cell file (for the message).
        record: its record.
        expected: ``{"code_sha256": ..., "data_sha256": ..., ...}`` of the study about to run.

    Raises:
        CellMismatchError: a field differs (the message names the cell, the field and both values).
    """
    for key, want in expected.items():
        have = record.get(key)
        if have != want:
            raise CellMismatchError(
                f"{path}: finished cell has {key} {have!r} but this study has {want!r}; a study never mixes "
                "cells from different model/training code or data: run it into a new --out folder (or delete "
                "the old cells to recompute them)"
            )


def write_cells_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write the study's rows as ``cells.csv.gz`` (columns :data:`CELL_COLUMNS`), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(CELL_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    data = _gzip_bytes(text.getvalue())
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_cells_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``cells.csv.gz`` with numeric columns as numbers.

    Raises:
        ValueError: a column of :data:`CELL_COLUMNS` is missing (names the file).
    """
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CELL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {list(CELL_COLUMNS)}")
        rows = []
        for row in reader:
            row["seed"] = int(row["seed"])
            row["slice"] = int(row["slice"])
            for key in ("degraded", "truth_empty", "pred_empty"):
                row[key] = int(row[key])
            row["dice"] = float(row["dice"])
            rows.append(row)
    return rows
