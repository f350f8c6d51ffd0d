"""Reproduce the paper's comparison: train and evaluate PathSeqSAM, its baselines and ablations in one
harness (the bundle's configs plus overlays) and write a Table-1 style report with plots.

Entry point: ``python scripts/compare.py`` (:func:`pathseqsam.compare.cli.main`).
"""

from __future__ import annotations

from pathseqsam.compare.variants import (
    DEFAULT_VARIANTS,
    REFERENCE_VARIANT,
    Variant,
    discover_variants,
    select_variants,
)

__all__ = ["DEFAULT_VARIANTS", "REFERENCE_VARIANT", "Variant", "discover_variants", "select_variants"]
