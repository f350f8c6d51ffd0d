"""A real MONAI Label server on a pyramidal slide: regions at any level, in level-0 coordinates.

The datastore holds one synthetic pyramidal TIFF (2048 x 2048 px at 0.5 um/px, levels 1x, 2x, 4x,
written once for this module by :mod:`pathseqsam.synthetic.slides`; OpenSlide opens it). The server
(the launcher of ``test_server.py``: this checkout first on PYTHONPATH) serves the demo checkpoint
(conftest's short training at 2 um/px) with a 1-megapixel request budget. A region at level 0 is checked against the bundle run in this process
on the same rectangle cut out of level 0 with tifffile; the same area at level 1 must give the same
glomeruli; clicks in level-0 pixels on a level-1 region are checked against the network called
directly; regions outside the slide, levels it does not have and regions over the budget are refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.label

if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":
    pytest.importorskip("monailabel", reason="MONAI Label extra not installed (.venv-label, see README)")
import requests  # noqa: E402  (a MONAI Label dependency)

from tests.label.test_server import (  # noqa: E402
    Server,
    _network,
    _parts,
    _read_mask,
    demo_bundle_conf,
    launch,
)

SLIDE_PX = 2048
SLIDE_MPP = 0.5
# a 768 x 768 px level-0 region (384 um; 192 px at the bundle's 2 um/px) holding several glomeruli
LOCATION = [640, 576]
SIZE0 = 768


@pytest.fixture(scope="module")
def slide_server(tmp_path_factory, demo_checkpoint) -> Iterator[Server]:
    """The server on the slide, serving the demo checkpoint (a short training at 2 um/px, conftest).

    The seeded random tiny model marks nearly every pixel of a slide region as glomerulus; the demo
    network's masks follow the tissue, so agreement between levels means something.
    """
    from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("label_slides")
    studies = tmp / "studies"
    studies.mkdir()
    scene = make_slide_scene(SLIDE_PX, SLIDE_PX, mpp_um=SLIDE_MPP, n_glomeruli=20, seed=0)
    write_synthetic_slide(studies / "slideD.tiff", scene)
    bundle, conf = demo_bundle_conf(
        tmp, demo_checkpoint[0] / "models" / "model.pt", skip_trainers="true", max_megapixels="1"
    )
    with launch(tmp, studies, bundle, conf) as srv:
        yield srv


def _region_png(srv: Server, tmp: Path, level: int = 0) -> Path:
    """The test region cut out of ``level`` with tifffile (not OpenSlide), saved as a PNG."""
    import tifffile
    from PIL import Image

    pixels = tifffile.imread(srv.studies / "slideD.tiff", key=level)
    ds = 2**level
    x, y, size = LOCATION[0] // ds, LOCATION[1] // ds, SIZE0 // ds
    path = tmp / f"region{level}.png"
    Image.fromarray(pixels[y : y + size, x : x + size]).save(path)
    return path


def _bundle_in_process(srv: Server, png: Path, prompts: dict | None = None, level: int = 0) -> np.ndarray:
    """The bundle's preprocessing, network and postprocessing (without its writer) on a PNG of ``level``."""
    net, parser = _network(srv.bundle)
    post = parser.get("postprocessing")
    post["transforms"] = [t for t in post["transforms"] if t != "@writer"]
    parser.set(post, "postprocessing")
    data = parser.get_parsed_content("preprocessing")({"image": [str(png)], "mpp_um": SLIDE_MPP * 2**level})
    images, positions = data["image"][None], data["positions"][None]
    with torch.no_grad():
        if prompts is None:
            logits = parser.get_parsed_content("inferer")(images, net, positions=positions)
        else:
            logits = net(images, positions=positions, prompts=prompts)
    data["pred"] = logits[0].float()
    pred = parser.get_parsed_content("postprocessing")(data)["pred"]
    return np.asarray(pred)[0] > 0.5  # [N, H, W]


