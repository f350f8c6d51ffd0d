"""Fixtures for the data tests: a small KPIs tree in both naming styles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PATCH = 64  # patch side in the test KPIs tree (real patches are 2048 px)

# (split folder, class folder, case folder, file prefix, offsets (x, y) in slide pixels)
KPIS_CASES = [
    ("train", "56NX", "12_116", "56Nx_12_116", [(0, 0), (64, 0), (128, 0), (0, 64), (64, 64), (128, 64)]),
    (
        "train",
        "NEP25",
        "08_373_01",
        "08_373_01",
        [(4096, 14336), (4160, 14336), (4096, 14400), (4160, 14400)],
    ),
    ("validation", "56Nx", "12-173", "56Nx_12-173", [(2048, 0), (2112, 0), (2176, 0)]),
    ("test", "normal", "normal_M1", "normal_M1", [(0, 2048), (0, 2112)]),
]


def patch_image(seed: int, size: int = PATCH) -> np.ndarray:
    """Deterministic RGB test patch."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def patch_mask(seed: int, size: int = PATCH) -> np.ndarray:
    """Deterministic 0/255 mask: one rectangle whose place depends on the seed."""
    m = np.zeros((size, size), np.uint8)
    r = np.random.default_rng(1000 + seed)
    y, x = r.integers(0, size // 2, size=2)
    m[y : y + size // 3, x : x + size // 4] = 255
    return m


def write_kpis_tree(root: Path) -> dict[str, dict]:
    """Write the KPIs tree above under ``root/Task1_patch_level``.

    Returns:
        ``{case: {"split", "class", "files": {(x, y): (image, mask)}, "seed": {(x, y): seed}}}``.
    """
    cases = {}
    seed = 0
    for split, cls, case, prefix, offsets in KPIS_CASES:
        case_dir = root / "Task1_patch_level" / split / cls / case
        (case_dir / "img").mkdir(parents=True)
        (case_dir / "mask").mkdir(parents=True)
        files, seeds = {}, {}
        for i, (x, y) in enumerate(offsets):
            stem = f"{prefix}_{i}_{x}_{y}"
            image, mask = case_dir / "img" / f"{stem}_img.jpg", case_dir / "mask" / f"{stem}_mask.jpg"
            Image.fromarray(patch_image(seed)).save(image, quality=95)
            Image.fromarray(patch_mask(seed)).save(mask, quality=90)
            files[(x, y)] = (image, mask)
            seeds[(x, y)] = seed
            seed += 1
        cases[case] = {"split": split, "class": cls, "files": files, "seed": seeds}
    return cases


@pytest.fixture
def kpis_tree(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """A fresh KPIs tree (both case-folder spellings, with and without class prefix, 56NX)."""
    return tmp_path, write_kpis_tree(tmp_path)
