"""Fixtures for the whole-slide tests: small synthetic slides (2048 px), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide

SIDE = 2048  # level-0 pixels; 1 um/px, so 2 x 2 mm
MPP = 1.0


@pytest.fixture(scope="session")
def scene():
    return make_slide_scene(SIDE, SIDE, MPP, n_glomeruli=60, seed=0)


@pytest.fixture(scope="session")
def slide_files(tmp_path_factory: pytest.TempPathFactory, scene) -> dict[str, Path]:
    """A pyramidal TIFF slide, its mask TIFF and the same slide as an Aperio SVS."""
    root = tmp_path_factory.mktemp("wsi")
    slide, mask, svs = root / "syn_00_wsi.tiff", root / "syn_00_mask.tiff", root / "aperio" / "syn_00.svs"
    write_synthetic_slide(slide, scene, mask)
    write_synthetic_slide(svs, scene, svs=True)
    return {"slide": slide, "mask": mask, "svs": svs, "root": root}
