"""A real MONAI Label server whose weights or slide label are bad: answers that say why, not a bare 500.

The server (the launcher of ``test_server.py``, on 127.0.0.1) starts on a bundle whose
``models/model.pt`` was saved without ``model_mpp_um`` (as bundles before 0.5.0 saved it): every
``/infer`` (automatic, interactive, whole slide) and ``/train`` must answer 503 naming the file and
what is wrong, as must weights trained at another resolution and a removed file (MONAI Label alone
would serve the untrained network); once good weights replace the file the same server answers 200
(the check runs again when the file changes). Its datastore holds a pyramidal slide whose saved
label is an XML entity-expansion bomb, then a truncated XML file: ``/train`` must answer 400 naming
the label file and the parse error, and start no training.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.label

if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":
    pytest.importorskip("monailabel", reason="MONAI Label extra not installed (.venv-label, see README)")
import requests  # noqa: E402  (a MONAI Label dependency)

from tests.label.test_server import OVERRIDES, Server, _parts, launch, tiny_bundle  # noqa: E402

MODEL_MPP = 2.0  # inference.json's model_mpp_um
# the classic entity-expansion bomb: 10^9 copies of "lol" if an XML reader expanded it
BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol;" if i == 1 else f"&lol{i - 1};") * 10}">\n' for i in range(1, 10))
    + ']>\n<ASAP_Annotations><Annotations><Annotation PartOfGroup="&lol9;"/></Annotations></ASAP_Annotations>\n'
)


def _save_weights(bundle: Path, drop_mpp: bool = False, mpp: float | None = None) -> dict:
    """The seeded tiny weights ``tiny_bundle`` wrote, saved back without / with another ``model_mpp_um``.

    Written to a temporary file and renamed, as a training run publishes (the server sees a new file).
    """
    good = bundle / "models" / "good.pt"
    state = torch.load(good, weights_only=True)
    if drop_mpp:
        del state["model_mpp_um"]
    if mpp is not None:
        state["model_mpp_um"] = torch.tensor(mpp, dtype=torch.float64)
    tmp = bundle / "models" / "model.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, bundle / "models" / "model.pt")
    return state


@pytest.fixture(scope="module")
def stale_server(tmp_path_factory) -> Iterator[Server]:
    from PIL import Image

    from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("label_errors")
    studies = tmp / "studies"
    final = studies / "labels" / "final"
    final.mkdir(parents=True)
    Image.new("RGB", (96, 80), (200, 120, 180)).save(studies / "patchE.png")
    scene = make_slide_scene(1024, 1024, mpp_um=0.5, n_sections=1, n_glomeruli=3, seed=1)
    write_synthetic_slide(studies / "slideX.tiff", scene)
    (final / "slideX.xml").write_text(BOMB)
    bundle = tiny_bundle(tmp)
    shutil.copy(bundle / "models" / "model.pt", bundle / "models" / "good.pt")
    state = _save_weights(bundle, drop_mpp=True)
    assert "model_mpp_um" not in state and state  # a stale file: every weight, no working resolution
    conf = {
        "models": "pathseqsam",
        "bundle": str(bundle),
        "mpp_um": "2.0",
        **{f"bundle.{k}": json.dumps(v) for k, v in OVERRIDES.items()},
    }
    with launch(tmp, studies, bundle, conf) as srv:
        yield srv


def _detail(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text[:2000]
    return response.json()["detail"]


def _wsi(srv: Server) -> requests.Response:
    body = {"location": [0, 0], "size": [0, 0], "level": 0, "params": {"device": "cpu"}}
    return requests.post(
        f"{srv.url}/infer/wsi_v2/pathseqsam",
        params={"image": "slideX", "output": "json"},
        data={"wsi": json.dumps(body)},
        timeout=120,
    )


def test_weights_without_model_mpp_um_answer_503_naming_the_file(stale_server):
    srv = stale_server
    served = srv.bundle / "models" / "model.pt"
    expected = (
        f"{served} has no 'model_mpp_um': it was saved by a bundle before 0.5.0, whose training used the "
        f"wrong scale, so it cannot be served at this bundle's {MODEL_MPP:g} um/px; retrain it (the bundle's "
        "training command) or point --conf bundle at a bundle whose models/model.pt was trained by "
        "bundle 0.5.0 or later"
    )
    # said at start-up, before any request
    assert f"the served weights cannot be used: {expected}" in srv.log_tail(400)
    assert _detail(srv.post("/infer/pathseqsam", image="patchE", output="json"), 503) == expected
    clicks = {"foreground": [[40, 40]]}
    assert _detail(srv.post("/infer/pathseqsam_interactive", clicks, image="patchE"), 503) == expected
    assert _detail(_wsi(srv), 503) == expected
    # training would start from these weights: refused before a background process starts
    response = requests.post(
        f"{srv.url}/train/pathseqsam", json={"max_epochs": 1, "device": "cpu"}, timeout=60
    )
    assert _detail(response, 503) == expected
    assert requests.get(f"{srv.url}/train/", timeout=30).status_code == 404  # no training task
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200
    assert "Traceback" not in srv.log_tail(400)


def test_weights_of_another_resolution_answer_503_then_good_weights_serve(stale_server):
    srv = stale_server
    served = srv.bundle / "models" / "model.pt"
    _save_weights(srv.bundle, mpp=0.5)
    assert _detail(srv.post("/infer/pathseqsam", image="patchE", output="json"), 503) == (
        f"{served} was trained at model_mpp_um=0.5 um/px but the bundle's network works at 2 um/px; set "
        "--conf bundle.model_mpp_um 0.5, or serve weights trained at 2 um/px"
    )
    served.unlink()  # MONAI Label alone would serve the untrained network then
    assert _detail(srv.post("/infer/pathseqsam", image="patchE", output="json"), 503) == (
        f"{served} not found: train the bundle (its training command) or point --conf bundle at a bundle "
        "folder with models/model.pt"
    )
    # the file is checked again when it changes: the same server serves good weights at once
    _save_weights(srv.bundle)
    params, name, _ = _parts(srv.post("/infer/pathseqsam", image="patchE", output="all"))
    assert name.endswith(".png") and params["slices"] == 1 and params["mode"] == "automatic"


def test_slide_label_that_is_not_asap_xml_answers_400_naming_the_file(stale_server):
    srv = stale_server
    label = (srv.studies / "labels" / "final" / "slideX.xml").resolve()
    _save_weights(srv.bundle)  # good weights (whatever the test order)
    body = {"max_epochs": 1, "device": "cpu"}
    response = requests.post(f"{srv.url}/train/pathseqsam", json=body, timeout=60)
    assert _detail(response, 400) == (
        f"the label of slide slideX.tiff cannot be used for training: {label}: not an ASAP XML label "
        "(document type declaration <!DOCTYPE lolz>: ASAP labels have none, and DTDs and entity "
        "declarations are not read)"
    )
    truncated = '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations><Annotation PartOf'
    label.write_text(truncated)
    with pytest.raises(ET.ParseError) as parse_error:  # what expat says about it
        ET.fromstring(truncated)
    response = requests.post(
        f"{srv.url}/train/pathseqsam", params={"run_sync": "true"}, json=body, timeout=60
    )
    assert _detail(response, 400) == (
        f"the label of slide slideX.tiff cannot be used for training: {label}: not an ASAP XML label "
        f"({parse_error.value})"
    )
    assert requests.get(f"{srv.url}/train/", timeout=30).status_code == 404  # nothing was started
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200


def test_weights_check_names_missing_unexpected_and_misshaped_keys(stale_server, tmp_path):
    """The check in process, on the bundle's network: the keys of a file for another network."""
    from monai.bundle import ConfigParser

    from pathseqsam.label.infer import served_weights_problem

    parser = ConfigParser()
    parser.read_config(str(stale_server.bundle / "configs" / "inference.json"))
    for key, value in OVERRIDES.items():
        parser.set(value, key)
    net = parser.get_parsed_content("network_def")
    state = torch.load(stale_server.bundle / "models" / "good.pt", weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the state dict has no")  # no false warning for a good file
        assert served_weights_problem(net, stale_server.bundle / "models" / "good.pt") is None
    dropped = sorted(k for k in state if k != "model_mpp_um")[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(2)
    shaped = next(k for k, v in state.items() if v.ndim == 2)
    state[shaped] = torch.zeros(3, 3)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    problem = served_weights_problem(net, path)
    assert problem.startswith(f"{path} does not match this model")
    assert f"1 missing keys: {dropped}" in problem and "1 unexpected keys: extra.weight" in problem
    assert f"1 shape mismatches: {shaped}: checkpoint (3, 3) vs model" in problem
    assert problem.endswith(
        "retrain the bundle with its current configs, or serve the configs it was trained with"
    )

    # a network that records no resolution: a file that carries one does not load strictly
    plain = torch.nn.Linear(2, 2)
    torch.save(plain.state_dict(), path)
    assert served_weights_problem(plain, path) is None
    torch.save({**plain.state_dict(), "model_mpp_um": torch.tensor(2.0, dtype=torch.float64)}, path)
    assert (
        served_weights_problem(plain, path) == f"{path} has 'model_mpp_um' but the bundle's network has none"
    )
