"""Region reads of whole slides: OpenSlide through MONAI's WSIReader, tifffile segments, mpp, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pathseqsam.wsi.reader import SlideError, TiffSegmentSlide, WSIReaderSlide, open_slide


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_pyramidal_tiff_opens_with_openslide(slide_files, scene):
    with open_slide(slide_files["slide"]) as slide:
        assert isinstance(slide, WSIReaderSlide)
        assert (slide.width, slide.height) == (scene.width, scene.height)
        assert slide.mpp_um == pytest.approx(1.0, rel=1e-4)  # from the centimetre resolution tags
        assert [lvl.downsample for lvl in slide.levels] == [1.0, 2.0, 4.0]
        # the coarsest level at least as fine as the target
        assert [slide.best_level(m) for m in (0.5, 1.0, 1.9, 2.0, 3.9, 4.0, 100.0)] == [0, 0, 0, 1, 1, 2, 2]
        # a region read equals the scene rendered there (JPEG tiles: small error)
        region = slide.read_level_region(0, 700, 300, 200, 100)
        expected, _ = scene.render(700, 300, 200, 100)
        assert region.shape == (100, 200, 3)
        assert np.abs(region.astype(int) - expected).mean() < 3.0
        # outside the slide: white background
        outside = slide.read_level_region(1, 1000, 1000, 50, 50)
        assert outside.shape == (50, 50, 3) and (outside[30:, 30:] == 255).all()


def test_aperio_svs_written_with_tifffile_opens(slide_files, scene):
    import openslide

    assert openslide.OpenSlide(str(slide_files["svs"])).properties["openslide.vendor"] == "aperio"
    with open_slide(slide_files["svs"]) as svs, open_slide(slide_files["slide"]) as tif:
        assert svs.mpp_um == pytest.approx(1.0, rel=1e-3)  # the description's MPP
        assert len(svs.levels) == 3
        a, b = svs.read_level_region(0, 512, 512, 256, 256), tif.read_level_region(0, 512, 512, 256, 256)
        assert np.abs(a.astype(int) - b).mean() < 1.0


def test_read_scaled_uses_the_coarse_level_and_resamples(slide_files):
    with open_slide(slide_files["slide"]) as slide:
        calls = []
        original = slide.read_level_region

        def spy(level, x, y, w, h):
            calls.append((level, w, h))
            return original(level, x, y, w, h)

        slide.read_level_region = spy
        out = slide.read_scaled(512, 512, 256, 256, 128, 128)  # 2 um/px
        assert out.shape == (128, 128, 3)
        assert calls == [(1, 128, 128)]  # level 1 (2 um/px), not level 0
        direct = original(1, 256, 256, 128, 128)
        np.testing.assert_array_equal(out, direct)


def test_stripped_tiff_is_read_by_segments(tmp_path):
    image = _rgb(700, 500)
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(
        path,
        image,
        rowsperstrip=64,
        compression="zlib",
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert isinstance(slide, TiffSegmentSlide)
        assert slide.mpp_um == pytest.approx(0.5)
        decoded = []
        original = slide._decode
        slide._decode = lambda page, index: decoded.append(index) or original(page, index)
        np.testing.assert_array_equal(slide.read_level_region(0, 100, 130, 300, 60), image[130:190, 100:400])
        assert decoded == [2]  # rows 130..189 lie in strip 2 only: the rest is never decoded
        edge = slide.read_level_region(0, 450, 650, 100, 100)
        np.testing.assert_array_equal(edge[:50, :50], image[650:, 450:])
        assert (edge[50:] == 255).all()


def test_tiled_tiff_segments_inch_resolution(tmp_path):
    image = _rgb(600, 600, seed=1)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(
        path, image, tile=(128, 128), photometric="rgb", resolution=(50800, 50800), resolutionunit="INCH"
    )
    slide = TiffSegmentSlide(path)
    assert slide.mpp_um == pytest.approx(0.5)  # 25400 um per inch / 50800 px per inch
    np.testing.assert_array_equal(slide.read_level_region(0, 100, 200, 300, 250), image[200:450, 100:400])


def test_missing_mpp_needs_mpp_um(tmp_path):
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, _rgb(300, 300), tile=(128, 128), photometric="rgb")
    with pytest.raises(SlideError, match=r"nompp\.tif: no microns per pixel.*pass mpp_um"):
        open_slide(path)
    with open_slide(path, mpp_um=0.25) as slide:
        assert slide.mpp_um == 0.25
    # 72 pixels per inch is a writer's default, not a pixel size (352.8 um/px otherwise)
    dpi72 = tmp_path / "dpi72.tif"
    tifffile.imwrite(
        dpi72, _rgb(300, 300), tile=(128, 128), photometric="rgb", resolution=(72, 72), resolutionunit="INCH"
    )
    with pytest.raises(SlideError, match=r"dpi72\.tif: no microns per pixel.*pass mpp_um"):
        TiffSegmentSlide(dpi72)
    with pytest.raises(SlideError, match=r"nompp\.tif: mpp_um must be a positive number"):
        open_slide(path, mpp_um=-1)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(SlideError, match=r"absent\.svs: no such slide file"):
        open_slide(tmp_path / "absent.svs")
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"not a slide" * 100)
    with pytest.raises(SlideError, match=r"corrupt\.svs: cannot be read as a whole-slide image"):
        open_slide(corrupt)
    text = tmp_path / "notes.ndpi"
    text.write_text("hello")
    with pytest.raises(SlideError, match=r"notes\.ndpi: cannot be read as a whole-slide image"):
        open_slide(text)


def test_overview_matches_scaled_reads(slide_files):
    with open_slide(slide_files["slide"]) as slide:
        overview = slide.read_overview(16.0, block=50)  # blocks smaller than the output: stitched
        assert overview.shape == (128, 128, 3)
        whole = slide.read_scaled(0, 0, 2048, 2048, 128, 128)
        assert np.abs(overview.astype(int) - whole).mean() < 2.0


def test_corrupt_tile_is_named(tmp_path):
    """A slide whose tile data is damaged fails on the read that reaches it, naming the file."""
    image = _rgb(512, 512, seed=3)
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(
        path,
        image,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count  # tile 3 (bottom right) is zeros
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        assert slide.read_level_region(0, 0, 0, 200, 200).shape == (200, 200, 3)  # tile 0 is fine
        with pytest.raises(SlideError, match=r"damaged\.tif: .*cannot be (read|decoded)"):
            slide.read_level_region(0, 300, 300, 100, 100)
