"""Slice-sequence data: readers (KPIs, TIFF/NIfTI stacks, slice folders), datalists and transforms.

Modules:

* :mod:`~pathseqsam.data.kpis`: KPIs 2024 Task 1 tree -> datalist (``python -m pathseqsam.data.kpis``);
* :mod:`~pathseqsam.data.stacks`: multi-page TIFF / NIfTI stacks (probe, read, write);
* :mod:`~pathseqsam.data.datalist`: the sequence datalist JSON (write, load, validate) and slice folders
  with a positions CSV;
* :mod:`~pathseqsam.data.transforms`: MONAI dictionary transforms for ``[C, N, H, W]`` sequences;
* :mod:`~pathseqsam.data.image_io`, :mod:`~pathseqsam.data.ordering`: slice decoding, patch order.

The synthetic generator is :mod:`pathseqsam.synthetic` (it never reads a user's file).

Names are imported lazily so ``import pathseqsam.data`` stays cheap (no MONAI/torch until a
transform is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "LoadSequenced",
    "NormalizeSAM2d",
    "RandSequenceSpatiald",
    "RandSequenceWindowd",
    "RandSliceStainJitterd",
    "ResizeSequenced",
    "SequenceDataError",
    "build_kpis_datalist",
    "load_datalist",
    "probe_stack",
    "scan_kpis",
    "sequence_transforms",
    "slice_folder_item",
    "stack_item",
    "write_datalist",
]

_LAZY = {
    "SequenceDataError": "pathseqsam.data.errors",
    "build_kpis_datalist": "pathseqsam.data.kpis",
    "scan_kpis": "pathseqsam.data.kpis",
    "load_datalist": "pathseqsam.data.datalist",
    "write_datalist": "pathseqsam.data.datalist",
    "probe_stack": "pathseqsam.data.stacks",
    "slice_folder_item": "pathseqsam.data.datalist",
    "stack_item": "pathseqsam.data.stacks",
    "LoadSequenced": "pathseqsam.data.transforms",
    "NormalizeSAM2d": "pathseqsam.data.transforms",
    "RandSequenceSpatiald": "pathseqsam.data.transforms",
    "RandSequenceWindowd": "pathseqsam.data.transforms",
    "RandSliceStainJitterd": "pathseqsam.data.transforms",
    "ResizeSequenced": "pathseqsam.data.transforms",
    "sequence_transforms": "pathseqsam.data.transforms",
}

if TYPE_CHECKING:  # pragma: no cover
    from pathseqsam.data.datalist import load_datalist, slice_folder_item, write_datalist
    from pathseqsam.data.errors import SequenceDataError
    from pathseqsam.data.kpis import build_kpis_datalist, scan_kpis
    from pathseqsam.data.stacks import probe_stack, stack_item
    from pathseqsam.data.transforms import (
        LoadSequenced,
        NormalizeSAM2d,
        RandSequenceSpatiald,
        RandSequenceWindowd,
        RandSliceStainJitterd,
        ResizeSequenced,
        sequence_transforms,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pathseqsam.data' has no attribute {name!r}")
