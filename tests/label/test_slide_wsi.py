"""Whole-slide answers for MONAI Label: the request whitelist, settings, polygons as MONAI Label contours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathseqsam.label.bundle import max_wsi_tiles_setting
from pathseqsam.label.requests.options import RequestRefused, clean_request, wsi_options
from pathseqsam.label.slides.wsi_job import (
    WSI_OUTPUTS,
    annotation_json,
    kept_features,
    write_output,
    wsi_settings,
)

ROOT = Path(__file__).resolve().parents[2]


def _feature(ring: list[list[float]]) -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}


def test_wsi_request_whitelist():
    options = wsi_options(WSI_OUTPUTS, devices=("cpu",))
    body = {
        "location": [10, 20],
        "size": [300, 400],
        "level": 1,
        "tile_size": [1024, 1024],
        "min_poly_area": 80,
        "output": "geojson",
        "image": "/etc/passwd",  # not an option: dropped
        "ckpt_path": "$open('x','w')",  # not an option: dropped, never a config value
    }
    assert clean_request(body, options) == {
        "location": [10, 20],
        "size": [300, 400],
        "level": 1,
        "tile_size": [1024, 1024],
        "min_poly_area": 80,
        "output": "geojson",
    }
    with pytest.raises(
        RequestRefused,
        match=r"request 'output' = 'svg': expected one of \['json', 'asap', 'dsa', 'geojson'\]",
    ):
        clean_request({"output": "svg"}, options)
    with pytest.raises(RequestRefused, match=r"request 'location' = \[1, 2, 3\]: expected two whole numbers"):
        clean_request({"location": [1, 2, 3]}, options)
    with pytest.raises(RequestRefused, match=r"request 'min_poly_area' = 1.5: expected an integer"):
        clean_request({"min_poly_area": 1.5}, options)


def test_max_wsi_tiles_setting():
    assert max_wsi_tiles_setting({}, 20000) == 20000
    assert max_wsi_tiles_setting({"max_wsi_tiles": "400"}, 20000) == 400
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(
            ValueError, match=rf"--conf max_wsi_tiles {bad}: expected a positive whole number"
        ):
            max_wsi_tiles_setting({"max_wsi_tiles": bad}, 20000)


def test_settings_come_from_the_bundle_and_server_overrides_only():
    """The bundle's slide_settings node plus typed --conf bundle.slide_settings#<field> overrides."""
    from pathseqsam.wsi.segment import SlideInferenceSettings

    overrides = {
        "slide_settings#threshold": 0.7,
        "slide_settings#order": "short_path",
        "image_size": 64,
        "train#x": 1,
    }
    settings = wsi_settings(ROOT / "bundle", overrides)
    node = json.loads((ROOT / "bundle" / "configs" / "inference_wsi.json").read_text())["slide_settings"]
    assert isinstance(settings, SlideInferenceSettings)
    assert settings.threshold == 0.7 and settings.order == "short_path"
    assert settings.min_object_um2 == node["min_object_um2"] and settings.chunk == node["chunk"]
    # per-tile is the slides' default (the whole-slide benchmark: docs/experiments/wsi_sequence/report.md)
    assert settings.per_tile is True and node["per_tile"] is True and settings.mpp_um is None
    # the geometry is the served network's (image_size and model_mpp_um of inference.json, not here)
    assert settings.image_size is None and settings.model_mpp_um is None and settings.tile_um is None
    # --conf mpp_um (files without a pixel size) serves slides too, unless slide_settings#mpp_um is given
    assert wsi_settings(ROOT / "bundle", {"mpp_um": 0.25}).mpp_um == 0.25
    assert wsi_settings(ROOT / "bundle", {"mpp_um": 0.25, "slide_settings#mpp_um": 0.5}).mpp_um == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # never evaluated: a string is only ever a string, checked against the field's choices
        (
            {"slide_settings#order": "$open('pwned','w')"},
            r"order must be one of \('serpentine', 'short_path'\)",
        ),
        (
            {"slide_settings#chunk": "4"},
            r"bundle\.slide_settings#chunk: slide setting 'chunk' = '4': expected a whole",
        ),
        ({"slide_settings#threshold": "@x"}, r"slide setting 'threshold' = '@x': expected a finite number"),
        ({"slide_settings#per_tile": "maybe"}, r"setting 'per_tile' = 'maybe': expected true or false"),
        (
            {"slide_settings#nope": 1},
            r"bundle\.slide_settings#nope: SlideInferenceSettings has no field 'nope'",
        ),
        (
            {"slide_settings#max_tiles": 3},
            r"slide_settings#max_tiles: not a server setting: set by --conf max_wsi",
        ),
        ({"slide_settings#model_mpp_um": 4.0}, r"not a server setting: the served network's own"),
        ({"slide_settings": {"chunk": 2}}, r"bundle\.slide_settings: set its fields one at a time"),
        # the ids before the node: named with their new id rather than ignored
        (
            {"tile_order": "short_path", "tiles_per_chunk": 4},
            r"--conf bundle\.tile_order: now --conf bundle\.slide_settings#order; "
            r"--conf bundle\.tiles_per_chunk: now --conf bundle\.slide_settings#chunk",
        ),
    ],
)
def test_server_slide_settings_are_checked(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        wsi_settings(ROOT / "bundle", overrides)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_features_become_monailabel_contours():
    square = [[10.4, 10.2], [30.0, 10.0], [30.2, 30.4], [10.0, 30.0], [10.4, 10.2]]  # closed ring, 400 px^2
    repeated = [[50.0, 50.0], [50.2, 50.1], [60.0, 50.0], [60.0, 60.0], [50.0, 50.0]]  # 50 px^2
    line = [[0.0, 0.0], [5.0, 0.0], [0.0, 0.0]]
    features = [_feature(square), _feature(repeated), _feature(line)]
    assert [contour for _, contour in kept_features(features)] == [
        [[10, 10], [30, 10], [30, 30], [10, 30]],  # rounded, closing vertex dropped
        [[50, 50], [60, 50], [60, 60]],  # (50.2, 50.1) rounds onto (50, 50): merged
    ]
    assert [contour for _, contour in kept_features(features, min_poly_area=80)] == [
        [[10, 10], [30, 10], [30, 30], [10, 30]]
    ]
    assert [f for f, _ in kept_features(features, 80)] == [features[0]]


def test_answers_parse_back(tmp_path):
    """ASAP/DSA through MONAI Label's own writers (label environment), GeoJSON and JSON."""
    pytest.importorskip("monailabel")
    import xml.etree.ElementTree as ET

    features = [
        _feature([[100.0, 100.0], [200.0, 100.0], [200.0, 200.0], [100.0, 100.0]]),
        _feature([[0, 0], [3, 0], [0, 3], [0, 0]]),
    ]
    summary = {
        "tiles": 4,
        "count": 2,
        "tissue_mm2": 0.1,
        "mpp_um": 0.5,
        "read_level": 2,
        "timings_s": {"total_s": 1.5},
        "tiles_per_s": 3.0,
        "width_px": 8192,
        "height_px": 4096,
    }
    kept = kept_features(features, 80)
    answer = annotation_json(
        {"features": features, "summary": summary, "region": None}, "pathseqsam", "d", kept
    )
    assert answer["count"] == 1 and answer["size"] == [8192, 4096] and answer["location"] == [0, 0]
    assert write_output(answer, kept, "json") is None
    xml = Path(write_output(answer, kept, "asap"))
    coords = [(c.get("X"), c.get("Y")) for c in ET.parse(xml).getroot().iter("Coordinate")]
    assert coords == [("100", "100"), ("200", "100"), ("200", "200")]
    dsa = json.loads(Path(write_output(answer, kept, "dsa")).read_text())
    assert [e["points"] for e in dsa["elements"]] == [[[100, 100, 0], [200, 100, 0], [200, 200, 0]]]
    geojson = Path(write_output(answer, kept, "geojson"))
    assert json.loads(geojson.read_text()) == {"type": "FeatureCollection", "features": [features[0]]}
    for path in (xml, geojson):  # the endpoint deletes its answer files after sending them
        path.unlink()


def test_one_user_of_the_network_at_a_time():
    from pathseqsam.label.slides.wsi_job import NetworkBusy, WholeSlideJobs

    jobs = WholeSlideJobs({}, max_tiles=10)
    assert jobs.status() == {"running": False}
    with jobs.lock:  # a region request holds the network
        with pytest.raises(NetworkBusy, match=r"^the network is busy with another inference request") as info:
            jobs.run(lambda: None, "cpu", "slide.tiff", "slideX", {})
        assert info.value.status_code == 503
        jobs._state = {"running": True, "image": "slideW", "tiles_done": 3, "tiles_total": 84, "_t0": 0.0}
        with pytest.raises(
            NetworkBusy, match=r"busy with a whole-slide inference of 'slideW' \(tiles 3/84\)"
        ):
            jobs.run(lambda: None, "cpu", "slide.tiff", "slideX", {})
        status = jobs.status()
        assert status["eta_s"] == pytest.approx(status["elapsed_s"] / 3 * 81, rel=0.01)
