"""Server settings: the bundle folder, config overrides, fallback slice spacing, install hint."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from pathseqsam.label import INSTALL_HINT
from pathseqsam.label.bundle import bundle_overrides, inference_setting, resolve_bundle_dir, z_spacing_setting

ROOT = Path(__file__).resolve().parents[2]


def test_default_bundle_is_the_repository_bundle(tmp_path):
    assert resolve_bundle_dir({}) == ROOT / "bundle"
    copy = tmp_path / "b"
    shutil.copytree(ROOT / "bundle" / "configs", copy / "configs")
    assert resolve_bundle_dir({"bundle": str(copy)}) == copy.resolve()
    (copy / "configs" / "train.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"b/configs/train.json not found \(bundle folder from --conf bundle"
    ):
        resolve_bundle_dir({"bundle": str(copy)})


def test_overrides_parse_json_values():
    conf = {
        "models": "pathseqsam",
        "bundle.image_size": "128",
        "bundle.amp": "false",
        "bundle.train#windows_per_case": "1",
        "bundle.model_name": "sam2.1_hiera_t",
        "bundle.roi": "[1, 2]",
    }
    assert bundle_overrides(conf) == {
        "image_size": 128,
        "amp": False,
        "train#windows_per_case": 1,
        "model_name": "sam2.1_hiera_t",
        "roi": [1, 2],
    }
    with pytest.raises(ValueError, match=r"expected bundle\.<config id>"):
        bundle_overrides({"bundle.": "3"})


def test_inference_setting_and_spacing():
    unit = json.loads((ROOT / "bundle" / "configs" / "inference.json").read_text())["distance_unit_um"]
    assert inference_setting(ROOT / "bundle", "distance_unit_um", {}) == unit
    assert inference_setting(ROOT / "bundle", "distance_unit_um", {"distance_unit_um": 2.5}) == 2.5
    with pytest.raises(KeyError, match=r"inference\.json has no 'nope'"):
        inference_setting(ROOT / "bundle", "nope", {})
    assert z_spacing_setting({}, unit) == unit
    assert z_spacing_setting({"z_spacing_um": "3.5"}, unit) == 3.5
    for bad in ("0", "-1", "abc", "nan"):
        with pytest.raises(ValueError, match=f"--conf z_spacing_um {bad}: expected a positive number"):
            z_spacing_setting({"z_spacing_um": bad}, unit)


@pytest.mark.parametrize(
    "module", ["pathseqsam.label.infer", "pathseqsam.label.train", "pathseqsam.label.server.wsi_route"]
)
def test_tasks_without_monailabel_say_how_to_install(monkeypatch, module):
    for name in [m for m in sys.modules if m == "monailabel" or m.startswith("monailabel.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "monailabel", None)  # import monailabel -> ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module(module)
    assert str(info.value) == INSTALL_HINT
    assert '-e ".[label]"' in INSTALL_HINT and "numpy below 2" in INSTALL_HINT
