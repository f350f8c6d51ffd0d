"""Tissue mask, tile grid and tile order of whole slides."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from pathseqsam.wsi.outputs import ring_area
from pathseqsam.wsi.tiles import Tile, order_tiles, otsu_threshold, tile_grid, tile_starts, tissue_mask


def test_otsu_separates_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.6, 0.05, 3000)]).clip(0, 1)
    t = otsu_threshold(values)
    assert 0.15 < t < 0.45  # between the modes
    # independent check: the threshold maximises the between-class variance over a fine scan
    scan = np.linspace(0.05, 0.75, 141)

    def between(th):
        a, b = values[values < th], values[values >= th]
        return len(a) * len(b) * (a.mean() - b.mean()) ** 2

    # Otsu's criterion is flat across the empty gap: compare the criterion, not the threshold
    assert between(t) >= 0.999 * max(between(s) for s in scan)


def test_tissue_mask_finds_the_sections(scene):
    rgb, _ = scene.render(0, 0, 128, 128, downsample=16)
    mask = tissue_mask(rgb)
    # independent truth: the scene's own section test at the same pixel centres
    ys, xs = np.mgrid[0:128, 0:128]
    truth = np.zeros((128, 128), bool)
    for s in scene.sections:
        truth |= scene._in_section((xs + 0.5) * 16.0, (ys + 0.5) * 16.0, s)
    agreement = (mask == truth).mean()
    assert agreement > 0.97


def test_blank_slide_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = (240 + rng.integers(-3, 4, (64, 64, 3))).astype(np.uint8)
    assert not tissue_mask(glass).any()
    assert not tissue_mask(np.zeros((32, 32, 3), np.uint8)).any()


def test_grid_covers_the_slide_to_its_edge():
    tiles = tile_grid(1000.0, 600.0, 256.0, 128.0)
    xs = sorted({t.x_um for t in tiles})
    ys = sorted({t.y_um for t in tiles})
    assert xs == [0, 128, 256, 384, 512, 640, 744]  # last tile snapped to the right edge
    assert ys == [0, 128, 256, 344]
    assert len(tiles) == len(xs) * len(ys)
    # every point of the slide is inside some tile
    pts = np.random.default_rng(0).uniform([0, 0], [1000, 600], (500, 2))
    inside = [any(t.x_um <= x <= t.x_um + 256 and t.y_um <= y <= t.y_um + 256 for t in tiles) for x, y in pts]
    assert all(inside)
    assert tile_grid(100.0, 50.0, 256.0, 128.0) == [Tile(0.0, 0.0, 256.0)]
    with pytest.raises(ValueError, match="stride_um <= tile_um"):
        tile_grid(1000.0, 1000.0, 256.0, 300.0)


def test_tile_starts_cover_the_extent():
    """Label patches (pixels, stride = tile) and slide tiles (micrometres) share one rule."""
    assert tile_starts(200, 64, 64) == [0, 64, 128, 136]
    assert tile_starts(128, 64, 64) == [0, 64]
    assert tile_starts(40, 64, 64) == [0]
    assert all(isinstance(s, int) for s in tile_starts(200, 64, 64) + tile_starts(40, 64, 64))
    assert tile_starts(1000.0, 512.0, 256.0) == [0.0, 256.0, 488.0]


def test_ring_area_is_the_shoelace_area():
    rectangle = np.array([[10, 10], [30, 10], [30, 20], [10, 20]], dtype=float)
    assert ring_area(rectangle) == 200.0
    assert ring_area(np.vstack([rectangle, rectangle[:1]])) == 200.0  # closed ring: same area
    assert ring_area(rectangle[::-1]) == 200.0  # either orientation
    assert ring_area(np.array([[0, 0], [6, 0], [0, 4]], dtype=float)) == 12.0


def test_grid_keeps_tissue_tiles_only():
    tissue = np.zeros((100, 100), bool)  # 10 um/px -> 1 x 1 mm
    tissue[40:60, 70:90] = True  # tissue at x 700..900, y 400..600 um
    tiles = tile_grid(1000.0, 1000.0, 200.0, 100.0, tissue, tissue_mpp_um=10.0)
    assert tiles
    for t in tiles:
        assert t.x_um < 900 and t.x_um + 200 > 700 and t.y_um < 600 and t.y_um + 200 > 400
    # every tile that overlaps the tissue is there: x starts 600..800, y starts 300..500
    assert {(t.x_um, t.y_um) for t in tiles} == {(x, y) for x in (600, 700, 800) for y in (300, 400, 500)}


def test_serpentine_and_short_path_orders():
    tiles = [Tile(x, y, 100.0) for y in (0.0, 50.0, 100.0) for x in (0.0, 50.0, 100.0, 150.0)]
    serp = order_tiles(tiles, "serpentine")
    assert [(t.x_um, t.y_um) for t in serp[:8]] == [
        (0, 0),
        (50, 0),
        (100, 0),
        (150, 0),
        (150, 50),
        (100, 50),
        (50, 50),
        (0, 50),
    ]
    steps = [np.hypot(a.x_um - b.x_um, a.y_um - b.y_um) for a, b in pairwise(serp)]
    assert max(steps) == 50.0  # every step is one stride
    short = order_tiles(list(reversed(tiles)), "short_path")
    assert sorted(short, key=lambda t: (t.y_um, t.x_um)) == sorted(tiles, key=lambda t: (t.y_um, t.x_um))
    assert sum(np.hypot(a.x_um - b.x_um, a.y_um - b.y_um) for a, b in pairwise(short)) == 550.0
    with pytest.raises(ValueError, match="tile order must be one of"):
        order_tiles(tiles, "random")


def test_short_path_falls_back_on_many_tiles():
    tiles = [Tile(float(x), 0.0, 10.0) for x in (30, 10, 20, 0)]
    with pytest.warns(UserWarning, match="more than max_short_path=3 .* using the serpentine order"):
        out = order_tiles(tiles, "short_path", max_short_path=3)
    assert [t.x_um for t in out] == [0, 10, 20, 30]
