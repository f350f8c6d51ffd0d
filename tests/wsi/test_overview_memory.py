"""Bounded memory of whole-slide reads: the overview's peak does not grow with the slide."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

import pathseqsam.wsi.reader as reader
from pathseqsam.wsi.reader import Slide, SlideLevel, open_slide


class PatternSlide(Slide):
    """A slide drawn from its coordinates (no file), recording every region it is asked for.

    Levels 1x and 4x only, like a scanner pyramid without coarse levels: the overview of a large
    slide then has to be resampled from many level pixels.
    """

    backend = "pattern"

    def __init__(self, side: int, mpp_um: float = 0.5) -> None:
        levels = [SlideLevel(side, side, 1.0), SlideLevel(side // 4, side // 4, 4.0)]
        super().__init__("pattern.tiff", levels, mpp_um)
        self.requests: list[tuple[int, int, int, int, int]] = []

    def read_level_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        self.requests.append((level, x, y, width, height))
        ys = (np.arange(y, y + height) * 7 % 251).astype(np.uint16)[:, None]
        xs = (np.arange(x, x + width) * 13 % 251).astype(np.uint16)[None, :]
        grey = ((xs + ys) % 251).astype(np.uint8)
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[..., 0], out[..., 1], out[..., 2] = grey, 255 - grey, grey // 2
        return out


def _overview_peak(side: int) -> tuple[int, int, tuple[int, int, int]]:
    """(largest region asked for in pixels, traced peak beyond the overview itself, overview shape)."""
    slide = PatternSlide(side)
    overview_mpp = side * slide.mpp_um / 1024.0  # a 1024-px overview, as the slide command reads
    tracemalloc.start()
    try:
        overview = slide.read_overview(overview_mpp)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = max(w * h for _, _, _, w, h in slide.requests)
    return largest, peak - overview.nbytes, overview.shape


def test_overview_peak_does_not_depend_on_slide_size():
    # 8192 px: the overview reads 2048 x 2048 pixels of level 1; 32768 px: 8192 x 8192 of them,
    # which one read would hold whole (192 MiB as uint8, GiBs in OpenSlide's and float buffers)
    small_region, small_peak, small_shape = _overview_peak(8192)
    big_region, big_peak, big_shape = _overview_peak(32768)
    assert small_shape == big_shape == (1024, 1024, 3)
    assert small_region == 2048 * 2048
    # the big slide's region is read in pieces of about _PIECE_SIDE (plus the filter's margin)
    side = reader._PIECE_SIDE
    assert big_region <= side * side
    assert big_peak <= 1.25 * small_peak, (small_peak / 2**20, big_peak / 2**20)
    assert big_peak < 8192 * 8192 * 3 // 4  # a quarter of the region as uint8


def test_pieced_resize_matches_one_resize(monkeypatch):
    slide = PatternSlide(4096)
    cases = [  # level-0 rectangles and output sizes: shrinking by 4.6, 7.3, 2.5, 1.5x
        (37.3, 11.9, 3071.4, 2900.2, 167, 158),
        (-120.5, 400.25, 3800.0, 1500.0, 130, 51),
        (1000.0, 1000.0, 2000.0, 2000.0, 201, 200),
        (512.3, 256.0, 1536.0, 768.0, 256, 128),
    ]
    whole = [slide.read_scaled(*c) for c in cases]
    monkeypatch.setattr(reader, "_ONE_RESIZE_PX", 64 * 64)
    monkeypatch.setattr(reader, "_PIECE_SIDE", 64)
    for case, expected in zip(cases, whole):
        slide.requests.clear()
        pieced = slide.read_scaled(*case)
        assert pieced.shape == expected.shape
        assert len(slide.requests) > 4  # really in pieces
        assert max(w for *_, w, _ in slide.requests) <= 64 and max(h for *_, h in slide.requests) <= 64
        diff = np.abs(pieced.astype(int) - expected)
        # no seams: the same pixels up to PIL's rounding (float32 box, pass order)
        assert diff.max() <= 2 and diff.mean() < 0.1, (case, diff.max(), diff.mean())


def test_filter_spans_cover_each_output_pixels_support():
    in0, in1, out_size, in_size = 0.37, 999.2, 151, 1000
    spans = reader._filter_spans(in0, in1, out_size, in_size, 200)
    assert spans[0][0] == 0 and spans[-1][1] == out_size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous, no overlap
    scale = (in1 - in0) / out_size
    for o0, o1, i0, i1 in spans:
        assert i1 - i0 <= 200
        for i in range(o0, o1):  # the bilinear filter's support, computed directly
            centre = in0 + (i + 0.5) * scale
            assert i0 <= max(0, int(centre - scale + 0.5)) and min(in_size, int(centre + scale + 0.5)) <= i1


def test_alpha_composited_in_integers_as_in_float():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 0
    rgba[8:16, :, 3] = 255
    # the float32 compositing earlier versions did for every pixel
    rgb, alpha = rgba[..., :3].astype(np.float32), rgba[..., 3:].astype(np.float32) / 255.0
    expected = np.clip(rgb + 255.0 * (1.0 - alpha), 0, 255).astype(np.uint8)
    out = np.zeros((64, 80, 3), dtype=np.uint8)
    reader._composite_over_white(rgba, out)
    np.testing.assert_array_equal(out, expected)
    assert (out[:8] == 255).all()
    opaque = rgba.copy()
    opaque[..., 3] = 255
    reader._composite_over_white(opaque, out)
    np.testing.assert_array_equal(out, opaque[..., :3])


def test_openslide_is_asked_for_bounded_pieces(slide_files, monkeypatch):
    with open_slide(slide_files["slide"]) as slide:
        expected = slide.read_level_region(0, 300, 200, 700, 500)
        inside = slide.read_level_region(0, 1800, 1900, 248, 148)  # the slide is 2048 px square
        sizes = []
        original = slide._reader.get_data

        def spy(wsi, location, size, level, mode):
            sizes.append(size)
            return original(wsi, location=location, size=size, level=level, mode=mode)

        monkeypatch.setattr(slide._reader, "get_data", spy)
        monkeypatch.setattr(reader, "_READ_SIDE", 256)
        np.testing.assert_array_equal(slide.read_level_region(0, 300, 200, 700, 500), expected)
        assert len(sizes) == 2 * 3 and max(max(s) for s in sizes) <= 256
        # a region partly outside the slide: the outside stays white, the inside is read in pieces
        edge = slide.read_level_region(0, 1800, 1900, 400, 300)
        assert (edge[148:] == 255).all() and (edge[:, 248:] == 255).all()
        np.testing.assert_array_equal(edge[:148, :248], inside)


@pytest.mark.parametrize("stripped", [True, False])
def test_tiff_pieces_follow_the_segments(tmp_path, stripped):
    import tifffile

    image = np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    path = tmp_path / "seg.tif"
    layout = {"rowsperstrip": 16} if stripped else {"tile": (64, 64)}
    tifffile.imwrite(
        path, image, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **layout
    )
    with reader.TiffSegmentSlide(path) as slide:
        shape = slide._piece_shape(0)
    assert shape == ((500, max(16, reader._ONE_RESIZE_PX // 500)) if stripped else (2048, 2048))
