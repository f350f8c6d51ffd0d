"""One entry point patches MONAI Label's server, behind one version check.

Needs the ``label`` extra (the patches import MONAI Label's endpoint modules).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":
    pytest.importorskip("monailabel", reason="MONAI Label extra not installed (.venv-label, see README)")


def test_only_the_supported_release_series_is_accepted():
    from pathseqsam.label.server.patches import SUPPORTED_MONAILABEL, check_monailabel_version

    assert SUPPORTED_MONAILABEL == "0.8"
    for ok in ("0.8.5", "0.8.9", "0.8.5+12.gabcdef", "0.8"):
        assert check_monailabel_version(ok) == ok
    for bad in ("0.9.0", "0.7.2", "1.8.5", "0.80.1"):
        with pytest.raises(RuntimeError) as info:
            check_monailabel_version(bad)
        assert str(info.value) == (
            f"MONAI Label {bad} is installed, but the PathSeqSAM app patches MONAI Label's server internals "
            "written for 0.8.x (request checks, whole-slide routes) and refuses to serve without them: "
            "install the label extra's version (pip install 'monailabel>=0.8.5,<0.9')"
        )


def test_install_checks_the_version_before_patching_anything(monkeypatch):
    import monailabel
    import monailabel.endpoints.infer as infer_endpoint
    import monailabel.endpoints.train as train_endpoint

    from pathseqsam.label.server import patches

    originals = {
        "run_inference": infer_endpoint.run_inference,
        "run_model": train_endpoint.run_model,
        "run": train_endpoint.run,
    }
    monkeypatch.setattr(infer_endpoint, "run_inference", originals["run_inference"])
    monkeypatch.setattr(train_endpoint, "run_model", originals["run_model"])
    monkeypatch.setattr(train_endpoint, "run", originals["run"])

    monkeypatch.setattr(monailabel, "__version__", "0.9.1")
    with pytest.raises(RuntimeError, match=r"MONAI Label 0\.9\.1 is installed"):
        patches.install()
    assert infer_endpoint.run_inference is originals["run_inference"]  # nothing was wrapped

    monkeypatch.setattr(monailabel, "__version__", "0.8.5")
    monkeypatch.delitem(__import__("sys").modules, "monailabel.app", raising=False)
    assert patches.install() is False  # no server in this process: routes untouched
    wrapped = [infer_endpoint.run_inference, train_endpoint.run_model, train_endpoint.run]
    assert all(getattr(f, "__pathseqsam_guard__", False) for f in wrapped)
    assert [f.__wrapped__ for f in wrapped] == list(originals.values())
    assert patches.install() is False  # idempotent: not wrapped twice
    assert [infer_endpoint.run_inference, train_endpoint.run_model, train_endpoint.run] == wrapped


def test_install_replaces_the_whole_slide_routes_of_a_server(monkeypatch):
    import monailabel.endpoints.infer as infer_endpoint
    import monailabel.endpoints.train as train_endpoint
    from fastapi import FastAPI
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient
    from monailabel.config import settings
    from monailabel.endpoints import wsi_infer

    from pathseqsam.label.server import patches, wsi_route

    # MONAI Label's module-level router and endpoint functions are restored after the test
    monkeypatch.setattr(wsi_infer.router, "routes", list(wsi_infer.router.routes))
    for module, name in (
        (infer_endpoint, "run_inference"),
        (train_endpoint, "run_model"),
        (train_endpoint, "run"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))
    server = FastAPI()
    server.include_router(wsi_infer.router, prefix=settings.MONAI_LABEL_API_STR)
    assert patches.install(server) is True
    assert patches.install(server) is True  # idempotent
    endpoints = [r.endpoint for r in wsi_infer.router.routes if isinstance(r, APIRoute)]
    assert endpoints.count(wsi_route.wsi_v2) == 1 and endpoints.count(wsi_route.wsi_v1) == 1
    # the server dispatches to the PathSeqSAM handler: it refuses sessions before any app code runs
    client = TestClient(server)
    response = client.post(
        f"{settings.MONAI_LABEL_API_STR}/infer/wsi_v2/pathseqsam", params={"image": "x", "session_id": "s"}
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("uploaded files and sessions are not read by this server")