def _rasterise(contours: list, shape: tuple[int, int], origin: tuple[int, int], ds: float) -> np.ndarray:
    """Polygons in level-0 pixels drawn on a grid of ``shape`` whose pixel (0, 0) starts at ``origin``."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (shape[1], shape[0]))
    draw = ImageDraw.Draw(img)
    for poly in contours:
        pts = [((px - origin[0]) / ds - 0.5, (py - origin[1]) / ds - 0.5) for px, py in poly]
        draw.polygon(pts, fill=1, outline=1)
    return np.asarray(img) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _infer(srv: Server, body: dict, tmp: Path, model: str = "pathseqsam") -> tuple[dict, np.ndarray]:
    params, name, payload = _parts(srv.post(f"/infer/{model}", body, image="slideD", output="all"))
    assert name.endswith(".png")
    return params, _read_mask(name, payload, tmp)[0] > 0


def test_info_lists_the_slide_and_the_level_option(slide_server):
    info = requests.get(f"{slide_server.url}/info/", timeout=30).json()
    assert info["datastore"]["total"] == 1
    auto = info["models"]["pathseqsam"]
    assert auto["max_pixels"] == 1_000_000
    assert auto["request_options"]["level"]["max"] == 32
    assert auto["request_options"]["tile_size"]["type"] == "pair"


def test_region_at_level_0_is_the_bundle_on_that_region(slide_server, tmp_path):
    body = {"location": LOCATION, "size": [SIZE0, SIZE0], "level": 0, "tile_size": [1024, 1024]}
    params, got = _infer(slide_server, body, tmp_path)
    assert got.shape == (SIZE0, SIZE0)
    assert params["location"] == LOCATION and params["size"] == [SIZE0, SIZE0] and params["level"] == 0
    assert params["downsample"] == 1.0 and params["mpp_um"] == SLIDE_MPP
    expected = _bundle_in_process(slide_server, _region_png(slide_server, tmp_path))[0]
    assert expected.shape == got.shape
    assert 0.01 < expected.mean() < 0.99  # the tiny model's answer is neither empty nor everything
    # OpenSlide and tifffile decode the same JPEG tiles: the masks agree up to a few border pixels
    assert (got != expected).mean() < 0.005
    # the outlines are in level-0 pixels: drawn back on the region's grid they give the mask
    drawn = _rasterise(params["contours"], got.shape, tuple(LOCATION), 1.0)
    assert _dice(drawn, got) > 0.97


def test_same_area_at_level_1_gives_the_same_glomeruli(slide_server, tmp_path):
    params0, mask0 = _infer(slide_server, {"location": LOCATION, "size": [SIZE0, SIZE0]}, tmp_path)
    half = SIZE0 // 2
    params1, mask1 = _infer(slide_server, {"location": LOCATION, "size": [half, half], "level": 1}, tmp_path)
    assert mask1.shape == (half, half)
    assert params1["location"] == LOCATION and params1["size"] == [half, half] and params1["level"] == 1
    assert params1["downsample"] == 2.0 and params1["mpp_um"] == 2 * SLIDE_MPP
    # level 0's mask on level 1's grid (2 x 2 blocks, majority)
    mask0_at_1 = mask0.reshape(half, 2, half, 2).mean(axis=(1, 3)) >= 0.5
    assert 0.01 < mask1.mean() < 0.99
    assert _dice(mask0_at_1, mask1) > 0.9
    # both answers' outlines, in level-0 pixels, cover the same area
    drawn0 = _rasterise(params0["contours"], (SIZE0, SIZE0), tuple(LOCATION), 1.0)
    drawn1 = _rasterise(params1["contours"], (SIZE0, SIZE0), tuple(LOCATION), 1.0)
    assert _dice(drawn0, drawn1) > 0.9


def test_regions_outside_the_slide_or_over_the_budget_are_refused(slide_server):
    def detail(body: dict, status: int) -> str:
        response = slide_server.post("/infer/pathseqsam", body, image="slideD", output="json")
        assert response.status_code == status, response.text[:500]
        return response.json()["detail"]

    assert detail({"location": [0, 0], "size": [1024, 1024]}, 413) == (
        "request 'size' [1024, 1024] at level 0: 1.0 megapixels (0.1 at the model's 2 um/px), more than "
        "the server's limit of 1 per request (--conf max_megapixels); request a smaller region or a "
        "coarser level"
    )
    assert "request 'size' [2048, 2048] at level 0: 4.2 megapixels" in detail({}, 413)  # the whole slide
    assert detail({"location": [1800, 0], "size": [512, 512]}, 400).startswith(
        "request region 'location' [1800, 0] (level-0 pixels) 'size' [512, 512] (level 0 pixels) does not "
        "lie inside the slide slideD.tiff: level 0 is 2048x2048 px"
    )
    assert "level 1 is 1024x1024 px" in detail(
        {"location": [1024, 1024], "size": [600, 100], "level": 1}, 400
    )
    assert detail({"size": [64, 64], "level": 3}, 400) == (
        "request 'level' = 3: the slide slideD.tiff has levels 0..2 (downsamples [1.0, 2.0, 4.0])"
    )
    assert "'level' = 40: out of range (0 <= level <= 32)" in detail({"size": [64, 64], "level": 40}, 400)
    # the whole of the coarsest level is within the budget
    response = slide_server.post("/infer/pathseqsam", {"level": 2}, image="slideD", output="json")
    assert response.status_code == 200, response.text[:500]


def test_clicks_and_box_in_level_0_pixels_on_a_level_1_region(slide_server, tmp_path):
    """Item 3: prompts on a slide are in level-0 pixels whatever the region's level."""
    half = SIZE0 // 2
    body = {
        "location": LOCATION,
        "size": [half, half],
        "level": 1,
        "foreground": [[871, 990]],  # the centre of a glomerulus (level-0 pixels)
        "background": [[700, 700]],
        "roi": [760, 880, 980, 1100],
    }
    params, got = _infer(slide_server, body, tmp_path, model="pathseqsam_interactive")
    assert got.shape == (half, half) and params["mode"] == "interactive" and params["prompted_slices"] == [0]
    assert params["level"] == 1 and params["location"] == LOCATION
    # the network sees the region at 2 um/px: level-0 pixel p is at (p - location) * 0.5 / 2
    to_model = SLIDE_MPP / 2.0
    x0, y0 = LOCATION
    prompts = {
        "point_coords": torch.tensor(
            [
                [
                    [
                        [(871 - x0) * to_model, (990 - y0) * to_model],
                        [(700 - x0) * to_model, (700 - y0) * to_model],
                    ]
                ]
            ]
        ),
        "point_labels": torch.tensor([[[1, 0]]]),
        "boxes": torch.tensor(
            [[[(760 - x0) * to_model, (880 - y0) * to_model, (980 - x0) * to_model, (1100 - y0) * to_model]]]
        ),
    }
    expected = _bundle_in_process(slide_server, _region_png(slide_server, tmp_path, 1), prompts, level=1)[0]
    assert (got != expected).mean() < 0.005
    assert got.sum() > 0
    _, auto = _infer(slide_server, {"location": LOCATION, "size": [half, half], "level": 1}, tmp_path)
    assert (got != auto).mean() > 0.01  # the prompts changed the answer

    outside = dict(body, foreground=[[100, 100]])  # inside the slide, outside the region
    response = slide_server.post("/infer/pathseqsam_interactive", outside, image="slideD", output="json")
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "request 'foreground'[0] = [100, 100]: click lies outside the 768x768 px region"
    )
