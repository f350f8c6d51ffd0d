"""A real MONAI Label server on an 8k x 8k pyramidal slide: ``/infer/wsi_v2`` runs the slide pipeline.

The datastore holds one synthetic pyramidal TIFF of 8192 x 8192 px at 0.5 um/px (written by
:mod:`pathseqsam.synthetic.slides`; one tissue section in the middle so the test stays short) whose
glomerulus at (4096, 4096) lies across tile borders both of the pipeline's tiles (every 256 level-0
px) and of MONAI Label's default 1024-px tiles, plus a PNG that is not a slide. The server serves the
demo checkpoint (conftest). Regions at levels 0 and 1 must give the same glomeruli. Its whole-slide
ASAP XML and DSA JSON answers are parsed back and compared with the
bundle's own ``inference_wsi.json`` run in this process on the same slide; ``/info/`` must answer
(with the job's progress) while the slide runs, a second request for the network is refused with
503, and the server's peak RSS during the slide must stay within 2 GiB of its idle RSS. Last, an ASAP
XML label on a region of the slide trains the model through ``/train/pathseqsam``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.label

if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":
    pytest.importorskip("monailabel", reason="MONAI Label extra not installed (.venv-label, see README)")
import psutil  # noqa: E402  (a MONAI Label dependency)
import requests  # noqa: E402

from tests.label.test_server import OVERRIDES, Server, demo_bundle_conf, launch  # noqa: E402

SIDE = 8192
MPP = 0.5
CENTRE = SIDE // 2  # a corner of the pipeline's tiles (256 px = 128 um steps) and of 1024-px tiles
BORDER_RADIUS = 100.0  # level-0 px: the glomerulus across the borders (50 um)
# the other glomeruli: (dx, dy, r) from the centre, in level-0 pixels
OTHERS = [(-500, -350, 90.0), (480, -300, 110.0), (-450, 380, 95.0), (520, 350, 85.0), (-80, 600, 90.0)]
GIB = 1024**3
SCALE = 0.25  # canvas pixels per level-0 pixel when polygons are compared as masks


def write_test_slide(path: Path) -> None:
    """The 8k slide: one wobbly section (1100 x 900 px radii) holding six glomeruli."""
    from pathseqsam.synthetic.slides import SyntheticSlideScene, write_synthetic_slide

    section = [CENTRE, CENTRE, 1100.0, 900.0, 0.2, 0.03, 0.0, 0.02, 1.0, 0.01, 2.0]
    glomeruli = [(CENTRE, CENTRE, BORDER_RADIUS)] + [(CENTRE + dx, CENTRE + dy, r) for dx, dy, r in OTHERS]
    scene = SyntheticSlideScene(SIDE, SIDE, MPP, np.array([section]), np.array(glomeruli))
    write_synthetic_slide(path, scene)


@pytest.fixture(scope="module")
def wsi_server(tmp_path_factory, demo_checkpoint) -> Iterator[Server]:
    from PIL import Image

    tmp = tmp_path_factory.mktemp("label_wsi")
    studies = tmp / "studies"
    studies.mkdir()
    write_test_slide(studies / "slideW.tiff")
    shutil.copy(studies / "slideW.tiff", studies / "slideV.tiff")  # a second labelled slide to hold out
    Image.fromarray(np.full((64, 64, 3), 240, np.uint8)).save(studies / "plainP.png")
    bundle, conf = demo_bundle_conf(
        tmp, demo_checkpoint[0] / "models" / "model.pt", max_megapixels="1", max_wsi_tiles="400"
    )
    with launch(tmp, studies, bundle, conf) as srv:
        yield srv


@pytest.fixture(scope="module")
def bundle_polygons(wsi_server, tmp_path_factory) -> list[np.ndarray]:
    """The bundle's own slide pipeline (``configs/inference_wsi.json``) on the same slide, in this process."""
    from monai.bundle import ConfigWorkflow

    from tests.bundle_paths import LOGGING, META

    out = tmp_path_factory.mktemp("bundle_wsi")
    workflow = ConfigWorkflow(
        config_file=str(wsi_server.bundle / "configs" / "inference_wsi.json"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=None,
        slides=str(wsi_server.studies / "slideW.tiff"),
        output_dir=str(out),
        ckpt_path=str(wsi_server.bundle / "models" / "model.pt"),
        device="$torch.device('cpu')",
        image_size=OVERRIDES["image_size"],
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    features = json.loads((out / "slideW" / "glomeruli.geojson").read_text())["features"]
    return [np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64) for f in features]


def _post_wsi(
    srv: Server, output: str, wsi: dict | None = None, model: str = "pathseqsam"
) -> requests.Response:
    body = {"location": [0, 0], "size": [0, 0], "level": 0, "tile_size": [1024, 1024], "min_poly_area": 80}
    body.update(wsi or {})
    body["params"] = {"device": "cpu", **body.get("params", {})}
    return requests.post(
        f"{srv.url}/infer/wsi_v2/{model}",
        params={"image": "slideW", "output": output},
        data={"wsi": json.dumps(body)},
        timeout=600,
    )


def _asap_polygons(text: str) -> list[np.ndarray]:
    root = ET.fromstring(text)
    out = []
    for annotation in root.iter("Annotation"):
        assert annotation.get("Type") == "Polygon" and annotation.get("PartOfGroup") == "glomerulus"
        points = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order")))
        out.append(np.array([[float(c.get("X")), float(c.get("Y"))] for c in points]))
    return out


def _dsa_polygons(doc: dict) -> list[np.ndarray]:
    out = []
    for element in doc["elements"]:
        assert element["type"] == "polyline" and element["closed"] is True
        assert element["label"]["value"] == "glomerulus"
        out.append(np.asarray(element["points"], dtype=np.float64)[:, :2])
    return out


def _raster(polygons: list[np.ndarray], scale: float = SCALE) -> list[np.ndarray]:
    """Each polygon drawn alone on the slide's grid at ``scale`` (level-0 px -> canvas px)."""
    from PIL import Image, ImageDraw

    n = int(SIDE * scale)
    out = []
    for poly in polygons:
        img = Image.new("1", (n, n))
        ImageDraw.Draw(img).polygon([(x * scale, y * scale) for x, y in poly], fill=1, outline=1)
        out.append(np.asarray(img))
    return out


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    """A placed glomerulus (level-0 centre and radius) on the canvas of :func:`_raster`."""
    n = int(SIDE * SCALE)
    yy, xx = np.mgrid[:n, :n]
    return np.hypot((xx + 0.5) / SCALE - cx, (yy + 0.5) / SCALE - cy) < r


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _contains(poly: np.ndarray, x: float, y: float) -> bool:
    from matplotlib.path import Path as MplPath

    return bool(MplPath(poly).contains_point((x, y)))


def _assert_same_objects(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """One server polygon per bundle polygon, the same area (whole-pixel rounding aside)."""
    assert len(got) == len(expected) >= len(OTHERS)
    got_r, exp_r = _raster(got), _raster(expected)
    for e in exp_r:
        best = max(_dice(g, e) for g in got_r)
        assert best > 0.95
    assert _dice(np.any(got_r, axis=0), np.any(exp_r, axis=0)) > 0.98


def _rss(pid: int) -> int:
    """Resident bytes of the server and its children (data loader threads live in the process)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def test_info_and_regions_at_levels_0_and_1(wsi_server, tmp_path):
    """The same 8k slide through /info/ and the region endpoint: same glomeruli at levels 0 and 1."""
    from tests.label.test_server import _parts, _read_mask

    info = requests.get(f"{wsi_server.url}/info/", timeout=30).json()
    assert info["datastore"]["total"] == 3 and "pathseqsam" in info["trainers"]  # slideW, slideV, plainP
    assert info["pathseqsam_wsi"] == {"running": False, "max_tiles": 400}
    x0 = y0 = CENTRE - 384  # a 768 x 768 level-0 area around the border glomerulus
    masks, answers = [], []
    for level, size in ((0, 768), (1, 384)):
        body = {"location": [x0, y0], "size": [size, size], "level": level}
        params, name, payload = _parts(
            wsi_server.post("/infer/pathseqsam", body, image="slideW", output="all")
        )
        assert (
            params["level"] == level and params["downsample"] == 2.0**level and params["location"] == [x0, y0]
        )
        masks.append(_read_mask(name, payload, tmp_path)[0] > 0)
        answers.append(params)
    mask0_at_1 = masks[0].reshape(384, 2, 384, 2).mean(axis=(1, 3)) >= 0.5
    assert masks[1].shape == (384, 384) and 0.01 < masks[1].mean() < 0.99
    assert _dice(mask0_at_1, masks[1]) > 0.9
    for params in answers:  # outlines in level-0 pixels: one holds the border glomerulus's centre
        assert sum(_contains(np.asarray(c), CENTRE, CENTRE) for c in params["contours"]) == 1


def test_wsi_asap_is_the_bundle_pipeline_and_info_answers_meanwhile(wsi_server, bundle_polygons):
    srv = wsi_server
    pid = srv.process.pid
    idle = _rss(pid)
    peak = [idle]
    done = threading.Event()
    answer: dict = {}

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.02)

    def run() -> None:
        answer["response"] = _post_wsi(srv, "asap")
        done.set()

    sampler = threading.Thread(target=sample, daemon=True)
    worker = threading.Thread(target=run, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    worker.start()
    during, busy, still_running = [], None, False
    while not done.is_set():
        start = time.monotonic()
        info = requests.get(f"{srv.url}/info/", timeout=30).json()
        latency = time.monotonic() - start
        job = info["pathseqsam_wsi"]
        if job["running"]:
            during.append((latency, job))
            if busy is None:  # the network has one user at a time: a region request is refused meanwhile
                busy = srv.post(
                    "/infer/pathseqsam", {"location": [3800, 3800], "size": [256, 256]}, image="slideW"
                )
                still_running = requests.get(f"{srv.url}/info/", timeout=30).json()["pathseqsam_wsi"][
                    "running"
                ]
        time.sleep(0.05)
    worker.join()
    sampler.join()
    elapsed = time.monotonic() - t0

    response = answer["response"]
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("application/xml")
    # /info/ answered while the slide ran, quickly, with its progress
    assert during, f"no /info/ answer during the {elapsed:.1f} s whole-slide request"
    assert max(latency for latency, _ in during) < 2.0
    assert all(job["image"] == "slideW" for _, job in during)
    assert busy is not None and busy.status_code in (200, 503), busy
    if still_running:  # the slide held the network from before the region request to after its answer
        assert busy.status_code == 503, busy.text[:500]
        assert "the network is busy with a whole-slide inference of 'slideW' (tiles " in busy.json()["detail"]
    # the server's memory: peak during the slide within 2 GiB of idle
    assert peak[0] - idle <= 2 * GIB, f"idle {idle / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f} MiB"
    print(
        f"\nserver RSS idle {idle / 2**20:.0f} MiB, peak during the 8k slide {peak[0] / 2**20:.0f} MiB; "
        f"request {elapsed:.1f} s, {len(during)} /info/ answers meanwhile (slowest "
        f"{max(latency for latency, _ in during):.2f} s), region request meanwhile: {busy.status_code}"
    )

    polygons = _asap_polygons(response.text)
    _assert_same_objects(polygons, bundle_polygons)
    for poly in polygons:  # level-0 pixels, inside the slide
        assert poly.min() >= 0 and poly[:, 0].max() <= SIDE and poly[:, 1].max() <= SIDE
    # every placed glomerulus is found by ONE polygon, the one across the tile borders included,
    # which covers all four quadrants around the tiles' shared corner
    rasters = _raster(polygons)
    for dx, dy, r in [(0, 0, BORDER_RADIUS), *OTHERS]:
        disc = _disc(CENTRE + dx, CENTRE + dy, r)
        overlapping = [m for m in rasters if (m & disc).sum() > 0.3 * disc.sum()]
        assert len(overlapping) == 1, (dx, dy, [int((m & disc).sum()) for m in rasters], int(disc.sum()))
        if (dx, dy) == (0, 0):
            c = int(CENTRE * SCALE)
            quadrants = [(slice(None, c), slice(None, c)), (slice(None, c), slice(c, None))]
            quadrants += [(slice(c, None), slice(None, c)), (slice(c, None), slice(c, None))]
            for q in quadrants:
                assert (overlapping[0] & disc)[q].sum() > 0.3 * disc[q].sum()
    log = srv.log_tail(400)
    assert "whole-slide inference of slideW: tiles" in log and "ETA" in log


def test_wsi_dsa_geojson_and_json_answers(wsi_server, bundle_polygons):
    response = _post_wsi(wsi_server, "dsa")
    assert response.status_code == 200, response.text[:2000]
    doc = response.json()
    assert json.loads(doc["description"])["count"] == len(bundle_polygons)
    _assert_same_objects(_dsa_polygons(doc), bundle_polygons)

    response = _post_wsi(wsi_server, "geojson")
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("application/geo+json")
    features = response.json()["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == ["Glomerulus"] * len(
        bundle_polygons
    )
    got = [np.asarray(f["geometry"]["coordinates"][0]) for f in features]
    _assert_same_objects(got, bundle_polygons)

    response = _post_wsi(wsi_server, "json")
    assert response.status_code == 200, response.text[:2000]
    params = response.json()
    assert params["count"] == len(bundle_polygons) and params["size"] == [SIDE, SIDE]
    assert params["summary"]["read_level"] == 2  # 2 um/px: level 2 of a 0.5 um/px slide
    assert 0 < params["summary"]["tiles"] <= 400


def test_wsi_region_keeps_only_its_objects(wsi_server, bundle_polygons):
    """A region (level-0 location and size) tiles only the tissue inside it."""
    region = [CENTRE - 300, CENTRE - 300, 600, 600]  # around the border glomerulus only
    response = _post_wsi(wsi_server, "json", {"location": region[:2], "size": region[2:]})
    assert response.status_code == 200, response.text[:2000]
    params = response.json()
    assert params["location"] == region[:2] and params["size"] == region[2:]
    contours = [np.asarray(c) for c in params["annotations"][0]["annotation"]["elements"][0]["contours"]]
    assert sum(_contains(p, CENTRE, CENTRE) for p in contours) == 1
    for dx, dy, _ in OTHERS:  # all outside the region
        assert not any(_contains(p, CENTRE + dx, CENTRE + dy) for p in contours)
    whole = _post_wsi(wsi_server, "json").json()
    assert params["summary"]["tiles"] < whole["summary"]["tiles"]
    # MONAI Label's deprecated route (WSIInput as the JSON body) takes the same path
    response = requests.post(
        f"{wsi_server.url}/infer/wsi/pathseqsam",
        params={"image": "slideW", "output": "json"},
        json={"location": region[:2], "size": region[2:], "params": {"device": "cpu"}},
        timeout=600,
    )
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["annotations"][0]["annotation"] == params["annotations"][0]["annotation"]


def test_wsi_refusals(wsi_server):
    srv = wsi_server

    def detail(response: requests.Response, status: int) -> str:
        assert response.status_code == status, response.text[:500]
        return response.json()["detail"]

    assert "does not lie inside the slide (8192x8192 px)" in detail(
        _post_wsi(srv, "json", {"location": [9000, 0], "size": [100, 100]}), 400
    )
    assert detail(_post_wsi(srv, "json", {"min_poly_area": -1}), 400) == (
        "request 'min_poly_area' = -1: out of range (0 <= min_poly_area <= 1e+12)"
    )
    assert detail(_post_wsi(srv, "json", model="pathseqsam_interactive"), 400).startswith(
        "whole-slide inference is served by the automatic model 'pathseqsam'"
    )
    response = requests.post(
        f"{srv.url}/infer/wsi_v2/pathseqsam", params={"image": "plainP", "output": "asap"}, timeout=60
    )
    assert detail(response, 400).startswith("image 'plainP' is not a pyramidal whole-slide image")
    response = requests.post(
        f"{srv.url}/infer/wsi_v2/pathseqsam",
        params={"image": "slideW"},
        data={"wsi": "{not json"},
        timeout=60,
    )
    assert detail(response, 400).startswith("wsi: not valid JSON")
    # a path in params is not an option: dropped, the datastore image is read
    response = _post_wsi(
        srv, "json", {"location": [3800, 3800], "size": [600, 600], "params": {"image": "/etc/passwd"}}
    )
    assert response.status_code == 200, response.text[:500]


def test_wsi_tile_cap_answers_413(wsi_server):
    """More tissue tiles than --conf max_wsi_tiles: refused before any tile is read."""
    import torch

    from pathseqsam.label.requests.options import RequestTooLarge
    from pathseqsam.label.slides.wsi_job import WholeSlideJobs, wsi_settings
    from pathseqsam.modeling.resolution import attach_model_mpp

    jobs = WholeSlideJobs(wsi_settings(wsi_server.bundle, OVERRIDES), max_tiles=3)

    class Untouchable(torch.nn.Module):  # the cap refuses before any tile reaches a network
        image_size = 128

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            attach_model_mpp(self, 2.0)  # the working resolution a served network carries

        def forward(self, *args, **kwargs):
            raise AssertionError("no tile may be segmented")

    with pytest.raises(
        RequestTooLarge, match=r"slideW.tiff: \d+ tissue tiles of 256 um, more than the limit of 3 "
    ):
        jobs.run(Untouchable, "cpu", wsi_server.studies / "slideW.tiff", "slideW", {})
    assert jobs.status() == {"running": False} and not jobs.lock.locked()


def test_training_round_trip_on_a_slide_region_label(wsi_server):
    """Item 4: an ASAP XML label saved on a region of the slide fine-tunes the served model.

    Runs last in this module: it may publish new weights.
    """
    from tests.label.test_slide_patches import asap_xml, circle

    srv = wsi_server
    x0, y0, side = CENTRE - 700, CENTRE - 700, 1400  # level-0 px: 700 um, 350 px at 2 um/px
    polygons = [("Region", [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)])]
    polygons += [("glomerulus", circle(CENTRE, CENTRE, BORDER_RADIUS))]
    polygons += [("glomerulus", circle(CENTRE + dx, CENTRE + dy, r)) for dx, dy, r in OTHERS]
    for image in ("slideW", "slideV"):
        response = requests.put(
            f"{srv.url}/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": (f"{image}.xml", asap_xml(polygons).encode(), "application/xml")},
            timeout=60,
        )
        assert response.status_code == 200, response.text[:500]
        assert (srv.studies / "labels" / "final" / f"{image}.xml").is_file()

    params = {"max_epochs": 1, "val_split": 0.2, "device": "cpu"}
    response = requests.post(f"{srv.url}/train/pathseqsam", json=params, timeout=60)
    assert response.status_code == 200, response.text[:2000]
    deadline = time.monotonic() + 600
    while True:
        status = requests.get(f"{srv.url}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still running:\n{srv.log_tail()}"
        time.sleep(2.0)
    assert status["status"] == "DONE", f"{status}\n{srv.log_tail()}"
    log = srv.log_tail(3000)
    # 350 x 350 working px in 128-px patches: starts 0, 128, 222 per axis
    assert (
        "slideW.tiff: labelled region x 3396-4797, y 3396-4797 (level-0 px) -> 9 patches of 128 px at 2 um/px, 6 glomeruli"
        in log
    )
    # split by slide: the 9 patches of one slide train, the 9 of the other validate (never mixed)
    assert "2 labelled images (18 items): 9 items to train on, 9 held out for validation" in log
    record = json.loads((srv.bundle / "models" / ".monailabel_train" / "validation.json").read_text())
    assert [v["epoch"] for v in record["validations"]] == [0, 1]  # the served model judged first
    assert all(v["val_mean_dice"] is not None for v in record["validations"])
