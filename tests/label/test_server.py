"""A real MONAI Label server running the app: info, automatic and interactive inference, training.

The server (``monailabel start_server`` with ``pathseqsam/label/app``) runs on 127.0.0.1 on a free
port, on generated serial sections (a NIfTI stack, an OME-TIFF stack and a 2D PNG patch, all
labelled) and a tiny-model checkpoint in a temporary copy of the bundle. Every mask it returns is
checked against the same network called directly in this process (both on CPU in fp32; the
server's CUDA path, with bf16 autocast, is not compared here).

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
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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
    return studies


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("label_server")
    studies = _studies(tmp)
    bundle = tmp / "bundle"
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    _tiny_checkpoint(bundle)
    port = _free_port()
    conf = {
        "models": "pathseqsam",
        "bundle": str(bundle),
        "mpp_um": "2.0",  # patchC.png carries no pixel size: 256 um over 128 px, as the stacks
        **{f"bundle.{k}": json.dumps(v) for k, v in OVERRIDES.items()},
    }
    cmd = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(APP)]
    cmd += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        cmd += ["--conf", key, value]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        # the monailabel script runs `python -m monailabel.main`: this interpreter, as in an activated venv
        "MONAILABEL_PYEXE": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
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
    assert info["datastore"]["total"] == 3 and info["datastore"]["completed"] == 3


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


def test_training_on_datastore_labels_updates_the_served_model(server, tmp_path):
    before = torch.load(server.bundle / "models" / "model.pt", weights_only=True)
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

    models = server.bundle / "models"
    assert (models / "checkpoint_epoch=1.pt").is_file()
    after = torch.load(models / "model.pt", weights_only=True)
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # fine-tuned, then saved as best
    rows = (server.bundle / "eval" / "curves.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")

    # the server reloads the new weights: its answer matches the trained checkpoint
    _, name, payload = _parts(server.post("/infer/pathseqsam", image="seqA", output="all"))
    _assert_same_mask(
        _read_mask(name, payload, tmp_path), _expected_automatic(server, server.studies / "seqA.nii.gz")
    )
