"""Fixtures for the synthetic generator's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathseqsam.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (3 cases x 5 sections, 96 px), generated once per session."""
    out = tmp_path_factory.mktemp("synthetic") / "set"
    generate_synthetic_dataset(out, cases=3, seed=7, image_size=96, sections=5, degraded_fraction=0.4)
    return out
