"""A real MONAI Label server running the app: info, automatic and interactive inference, training.

The server (``monailabel start_server`` with ``pathseqsam/label/app``, started as the script does,
``python -m monailabel.main``, with this checkout first on PYTHONPATH) runs on 127.0.0.1 on a free
port, on generated serial sections (a NIfTI stack, an OME-TIFF stack and a 2D PNG patch, all
labelled, a labelled copy of the NIfTI stack whose file name is a config expression, and an
unlabelled 100-megapixel PNG) and a tiny-model checkpoint in a temporary copy of the bundle. Every
mask it returns is checked against the same network called directly in this process (both on CPU
in fp32; the server's CUDA path, with bf16 autocast, is not compared here). Issue 11's requests
(an expression as a training option, an ``image`` path in ``params``, an infinite ``slice``) get
the answers that issue asks for, and 200 fuzzed requests never get a 5xx.

Needs the ``label`` extra (``.venv-label``, see the README); the core environment skips this module.
With ``PATHSEQSAM_LABEL_TESTS=required`` (CI's label stage) a missing MONAI Label is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.bundle_paths import with_pretrained
from tests.reference import postprocess_reference

pytestmark = pytest.mark.label

if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":
    pytest.importorskip("monailabel", reason="MONAI Label extra not installed (.venv-label, see README)")
import requests  # noqa: E402  (a MONAI Label dependency)

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "pathseqsam" / "label" / "app"
SIZE = 128
STARTUP_S = 300
TRAIN_S = 600
OVERRIDES = {"image_size": SIZE, "window": 2, "train#windows_per_case": 1}
# evaluated by MONAI's ConfigParser if it ever reached it as a string: creates the file 'pwned'
EXPRESSION_NAME = "$open('pwned','w')"


@dataclass
class Server:
    url: str
    bundle: Path
    studies: Path
    log: Path
    process: subprocess.Popen

    def post(self, path: str, params: dict[str, Any] | None = None, **query: str) -> requests.Response:
        data = {"params": json.dumps({"device": "cpu", **(params or {})})}  # exact fp32 comparisons
        return requests.post(f"{self.url}{path}", params=query, data=data, timeout=300)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _network(bundle: Path):
    """The bundle's network_def (with the test's overrides) and current checkpoint, built here."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for key, value in OVERRIDES.items():
        parser.set(value, key)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval(), parser


