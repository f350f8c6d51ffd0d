"""The data package imports cheaply and exposes its public names lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pathseqsam.data as data


def test_import_is_cheap():
    code = "import sys, pathseqsam.data; print(sorted(m for m in ('torch', 'monai', 'sam2', 'matplotlib') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve():
    for name in data.__all__:
        assert getattr(data, name).__name__ == name
    from pathseqsam.data.transforms import LoadSequenced

    assert data.LoadSequenced is LoadSequenced
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = data.nope
