"""Whole-slide inference: tiles as one sequence, disk-backed stitching, outputs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide
from pathseqsam.wsi.reader import SlideError, open_slide
from pathseqsam.wsi.segment import SlideSegmenter, list_slides
from pathseqsam.wsi.stitch import DiskArray, DiskBlender
from tests.wsi.slide_helpers import ColourOracle


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory, slide_files):
    """The colour oracle through the whole pipeline on the 2048-px synthetic slide."""
    out = tmp_path_factory.mktemp("oracle")
    oracle = ColourOracle()
    summary = SlideSegmenter(oracle, out, model_mpp_um=2.0, image_size=128).segment(slide_files["slide"])
    return {"out": out / "syn_00_wsi", "summary": summary, "oracle": oracle}


def test_outputs_exist_and_summary(oracle_run, scene):
    folder, summary = oracle_run["out"], oracle_run["summary"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "glomeruli.geojson",
        "mask.tif",
        "summary.json",
        "thumbnail.png",
    ]
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert summary["count"] == len(scene.glomeruli)  # every glomerulus found once
    assert summary["read_level"] == 1  # 2 um/px read from the 2x level of a 1 um/px slide
    assert summary["settings"]["tile_um"] == 256.0 and summary["settings"]["stride_um"] == 128.0
    # the tissue area is the sections' area, measured independently on a 16-um grid of the scene
    ys, xs = np.mgrid[0:128, 0:128]
    inside = np.zeros((128, 128), bool)
    for s in scene.sections:
        inside |= scene._in_section((xs + 0.5) * 16.0, (ys + 0.5) * 16.0, s)
    assert summary["tissue_mm2"] == pytest.approx(inside.sum() * 16.0**2 / 1e6, rel=0.05)
    assert not list(folder.parent.glob(".*"))  # no temporary folder left


def test_positions_are_tile_centres_in_micrometres(oracle_run):
    oracle, summary = oracle_run["oracle"], oracle_run["summary"]
    pos = oracle.seen_positions[0].numpy()
    assert pos.shape == (summary["tiles"], 2)
    # centres lie on the 128-um stride grid offset by half a 256-um tile (or snapped to the edge)
    assert np.isin(pos % 128.0, [0.0, 0.0]).all() or np.allclose((pos - 128.0) % 128.0, 0.0)
    # serpentine: every step is one stride (within a row) or a step between rows
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    assert np.median(steps) == 128.0
    # Eq. 1's distance unit was the stride during the run, and restored after
    assert oracle.seen_units == [128.0] and oracle.distance_unit_um == 5.0


def test_mask_tif_matches_the_truth(oracle_run, slide_files):
    mask_path = oracle_run["out"] / "mask.tif"
    with tifffile.TiffFile(mask_path) as tif:
        shapes = [p.shape for p in tif.pages]
        assert shapes == [(2048, 2048), (1024, 1024), (512, 512)]  # level-0 geometry, top-level pyramid
        page = tif.pages[0]
        assert page.is_tiled and page.compression == 8  # deflate
        assert page.tags["ResolutionUnit"].value == 3
        num, den = page.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(1.0)
        pred = page.asarray()
    with open_slide(mask_path) as slide:  # OpenSlide sees the pyramid and the mpp
        assert len(slide.levels) == 3 and slide.mpp_um == pytest.approx(1.0)
    truth = tifffile.imread(slide_files["mask"], key=0) > 0
    assert set(np.unique(pred)) <= {0, 255}
    dice = 2 * np.logical_and(pred > 0, truth).sum() / ((pred > 0).sum() + truth.sum())
    assert dice > 0.95  # stitched at 2 um/px, written at 1 um/px: edges differ by about a pixel


def test_geojson_one_polygon_per_glomerulus_inside_the_slide(oracle_run, scene):
    gj = json.loads((oracle_run["out"] / "glomeruli.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    feats = gj["features"]
    assert len(feats) == len(scene.glomeruli)
    from matplotlib.path import Path as MplPath

    found = np.zeros(len(scene.glomeruli), int)
    for f in feats:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Glomerulus" and len(props["classification"]["color"]) == 3
        ring = np.array(f["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all() and len(ring) >= 4
        assert (ring >= 0).all() and (ring[:, 0] <= 2048).all() and (ring[:, 1] <= 2048).all()
        # which glomerulus centres does this polygon contain?
        inside = MplPath(ring).contains_points(scene.glomeruli[:, :2])
        found += inside
        x, y = ring[:, 0], ring[:, 1]
        shoelace = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # level-0 px = um^2
        assert props["measurements"]["Area um^2"] == pytest.approx(shoelace, rel=0.15)
        assert 0.5 < props["measurements"]["Mean probability"] <= 1.0
    # every glomerulus is inside exactly one polygon: one crossing tile borders is ONE polygon
    assert (found == 1).all()


def test_thumbnail_shows_contours(oracle_run):
    thumb = np.asarray(Image.open(oracle_run["out"] / "thumbnail.png"))
    assert thumb.shape == (1024, 1024, 3)  # 2 mm at 2 um/px
    green = (thumb == [0, 200, 0]).all(-1)
    assert green.sum() > 1000


def test_sequence_with_the_tiny_model_and_per_tile(tmp_path, make_tiny, slide_files, monkeypatch):
    net = make_tiny()
    unit = net.distance_unit_um
    calls = {"stream": 0, "slices": []}
    stream, slices = net.iter_slice_stream, net.iter_slices

    def spy_stream(*args, **kwargs):
        calls["stream"] += 1
        return stream(*args, **kwargs)

    def spy_slices(images, *args, **kwargs):
        calls["slices"].append(tuple(images.shape))
        return slices(images, *args, **kwargs)

    monkeypatch.setattr(net, "iter_slice_stream", spy_stream)
    monkeypatch.setattr(net, "iter_slices", spy_slices)
    seq = SlideSegmenter(net, tmp_path / "seq", model_mpp_um=4.0, chunk=4).segment(slide_files["slide"])
    assert calls == {"stream": 1, "slices": []}  # one sequence for the whole slide
    per = SlideSegmenter(net, tmp_path / "per", model_mpp_um=4.0, per_tile=True, chunk=4).segment(
        slide_files["slide"]
    )
    assert calls["stream"] == 1
    # per tile: batches of independent one-tile sequences [c, 3, 1, P, P]
    assert {s[1:] for s in calls["slices"]} == {(3, 1, 128, 128)}
    assert sum(s[0] for s in calls["slices"]) == per["tiles"]
    assert seq["tiles"] == per["tiles"] > 10
    assert net.distance_unit_um == unit  # the stride was Eq. 1's unit only during the run
    for run in ("seq", "per"):
        with tifffile.TiffFile(tmp_path / run / "syn_00_wsi" / "mask.tif") as tif:
            assert tif.pages[0].shape == (2048, 2048)


def test_slide_coordinates_get_the_tiling(tmp_path, make_tiny, slide_files, monkeypatch):
    """A slide-coordinates network is handed the run's tile side and stride; its memory indices are
    the tiles around each one (never more than 1.5 strides away)."""
    net = make_tiny(model_mpp_um=4.0, memory_coordinates="slide").eval()
    seen = {}
    stream = net.iter_slice_stream

    def spy(chunks, positions, num_slices, **kwargs):
        seen.update(kwargs, positions=positions.clone())
        for step in stream(chunks, positions, num_slices, return_aux=True, **kwargs):
            seen.setdefault("memory", []).append(step["memory_indices"][0].tolist())
            yield step

    monkeypatch.setattr(net, "iter_slice_stream", spy)
    out = SlideSegmenter(net, tmp_path / "slide", model_mpp_um=4.0, chunk=4, stride_um=384.0).segment(
        slide_files["slide"]
    )
    assert (seen["tile_um"], seen["stride_um"]) == (512.0, 384.0)
    pos = seen["positions"][0]
    for t, memory in enumerate(seen["memory"]):
        for j in (j for j in memory if j >= 0):
            assert j < t and torch.linalg.vector_norm(pos[j] - pos[t]) <= 1.5 * 384.0 + 1e-3
    assert out["tiles"] == len(seen["memory"]) > 4 and any(m != [-1] * len(m) for m in seen["memory"])


def test_stream_memory_does_not_hold_all_tiles(monkeypatch, tmp_path, make_tiny, slide_files):
    """The tiles reach the network in chunks of ``chunk``, never as one tensor."""
    net = make_tiny()
    sizes = []
    original = net.iter_slice_stream

    def spy(chunks, positions, num_slices, return_aux=False):
        def watch():
            for c in chunks:
                sizes.append(c.shape[2])
                yield c

        return original(watch(), positions, num_slices, return_aux)

    monkeypatch.setattr(net, "iter_slice_stream", spy)
    summary = SlideSegmenter(net, tmp_path, model_mpp_um=4.0, chunk=3).segment(slide_files["slide"])
    assert max(sizes) == 3 and sum(sizes) == summary["tiles"]


def test_blank_slide_gives_empty_outputs(tmp_path):
    scene = make_slide_scene(600, 500, 1.0, n_sections=1, n_glomeruli=0)
    scene.sections = scene.sections[:0]  # glass only
    path = write_synthetic_slide(tmp_path / "blank.tiff", scene)
    summary = SlideSegmenter(ColourOracle(), tmp_path / "out", model_mpp_um=2.0).segment(path)
    assert summary["tiles"] == 0 and summary["count"] == 0 and summary["message"] == "no tissue found"
    folder = tmp_path / "out" / "blank"
    assert json.loads((folder / "glomeruli.geojson").read_text()) == {
        "type": "FeatureCollection",
        "features": [],
    }
    mask = tifffile.imread(folder / "mask.tif", key=0)
    assert mask.shape == (500, 600) and not mask.any()


def test_existing_output_is_not_overwritten(tmp_path, slide_files):
    out = tmp_path / "out"
    earlier = out / "syn_00_wsi"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text('{"earlier": true}')
    seg = SlideSegmenter(ColourOracle(), out, model_mpp_um=8.0)
    with pytest.raises(
        SlideError, match=r"syn_00_wsi: exists \(results of an earlier run for .*syn_00_wsi\.tiff\)"
    ):
        seg.segment(slide_files["slide"])
    assert (earlier / "summary.json").read_text() == '{"earlier": true}'
    summary = SlideSegmenter(ColourOracle(), out, model_mpp_um=8.0, overwrite=True).segment(
        slide_files["slide"]
    )
    assert json.loads((earlier / "summary.json").read_text()) == summary
    assert sorted(p.name for p in out.iterdir()) == ["syn_00_wsi"]  # no leftovers


def test_failed_run_leaves_nothing(tmp_path, slide_files):
    class Broken(ColourOracle):
        def iter_slice_stream(self, chunks, positions, num_slices, return_aux=False):
            raise RuntimeError("network failed")
            yield

    with pytest.raises(RuntimeError, match="network failed"):
        SlideSegmenter(Broken(), tmp_path, model_mpp_um=8.0).segment(slide_files["slide"])
    assert list(tmp_path.iterdir()) == []


def test_missing_mpp_and_bad_slide(tmp_path):
    nompp = tmp_path / "nompp.tif"
    tifffile.imwrite(nompp, np.full((300, 300, 3), 200, np.uint8), tile=(128, 128), photometric="rgb")
    seg = SlideSegmenter(ColourOracle(), tmp_path / "out", model_mpp_um=2.0)
    with pytest.raises(SlideError, match=r"nompp\.tif: no microns per pixel"):
        seg.segment(nompp)
    summary = SlideSegmenter(ColourOracle(), tmp_path / "out", model_mpp_um=2.0, mpp_um=0.5).segment(nompp)
    assert summary["mpp_um"] == 0.5
    with pytest.raises(SlideError, match=r"nothing\*\.svs: no such file or folder, and no file matches"):
        list_slides(str(tmp_path / "nothing*.svs"))


def test_slide_inputs_that_hold_no_slide_are_named(tmp_path):
    """A missing folder, an empty one and one without slide files each stop with the path named."""
    missing = tmp_path / "my_slides"
    with pytest.raises(
        SlideError, match=rf"{missing}: no such file or folder.*expected a slide file, a folder"
    ):
        list_slides(str(missing))
    missing.mkdir()
    with pytest.raises(
        SlideError, match=rf"{missing}: folder holds no slide file \(expected files ending in .svs"
    ):
        list_slides(missing)
    (missing / "notes.txt").write_text("not a slide")
    (missing / "sub").mkdir()
    (missing / "sub" / "a.svs").write_bytes(b"")
    with pytest.raises(
        SlideError, match=r"folder holds no slide file.*'\S+/my_slides/\*\*/\*\.svs' for subfolders"
    ):
        list_slides(missing)
    assert list_slides([str(missing / "**" / "*.svs"), missing / "sub" / "a.svs"]) == [
        missing / "sub" / "a.svs"
    ]


def test_disk_blender_is_a_weighted_average(tmp_path):
    blender = DiskBlender(tmp_path, (40, 50), tile_px=20, mode="gaussian")
    w = blender.weights
    a, b = np.full((20, 20), 0.2, np.float32), np.full((20, 20), 0.8, np.float32)
    blender.add(0, 0, a)
    blender.add(0, 10, b)
    got = blender.read(0, 0, 40, 50)
    expected = np.zeros((40, 50))
    num = np.zeros((40, 50))
    den = np.zeros((40, 50))
    num[:20, :20] += 0.2 * w
    den[:20, :20] += w
    num[:20, 10:30] += 0.8 * w
    den[:20, 10:30] += w
    expected = np.where(den > 0, num / np.maximum(den, 1e-12), 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    arr = DiskArray(tmp_path / "x.u8", (10, 10), np.uint8)
    arr.write(-2, 8, np.ones((5, 5), np.uint8))  # partly outside: clipped
    assert arr.read(0, 0, 10, 10).sum() == 3 * 2


def test_predictions_are_kept_to_the_tissue(tmp_path, slide_files, scene):
    class Everywhere(ColourOracle):
        def _logits(self, x):
            return torch.full_like(x[:, :1], 10.0)

    on = SlideSegmenter(Everywhere(), tmp_path / "on", model_mpp_um=8.0).segment(slide_files["slide"])
    off = SlideSegmenter(Everywhere(), tmp_path / "off", model_mpp_um=8.0, restrict_to_tissue=False).segment(
        slide_files["slide"]
    )
    # without the restriction the tiles' whole area (tissue and the glass they overlap) is "found"
    area_on, area_off = sum(on["areas_um2"]), sum(off["areas_um2"])
    assert area_off > 1.2 * area_on
    # with it, the found area is the tissue area (within the one-pixel growth of a 16-um mask)
    assert area_on / 1e6 == pytest.approx(on["tissue_mm2"], rel=0.1)
    assert on["count"] == 3  # the three sections


def test_slides_are_resampled_to_the_resolution_the_weights_carry(tmp_path):
    from pathseqsam import build_pathseqsam

    net = build_pathseqsam(model="tiny", image_size=64, lora_rank=0, model_mpp_um=2.0)
    with pytest.raises(ValueError, match=r"model_mpp_um=4.0 but the network works at 2.0 um/px"):
        SlideSegmenter(net, tmp_path, model_mpp_um=4.0)
    assert SlideSegmenter(net, tmp_path, model_mpp_um=2.0).settings.model_mpp_um == 2.0
    # the settings need not repeat it: the network's buffer and image size give the geometry
    settings = SlideSegmenter(net, tmp_path).settings
    assert (settings.model_mpp_um, settings.image_size, settings.tile_um, settings.tile_px) == (
        2.0,
        64,
        128.0,
        64,
    )
    # a state dict trained at 2.0000004 um/px loads into it (within load tolerance): slides are read at
    # the resolution the loaded weights carry
    state = net.state_dict()
    state["model_mpp_um"] = torch.tensor(2.0000004, dtype=torch.float64)
    torch.save(state, tmp_path / "model.pt")
    assert SlideSegmenter(net, tmp_path, checkpoint=tmp_path / "model.pt").settings.model_mpp_um == 2.0000004
    with pytest.raises(ValueError, match=r"ColourOracle carries no model_mpp_um .* or give model_mpp_um"):
        SlideSegmenter(ColourOracle(), tmp_path)


def test_settings_are_typed_and_declared_once():
    """Fields are converted to their types or refused by name; the network's geometry waits for it."""
    from pathseqsam.wsi.segment import SlideInferenceSettings

    s = SlideInferenceSettings(per_tile="true", overwrite="off", tile_um=300, chunk=np.int64(3))
    assert (s.per_tile, s.overwrite, s.tile_um, s.stride_um, s.chunk) == (True, False, 300.0, 150.0, 3)
    assert type(s.tile_um) is float and type(s.chunk) is int
    unresolved = SlideInferenceSettings()
    assert (unresolved.model_mpp_um, unresolved.tile_um, unresolved.stride_um) == (None, None, None)
    bad = {
        "chunk": ("8", r"slide setting 'chunk' = '8': expected a whole number"),
        "threshold": ("0.5", r"slide setting 'threshold' = '0.5': expected a finite number$"),
        "tile_um": (float("nan"), r"slide setting 'tile_um' = nan: expected a finite number or null"),
        "max_tiles": (2.0, r"slide setting 'max_tiles' = 2.0: expected a whole number or null"),
        "per_tile": ("maybe", r"setting 'per_tile' = 'maybe': expected true or false"),
        "blend": ("median", r"slide setting 'blend' = 'median': expected one of \('gaussian', 'constant'\)"),
        "order": ("$os.getcwd()", r"order must be one of \('serpentine', 'short_path'\)"),
        "tissue_mpp_um": (0, r"slide setting 'tissue_mpp_um' = 0.0: expected a positive number"),
        "chunk ": (0, r"chunk and max_tiles must be >= 1"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            SlideInferenceSettings(**{name.strip(): value})
    # a settings object (the bundle's slide_settings node) and fields: the fields win
    segmenter = SlideSegmenter(
        ColourOracle(),
        "out",
        settings=SlideInferenceSettings(chunk=3, threshold=0.7),
        model_mpp_um=2.0,
        chunk=5,
    )
    assert (segmenter.settings.chunk, segmenter.settings.threshold, segmenter.settings.tile_um) == (
        5,
        0.7,
        256.0,
    )
    assert SlideSegmenter(ColourOracle(), "out", settings={"model_mpp_um": 4.0}).settings.tile_px == 128


def test_region_cap_and_progress(tmp_path, slide_files, scene, oracle_run):
    """A level-0 region tiles only the tissue inside it; max_tiles refuses before reading; progress counts
    tiles; write_images=False writes no mask.tif and no thumbnail."""
    from pathseqsam.wsi.segment import SlideTooLarge

    x, y, w, h = 600, 500, 800, 900  # level-0 pixels (1 um/px)
    calls: list[tuple[int, int]] = []
    segmenter = SlideSegmenter(
        ColourOracle(), tmp_path / "r", model_mpp_um=2.0, image_size=128, write_images=False
    )
    summary = segmenter.segment(
        slide_files["slide"], region=(x, y, w, h), progress=lambda done, total: calls.append((done, total))
    )
    # write_images=False: the polygons and the summary only
    assert sorted(p.name for p in (tmp_path / "r" / "syn_00_wsi").iterdir()) == [
        "glomeruli.geojson",
        "summary.json",
    ]
    n = summary["tiles"]
    assert 0 < n < oracle_run["summary"]["tiles"] and summary["region"] == [x, y, w, h]
    assert calls == [(i, n) for i in range(1, n + 1)]
    # the oracle finds every glomerulus of the whole slide once (test_outputs_exist_and_summary): here
    # every one wholly inside the region is found once, none wholly outside it (beyond the tissue
    # mask's grown overview pixels, 2 x 16 um) is found
    features = json.loads((tmp_path / "r" / "syn_00_wsi" / "glomeruli.geojson").read_text())["features"]
    centres = np.array([np.asarray(f["geometry"]["coordinates"][0]).mean(axis=0) for f in features])
    n_inside = 0
    for cx, cy, r in scene.glomeruli:
        hits = int((np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) < r).sum())
        if x + r <= cx <= x + w - r and y + r <= cy <= y + h - r:
            assert hits == 1, (cx, cy, r)
            n_inside += 1
        elif cx + r < x - 32 or cx - r > x + w + 32 or cy + r < y - 32 or cy - r > y + h + 32:
            assert hits == 0, (cx, cy, r)
    assert n_inside >= 3

    oracle = ColourOracle()
    with pytest.raises(
        SlideTooLarge, match=rf"syn_00_wsi.tiff: {n} tissue tiles of 256 um, more than the limit of 3"
    ):
        SlideSegmenter(oracle, tmp_path / "cap", model_mpp_um=2.0, image_size=128, max_tiles=3).segment(
            slide_files["slide"], region=(x, y, w, h)
        )
    assert oracle.seen_positions is None  # refused before any tile reached the network
    assert not list((tmp_path / "cap").iterdir())  # and nothing left behind
    with pytest.raises(
        SlideError, match=r"region x=3000, y=0, width=10, height=10 \(level-0 pixels\) does not lie"
    ):
        SlideSegmenter(oracle, tmp_path / "out", model_mpp_um=2.0, image_size=128).segment(
            slide_files["slide"], region=(3000, 0, 10, 10)
        )
