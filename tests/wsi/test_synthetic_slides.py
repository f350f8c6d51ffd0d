"""Synthetic whole slides: pyramidal TIFF + mask, KPIs Task 2 layout, rendered tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pathseqsam.synthetic import slides as synthetic_slides
from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide, write_synthetic_task2


def test_scene_has_many_separate_glomeruli_inside_sections(scene):
    g = scene.glomeruli
    assert len(g) >= 50
    assert len(scene.sections) == 3
    centres_in_tissue = [
        any(scene._in_section(np.array([x]), np.array([y]), s)[0] for s in scene.sections) for x, y, _ in g
    ]
    assert all(centres_in_tissue)
    d = np.hypot(g[:, None, 0] - g[None, :, 0], g[:, None, 1] - g[None, :, 1])
    r = g[:, None, 2] + g[None, :, 2]
    assert (d[~np.eye(len(g), dtype=bool)] > r[~np.eye(len(g), dtype=bool)]).all()  # no two touch


def test_slide_and_mask_files(slide_files, scene):
    with tifffile.TiffFile(slide_files["slide"]) as tif:
        pages = tif.pages
        assert [p.shape[:2] for p in pages] == [(2048, 2048), (1024, 1024), (512, 512)]  # top-level pages
        assert all(p.is_tiled and p.tilewidth == 256 for p in pages)
        assert pages[0].tags["ResolutionUnit"].value == 3  # centimetre
        num, den = pages[0].tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(1.0)  # 1 um/px
        assert pages[1].subfiletype == 1
    mask = tifffile.imread(slide_files["mask"], key=0)
    assert mask.shape == (2048, 2048) and set(np.unique(mask)) == {0, 255}
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    # glomeruli are whole discs except where a section's edge cuts one (each still one object)
    assert n == len(scene.glomeruli)
    # the area of each object matches its disc (clipped by the section), measured independently
    areas = np.bincount(labels.ravel())[1:]
    disc = np.pi * scene.glomeruli[:, 2] ** 2
    assert areas.sum() <= disc.sum() * 1.01
    assert areas.sum() >= disc.sum() * 0.8


def test_written_tile_by_tile(tmp_path, monkeypatch):
    """No call renders more than one 256-px tile, so a slide of any size never sits in memory."""
    scene = make_slide_scene(1000, 700, 1.0, n_glomeruli=5, seed=2)
    sizes = []
    original = synthetic_slides.SyntheticSlideScene.render

    def spy(self, x0, y0, width, height, downsample=1.0, mask_only=False):
        sizes.append((width, height))
        return original(self, x0, y0, width, height, downsample, mask_only)

    monkeypatch.setattr(synthetic_slides.SyntheticSlideScene, "render", spy)
    write_synthetic_slide(tmp_path / "s.tiff", scene, tmp_path / "m.tiff")
    assert set(sizes) == {(256, 256)}
    # 1000 x 700: 4 x 3 tiles, 500 x 350: 2 x 2, image and mask
    assert len(sizes) == 2 * (12 + 4)
    monkeypatch.undo()
    image = tifffile.imread(tmp_path / "s.tiff", key=0)
    expected, _ = scene.render(0, 0, 1000, 700)
    assert np.abs(image.astype(int) - expected).mean() < 3.0


def test_task2_layout(tmp_path):
    pairs = write_synthetic_task2(tmp_path, n_slides=2, size_px=1024, mpp_um=2.0, n_glomeruli=10, seed=3)
    folder = tmp_path / "Task2_WSI_level" / "synthetic"
    assert sorted(p.name for p in folder.iterdir()) == [
        "syn_00_mask.tiff",
        "syn_00_wsi.tiff",
        "syn_01_mask.tiff",
        "syn_01_wsi.tiff",
    ]
    assert pairs[1] == {"slide": str(folder / "syn_01_wsi.tiff"), "mask": str(folder / "syn_01_mask.tiff")}


def test_demo_slides_written_once_and_foreign_folders_left_alone(tmp_path, monkeypatch):
    from pathseqsam.synthetic.slides import SYNTHETIC_SLIDES_META, ensure_synthetic_task2

    root = tmp_path / "demo"
    assert ensure_synthetic_task2(root, n_slides=1, size_px=512, mpp_um=2.0) == str(root)
    assert (root / SYNTHETIC_SLIDES_META).is_file()
    assert (root / "Task2_WSI_level" / "synthetic" / "syn_00_wsi.tiff").is_file()
    calls = []
    monkeypatch.setattr(synthetic_slides, "write_synthetic_task2", lambda *a, **k: calls.append(a))
    ensure_synthetic_task2(root, n_slides=1, size_px=512, mpp_um=2.0)
    assert calls == []  # already there: not rewritten
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "slide.svs").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"mine: not a synthetic slide set"):
        ensure_synthetic_task2(foreign)
    assert calls == []


def test_demo_slides_command(tmp_path):
    """``python -m pathseqsam.synthetic slides --out DIR``: the command the slide jobs name when the demo
    slides are missing; afterwards the jobs' check passes, and a foreign folder is refused."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from pathseqsam.synthetic.slides import (
        SYNTHETIC_SLIDES_META,
        demo_slides_command,
        require_synthetic_task2,
    )

    root = tmp_path / "demo wsi"
    with pytest.raises(FileNotFoundError, match=r"demo slide folder .*demo wsi does not exist") as info:
        require_synthetic_task2(root)
    command = demo_slides_command(root)
    assert command in str(info.value) and command.endswith(f"--out '{root}'")  # quoted for the shell
    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "pathseqsam.synthetic", "slides", "--out", str(root)]
    small = ["--slides", "1", "--size-px", "1024", "--mpp-um", "1.0", "--seed", "3"]
    proc = subprocess.run([*argv, *small], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert require_synthetic_task2(root) == str(root)
    meta = json.loads((root / SYNTHETIC_SLIDES_META).read_text())
    assert (meta["n_slides"], meta["size_px"], meta["mpp_um"], meta["seed"]) == (1, 1024, 1.0, 3)
    with tifffile.TiffFile(root / "Task2_WSI_level" / "synthetic" / "syn_00_wsi.tiff") as tif:
        assert tif.pages[0].shape[:2] == (1024, 1024)
    rerun = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "already there" in rerun.stdout
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match=r"mine holds no synthetic_slides.json"):
        require_synthetic_task2(foreign)
    refused = subprocess.run(
        [*argv[:-1], str(foreign)], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "mine: not a synthetic slide set" in refused.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
