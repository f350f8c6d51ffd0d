"""Write files so that a crash or an error never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text"]

_NUMERIC_LIST = re.compile(r"\[\s*((?:-?[0-9.eE+]+,?\s*)+)\]")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one ``os.replace``.

    The temporary file lives in the destination folder (``os.replace`` is only atomic within one
    file system) and keeps the destination's suffixes, because writers such as nibabel and tifffile
    choose the format from the file name (``.nii.gz``, ``.ome.tif``).

    Args:
        path: final destination; its parent folder is created if needed.
        write: callable that writes the complete file to the path it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".~{secrets.token_hex(4)}.{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # the writer failed: remove the fragment, keep the old file (if any)
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        path: destination file.
        text: full file content.

    Returns:
        The destination path.
    """
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, with bytes that depend on ``obj`` only.

    ``torch.save`` to a file *name* stores that name's stem as the zip archive's inner folder, so
    saving through :func:`atomic_write`'s random temporary name made every file unique (the same
    weights, another sha256). Written through a file object, the inner folder is torch's fixed
    ``archive``, and equal tensors give equal files on one torch version.

    Args:
        obj: what to save (e.g. SAM2's ``{"model": state_dict}``).
        path: destination.

    Returns:
        The destination path.
    """
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` as indented JSON (strict: NaN/inf are refused) and write it atomically.

    Args:
        path: destination file.
        obj: JSON-serialisable object.

    Returns:
        The destination path.
    """
    # Serialise first: an unserialisable object must fail before anything touches the disk.
    text = json.dumps(obj, indent=2, allow_nan=False)
    # Keep short lists of numbers (positions, flags) on one line: long cases stay readable.
    text = _NUMERIC_LIST.sub(lambda m: "[" + re.sub(r"\s+", "", m.group(1)).replace(",", ", ") + "]", text)
    text = text + "\n"
    return atomic_write_text(path, text)