def _tiny_checkpoint(bundle: Path) -> None:
    """Seeded tiny weights; the object-score head biased to 'object' (random heads blank every mask)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for key, value in OVERRIDES.items():
        parser.set(value, key)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    (bundle / "models").mkdir(parents=True)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")


def _studies(tmp: Path) -> Path:
    """seqA.nii.gz (NIfTI stack), seqB.ome.tif (OME-TIFF stack), patchC.png (2D, two sections side by side)."""
    import tifffile
    from PIL import Image

    from pathseqsam.synthetic import generate_synthetic_dataset

    data = tmp / "data"
    generate_synthetic_dataset(
        data, cases=3, seed=0, image_size=SIZE, sections=4, contact_sheet=False, field_um=256.0
    )
    stacks = data / "stacks"
    studies, final = tmp / "studies", tmp / "studies" / "labels" / "final"
    final.mkdir(parents=True)
    shutil.copy(stacks / "70_101_image.nii.gz", studies / "seqA.nii.gz")
    shutil.copy(stacks / "70_101_mask.nii.gz", final / "seqA.nii.gz")
    shutil.copy(stacks / "70-102_image.ome.tif", studies / "seqB.ome.tif")
    shutil.copy(stacks / "70-102_mask.ome.tif", final / "seqB.ome.tif")
    rgb = tifffile.imread(stacks / "70-103_image.ome.tif")  # [N, H, W, 3]
    mask = tifffile.imread(stacks / "70-103_mask.ome.tif")
    Image.fromarray(np.concatenate([rgb[0], rgb[1]], axis=1)).save(studies / "patchC.png")
    Image.fromarray((np.concatenate([mask[0], mask[1]], axis=1) > 0).astype(np.uint8)).save(
        final / "patchC.png"
    )
    # A labelled stack whose file name is a config expression: a case name the parser must never see.
    shutil.copy(stacks / "70_101_image.nii.gz", studies / f"{EXPRESSION_NAME}.nii.gz")
    shutil.copy(stacks / "70_101_mask.nii.gz", final / f"{EXPRESSION_NAME}.nii.gz")
    # 10,001 x 10,001 px of zeros: a small file over the 100-megapixel request budget
    Image.new("L", (10_001, 10_001)).save(studies / "huge.png", optimize=False, compress_level=1)
    return studies


@contextmanager
def launch(tmp: Path, studies: Path, bundle: Path, conf: dict[str, str]) -> Iterator[Server]:
    """A MONAI Label server on 127.0.0.1 serving the app with ``--conf`` ``conf``; stopped on exit."""
    port = _free_port()
    # What the `monailabel` script execs, minus the script's PYTHONPATH=<the venv's parent folder>,
    # which would import the package of whichever checkout holds the venv instead of this one.
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP)]
    cmd += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        cmd += ["--conf", key, value]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        # background tasks (training) start this interpreter again, as in an activated venv
        "MONAILABEL_PYEXE": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    log = tmp / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    srv = Server(f"http://127.0.0.1:{port}", bundle, studies, log, process)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"monailabel exited with {process.returncode} while starting:\n{srv.log_tail()}")
            try:
                if requests.get(f"{srv.url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /info/ answer within {STARTUP_S} s:\n{srv.log_tail()}")
            time.sleep(1.0)
        yield srv
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def tiny_bundle(tmp: Path) -> Path:
    """A copy of the bundle's configs with the seeded tiny checkpoint."""
    bundle = tmp / "bundle"
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    with_pretrained(bundle)  # train.json's default SAM2 checkpoint, as in the real bundle folder
    _tiny_checkpoint(bundle)
    return bundle


def demo_bundle_conf(tmp: Path, checkpoint: Path, **conf: str) -> tuple[Path, dict[str, str]]:
    """A copy of the bundle's configs with a trained demo ``checkpoint``, and the server's ``--conf``.

    Returns:
        ``(bundle folder, conf)``: ``models`` and ``bundle`` set, the test overrides as ``bundle.<id>``
        (JSON values), then ``conf``.
    """
    bundle = tmp / "bundle"
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    with_pretrained(bundle)
    (bundle / "models").mkdir()
    shutil.copy(checkpoint, bundle / "models" / "model.pt")
    settings = {"models": "pathseqsam", "bundle": str(bundle), **conf}
    settings.update({f"bundle.{k}": json.dumps(v) for k, v in OVERRIDES.items()})
    return bundle, settings


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("label_server")
    studies = _studies(tmp)
    bundle = tiny_bundle(tmp)
    conf = {
        "models": "pathseqsam",
        "bundle": str(bundle),
        "mpp_um": "2.0",  # patchC.png carries no pixel size: 256 um over 128 px, as the stacks
        **{f"bundle.{k}": json.dumps(v) for k, v in OVERRIDES.items()},
    }
    with launch(tmp, studies, bundle, conf) as srv:
        yield srv


def _parts(response: requests.Response) -> tuple[dict[str, Any], str, bytes]:
    """(params JSON, file name, file bytes) of an ``output=all`` multipart answer."""
    assert response.status_code == 200, response.text[:2000]
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    params, name, payload = None, None, None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "params":
            params = json.loads(part.get_payload(decode=True))
        else:
            name, payload = part.get_filename(), part.get_payload(decode=True)
    assert params is not None and name is not None, response.headers
    return params, name, payload


