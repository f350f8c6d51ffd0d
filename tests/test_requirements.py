"""Dependency floors that carry a security meaning (read from pyproject.toml, not from the installed set)."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name: r for r in reqs}


def test_torch_floor_gives_the_weights_only_torch_load():
    """torch.load defaults to weights_only=True from 2.6 on; monailabel calls it without the flag."""
    spec = _requirements()["torch"].specifier
    assert not spec.contains(Version("2.5.1")), spec
    assert not spec.contains(Version("2.5.99")), spec
    assert spec.contains(Version("2.6.0")) and spec.contains(Version("2.14.1")), spec


def test_torchvision_floor_matches_torch():
    """torchvision 0.21 is the release built against torch 2.6."""
    spec = _requirements()["torchvision"].specifier
    assert not spec.contains(Version("0.20.1")) and spec.contains(Version("0.21.0")), spec
