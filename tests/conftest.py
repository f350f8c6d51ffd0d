"""Shared fixtures: the CPU-sized ("tiny") PathSeqSAM and small synthetic inputs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def make_tiny():
    """Factory for a seeded tiny PathSeqSAM at 128 px (fast on 2 CPU cores)."""
    from pathseqsam import build_pathseqsam

    def _make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        kwargs.setdefault("model", "tiny")
        kwargs.setdefault("image_size", 128)
        return build_pathseqsam(**kwargs)

    return _make


@pytest.fixture
def images():
    """A seeded batch of 2 sequences of 4 slices, 128 px, roughly SAM2-normalised."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 4, 128, 128, generator=g)