def _read_mask(name: str, payload: bytes, tmp: Path) -> np.ndarray:
    """The returned mask as ``[N, H, W]`` (rows = y), whatever its format."""
    import nibabel as nib
    import tifffile
    from PIL import Image

    path = tmp / name
    path.write_bytes(payload)
    if name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    if name.endswith(".png"):
        return np.asarray(Image.open(path))[None]
    arr = tifffile.imread(path)
    return arr if arr.ndim == 3 else arr[None]


def _sequence(
    path: Path, region: tuple[int, int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``[1, 3, N, H, W]`` and positions ``[1, N, D]`` read with the data package."""
    from pathseqsam.data.transforms import LoadSequenced, NormalizeSAM2d

    value = str(path) if path.name.endswith((".nii.gz", ".tif")) else [str(path)]
    data = NormalizeSAM2d("image")(LoadSequenced(["image"])({"image": value}))
    image = data["image"]
    if region is not None:
        x, y, w, h = region
        image = image[..., y : y + h, x : x + w]
    return image[None], data["positions"][None]


def _expected_automatic(srv: Server, path: Path) -> np.ndarray:
    net, parser = _network(srv.bundle)
    images, positions = _sequence(path)
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(images, net, positions=positions)
    return _postprocessed(logits)


def _expected_interactive(srv: Server, images, positions, slice_: int, prompts: dict) -> np.ndarray:
    """Forward from the prompted slice, backward (reversed slices) before it: the issue's recipe."""
    net, _ = _network(srv.bundle)
    n = images.shape[2]
    with torch.no_grad():
        fwd = net(
            images[:, :, slice_:],
            positions=positions[:, slice_:],
            prompts={k: v[:, slice_:] for k, v in prompts.items()},
        )
        back = list(range(slice_, -1, -1))
        bwd = net(
            images[:, :, back],
            positions=positions[:, back],
            prompts={k: v[:, back] for k, v in prompts.items()},
        )
    logits = torch.cat([bwd[:, :, 1:].flip(2), fwd], dim=2)
    assert logits.shape[2] == n
    return _postprocessed(logits)


def _postprocessed(logits: torch.Tensor) -> np.ndarray:
    return postprocess_reference(torch.sigmoid(logits)[0, 0].numpy(), SIZE)


def _assert_same_mask(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert set(np.unique(got).tolist()) <= {0, 1}
    assert ((got > 0) != expected).mean() < 1e-3


def test_info_lists_models_trainer_and_datastore(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    auto, interactive = info["models"]["pathseqsam"], info["models"]["pathseqsam_interactive"]
    assert auto["type"] == "segmentation" and interactive["type"] == "deepgrow"
    assert auto["labels"] == interactive["labels"] == {"glomerulus": 1}
    assert auto["dimension"] == 3 and auto["pathology"] is True
    assert "pathseqsam" in info["trainers"]
    assert info["labels"] == {"glomerulus": 1}
    assert info["datastore"]["total"] == 5 and info["datastore"]["completed"] == 4
    # the options clients are shown are the whitelist the server enforces
    trainer = info["trainers"]["pathseqsam"]
    assert set(trainer["config"]) == {"max_epochs", "val_split", "device"}
    assert trainer["request_options"]["max_epochs"] == {
        "type": "int",
        "default": 40,
        "min": 1,
        "max": 1000,
        "help": "epochs to train",
    }
    assert trainer["request_options"]["val_split"]["exclusive_max"] == 1.0
    assert "cpu" in trainer["request_options"]["device"]["choices"]
    assert set(auto["config"]) == {"device"} and auto["max_pixels"] == 100_000_000
    assert set(interactive["request_options"]) == {
        "device",
        "location",
        "size",
        "level",
        "tile_size",
        "foreground",
        "background",
        "roi",
        "slice",
    }


def test_automatic_nifti_stack_matches_the_bundle(server, tmp_path):
    params, name, payload = _parts(server.post("/infer/pathseqsam", image="seqA", output="all"))
    assert name.endswith(".nii.gz")
    got = _read_mask(name, payload, tmp_path)
    expected = _expected_automatic(server, server.studies / "seqA.nii.gz")
    assert got.shape == (4, SIZE, SIZE)
    _assert_same_mask(got, expected)
    assert 0 < got.mean() < 1  # non-empty (and not everything)
    assert params["mode"] == "automatic" and params["slices"] == 4 and params["prompted_slices"] == []
    np.testing.assert_allclose(params["foreground_fraction"], expected.mean(axis=(1, 2)), atol=1e-3)
    assert params["label_names"] == {"glomerulus": 1}


def test_clicks_on_a_tiff_slice_propagate_both_ways(server, tmp_path):
    path = server.studies / "seqB.ome.tif"
    request = {"foreground": [[64, 60, 2]], "background": [[10, 12, 2]]}
    params, name, payload = _parts(
        server.post("/infer/pathseqsam_interactive", request, image="seqB", output="all")
    )
    assert name.endswith(".ome.tif") and params["mode"] == "interactive" and params["prompted_slices"] == [2]
    got = _read_mask(name, payload, tmp_path)

    images, positions = _sequence(path)
    coords = torch.zeros(1, 4, 2, 2)
    labels = torch.full((1, 4, 2), -1)
    coords[0, 2] = torch.tensor([[64.0, 60.0], [10.0, 12.0]])
    labels[0, 2] = torch.tensor([1, 0])
    expected = _expected_interactive(
        server, images, positions, 2, {"point_coords": coords, "point_labels": labels}
    )
    _assert_same_mask(got, expected)
    assert got.sum() > 0

    _, auto_name, auto_payload = _parts(server.post("/infer/pathseqsam", image="seqB", output="all"))
    auto = _read_mask(auto_name, auto_payload, tmp_path)
    changed = [(got[t] != auto[t]).mean() for t in range(4)]
    assert changed[2] > 0.01  # the clicks changed their slice
    assert max(changed[0], changed[1]) > 0  # ... and, propagated backwards, earlier slices


def test_box_in_a_region_of_a_2d_patch(server, tmp_path):
    """Pathology convention: location/size address a region; the box is in whole-image pixels."""
    request = {"location": [SIZE, 0], "size": [SIZE, SIZE], "roi": [SIZE + 20, 16, SIZE + 100, 96]}
    params, name, payload = _parts(
        server.post("/infer/pathseqsam_interactive", request, image="patchC", output="all")
    )
    assert name.endswith(".png")
    assert params["location"] == [SIZE, 0] and params["size"] == [SIZE, SIZE] and params["slices"] == 1
    got = _read_mask(name, payload, tmp_path)
    images, positions = _sequence(server.studies / "patchC.png", region=(SIZE, 0, SIZE, SIZE))
    boxes = torch.tensor([[[20.0, 16.0, 100.0, 96.0]]])
    expected = _expected_interactive(server, images, positions, 0, {"boxes": boxes})
    _assert_same_mask(got, expected)
    assert got.sum() > 0


def test_interactive_request_without_prompts_is_refused(server):
    response = server.post("/infer/pathseqsam_interactive", {}, image="seqA", output="json")
    assert response.status_code == 400
    assert (
        "needs at least one click ('foreground'/'background') or a box ('roi')" in response.json()["detail"]
    )
    response = server.post("/infer/pathseqsam_interactive", {"foreground": [[500, 5, 0]]}, image="seqA")
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "request 'foreground'[0] = [500, 5, 0]: click lies outside the 128x128 px image"
    )


def _post_raw(srv: Server, path: str, params: str, **query: str) -> requests.Response:
    """A request whose ``params`` form field is sent exactly as given (malformed JSON included)."""
    return requests.post(f"{srv.url}{path}", params=query, data={"params": params}, timeout=120)


# -- the three requests of issue 11's table: what must happen ---------------------------------------


def test_train_option_holding_an_expression_is_refused_and_never_run(server, tmp_path):
    marker = tmp_path / "x"
    body = {"max_epochs": f'$__import__("pathlib").Path("{marker}").touch() or 1'}
    response = requests.post(
        f"{server.url}/train/pathseqsam", params={"run_sync": "true"}, json=body, timeout=120
    )
    assert response.status_code == 400, response.text[:2000]
    detail = response.json()["detail"]
    assert detail.startswith("request 'max_epochs' = '$__import__")
    assert detail.endswith("expected an integer (1 <= max_epochs <= 1000)")
    assert not marker.exists()


def test_infer_params_image_path_is_ignored_only_the_datastore_image_is_read(server, tmp_path):
    from PIL import Image

    other = tmp_path / "other.png"
    Image.new("RGB", (96, 80), (200, 120, 180)).save(other)
    params, name, payload = _parts(
        server.post("/infer/pathseqsam", {"image": str(other)}, image="seqB", output="all")
    )
    assert name.endswith(".ome.tif") and params["slices"] == 4  # seqB (a 4-slice stack), not other.png
    assert _read_mask(name, payload, tmp_path).shape == (4, SIZE, SIZE)
    assert "ignoring keys that are not options of this task: ['image']" in server.log_tail(400)
    # and an image id that is a path is refused outright
    response = server.post("/infer/pathseqsam", image=str(other))
    assert response.status_code == 404
    assert "is not an image id of the datastore" in response.json()["detail"]


def test_infinite_slice_answers_400_with_the_reason(server):
    params = '{"foreground": [[64, 60, 1]], "slice": 1e999, "device": "cpu"}'
    response = _post_raw(server, "/infer/pathseqsam_interactive", params, image="seqB")
    assert response.status_code == 400, response.text[:2000]
    assert response.json()["detail"] == (
        "request 'slice' = inf: expected an integer (0 <= slice <= 1e+06) (finite)"
    )


# -- limits and refusals -------------------------------------------------------------------------


def test_image_over_the_pixel_budget_is_refused_from_its_header(server):
    response = server.post("/infer/pathseqsam", image="huge")
    assert response.status_code == 413, response.text[:2000]
    assert response.json()["detail"] == (
        "huge.png: 100.0 megapixels (slices x height x width), more than the server's limit of 100 "
        "per request (--conf max_megapixels)"
    )


def test_internal_fields_and_uploads_are_not_accepted(server, tmp_path):
    # repeated slice indices, invented positions and flags are dropped: the whole stack, once
    params, name, payload = _parts(
        server.post(
            "/infer/pathseqsam",
            {"slice_index": [0] * 5000, "positions_um": [[1e9]], "degraded": [1]},
            image="seqA",
            output="all",
        )
    )
    assert params["slices"] == 4
    _assert_same_mask(
        _read_mask(name, payload, tmp_path), _expected_automatic(server, server.studies / "seqA.nii.gz")
    )
    upload = requests.post(
        f"{server.url}/infer/pathseqsam",
        files={"file": ("x.png", b"not an image", "image/png")},
        data={"params": "{}"},
        timeout=60,
    )
    assert upload.status_code == 400 and "uploaded files" in upload.json()["detail"]
    assert server.post("/infer/nomodel", image="seqA").status_code == 404
    bad_json = _post_raw(server, "/infer/pathseqsam", "{not json", image="seqA")
    assert bad_json.status_code == 400 and bad_json.json()["detail"].startswith("params: not valid JSON")
    listed = _post_raw(server, "/infer/pathseqsam", "[1, 2]", image="seqA")
    assert listed.status_code == 400
    assert listed.json()["detail"] == "infer pathseqsam params: expected a JSON object of options, got list"
    clicks = {"foreground": [[1, 1, 0]] * 300}
    too_many = server.post("/infer/pathseqsam_interactive", clicks, image="seqA")
    assert too_many.status_code == 400
    assert "300 clicks, more than the 256 a request may hold" in too_many.json()["detail"]


FUZZ_VALUES = {
    "wrong type": ["ten", True, {"a": 1}, None, [], "cpu; rm -rf /"],
    "huge number": [1e308, -1e308, 10**30, 2**63, 1e999],
    "nan": [float("nan"), "NaN"],
    "negative size": [-1, -(10**9), [-5, -5], [0, -1]],
    "nested list": [[[1, 2]], [[[64, 60, 1]]], [[1, [2, 3]]], [[[[[]]]]]],
    "path string": [
        "/etc/passwd",
        "../../../../etc/passwd",
        "$__import__('os').getcwd()",
        "@network",
        "%train.json#x",
    ],
}
FUZZ_KEYS = {
    "infer": ["foreground", "background", "roi", "slice", "location", "size", "level", "device", "image"],
    "train": ["max_epochs", "val_split", "device", "pretrained", "model_filename", "run_id", "gpus"],
    "unknown key": ["slice_index", "positions_um", "degraded", "label_tag", "save_label", "zzz", "__class__"],
}


def test_fuzzed_requests_never_answer_5xx(server):
    """>= 200 generated malformed requests: every answer 2xx/4xx, and /info/ still answers after."""
    import random

    rng = random.Random(11)
    rows: dict[tuple[str, str], dict[int, int]] = {}

    def send(category: str, target: str, params: Any) -> None:
        if target == "train":
            # run_sync: a request that passes the checks would train here; none of these may
            response = requests.post(
                f"{server.url}/train/pathseqsam",
                params={"run_sync": "true"},
                data=json.dumps(params),  # NaN and Infinity as Python's json writes them
                headers={"Content-Type": "application/json"},
                timeout=120,
            )
        else:
            model = rng.choice(["pathseqsam", "pathseqsam_interactive"])
            image = rng.choice(["seqA", "seqB", "patchC"])
            text = params if isinstance(params, str) else json.dumps({"device": "cpu", **params})
            response = _post_raw(server, f"/infer/{model}", text, image=image, output="json")
        code = response.status_code
        assert code < 500, (
            f"{category} {target} {params!r} -> {code}: {response.text[:500]}\n{server.log_tail()}"
        )
        counts = rows.setdefault((category, target), {})
        counts[code] = counts.get(code, 0) + 1

    for category, values in FUZZ_VALUES.items():
        for target in ("infer", "train"):
            for key in FUZZ_KEYS[target]:
                body = {key: rng.choice(values)}
                if target == "train":  # one surely wrong option too: a body that passed would train
                    body.setdefault("val_split", 2.0) if key != "val_split" else body.update(max_epochs=0)
                send(category, target, body)
    for key in FUZZ_KEYS["unknown key"]:
        send("unknown key", "infer", {key: rng.choice([[0] * 50, "x", 1e999, {"a": [1]}])})
        send("unknown key", "train", {key: "x", "max_epochs": 0})  # refused on max_epochs
    raw = [
        "",
        "{",
        "null",
        "[1, 2]",
        "3",
        '"str"',
        '{"slice": NaN}',
        '{"roi": Infinity}',
        "{" * 50 + "}" * 50,
    ]
    for text in raw:
        send("malformed JSON", "infer", text)
    while sum(sum(c.values()) for c in rows.values()) < 200:
        values = rng.choice(list(FUZZ_VALUES.values()))
        keys = rng.sample(FUZZ_KEYS["infer"], 3)
        send("mixed", "infer", {k: rng.choice(values) for k in keys})

    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
    total = sum(sum(c.values()) for c in rows.values())
    assert total >= 200
    lines = ["| category | endpoint | requests | answers |", "|---|---|---|---|"]
    for (category, target), counts in sorted(rows.items()):
        answers = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))
        lines.append(f"| {category} | {target} | {sum(counts.values())} | {answers} |")
    lines.append(f"| all | | {total} | 5xx: 0 |")
    table = os.environ.get("PATHSEQSAM_FUZZ_TABLE")
    if table:
        Path(table).write_text("\n".join(lines) + "\n")


def test_training_keeps_the_served_model_unless_a_held_out_score_improves(server, tmp_path):
    before = torch.load(server.bundle / "models" / "model.pt", weights_only=True)
    served_mtime = (server.bundle / "models" / "model.pt").stat().st_mtime_ns
    params = {"max_epochs": 1, "val_split": 0.34, "multi_gpu": False, "device": "cpu"}
    response = requests.post(f"{server.url}/train/pathseqsam", json=params, timeout=60)  # a JSON body here
    assert response.status_code == 200, response.text[:2000]
    deadline = time.monotonic() + TRAIN_S
    while True:
        status = requests.get(f"{server.url}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still running after {TRAIN_S} s:\n{server.log_tail()}"
        time.sleep(2.0)
    assert status["status"] == "DONE", f"{status}\n{server.log_tail()}"
    # the datastore file named like a config expression was data, never code
    assert not list(server.log.parent.rglob("pwned"))
    log = server.log_tail(2000)
    assert "4 labelled images (4 items): 3 items to train on, 1 held out for validation" in log

    staging = server.bundle / "models" / ".monailabel_train"
    assert (staging / "checkpoint_epoch=1.pt").is_file()
    record = json.loads((staging / "validation.json").read_text())
    assert [v["epoch"] for v in record["validations"]] == [0, 1]  # the served model first, then epoch 1
    rows = (server.bundle / "eval" / "curves.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")
    assert float(rows[1].split(",")[2]) == pytest.approx(record["validations"][1]["val_mean_dice"])

    after = torch.load(server.bundle / "models" / "model.pt", weights_only=True)
    assert set(after) == set(before)
    epoch1 = record["validations"][1]["val_mean_dice"]
    published = epoch1 is not None and epoch1 > record["baseline"]
    if published:  # improved: epoch 1's weights are served
        trained = torch.load(staging / "checkpoint_epoch=1.pt", weights_only=True)["model"]
        assert all(torch.equal(after[k], trained[k]) for k in after)
        assert "published the model of epoch 1" in log
    else:  # not better on the held-out image: the served file was not touched
        assert (server.bundle / "models" / "model.pt").stat().st_mtime_ns == served_mtime
        assert all(torch.equal(before[k], after[k]) for k in before)
        staged = torch.load(staging / "model.pt", weights_only=True)  # the best of the run: the baseline
        assert all(torch.equal(before[k], staged[k]) for k in before)
        assert "kept the served model" in log

    # the server answers with the served checkpoint
    _, name, payload = _parts(server.post("/infer/pathseqsam", image="seqA", output="all"))
    served_masks = _expected_automatic(server, server.studies / "seqA.nii.gz")
    _assert_same_mask(_read_mask(name, payload, tmp_path), served_masks)
    if published:
        return  # the answer above already came from the newly published weights
    # publish epoch 1 the way publish_if_improved does (os.replace): the server reloads it
    from pathseqsam.label.publish import publish_if_improved

    trained = torch.load(staging / "checkpoint_epoch=1.pt", weights_only=True)["model"]
    assert any(not torch.equal(after[k], trained[k]) for k in after)
    torch.save(trained, staging / "model.pt")
    record["best_epoch"] = 1  # as if epoch 1 had won
    (staging / "validation.json").write_text(json.dumps(record))
    assert publish_if_improved(staging, server.bundle / "models" / "model.pt")["published"] is True
    _, name, payload = _parts(server.post("/infer/pathseqsam", image="seqA", output="all"))
    expected = _expected_automatic(server, server.studies / "seqA.nii.gz")  # from the published file
    assert (expected != served_masks).mean() > 0.01  # the two models segment differently
    _assert_same_mask(_read_mask(name, payload, tmp_path), expected)
