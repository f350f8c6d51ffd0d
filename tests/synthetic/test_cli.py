"""The generator's command line, and the deprecated ``pathseqsam.data.synthetic`` alias."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pathseqsam.synthetic import SYNTHETIC_META, Compartment
from pathseqsam.synthetic.tissue import N_COMPARTMENTS, TubeKind


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, check=False)


def test_python_m_pathseqsam_synthetic_writes_a_dataset(tmp_path: Path):
    out = tmp_path / "set"
    done = _run(
        "-m", "pathseqsam.synthetic", "--out", str(out), "--cases", "1", "--sections", "2",
        "--image-size", "64", "--no-stacks", "--no-contact-sheet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((out / SYNTHETIC_META).read_text())["seed"] == 0
    assert "moved" not in done.stderr


def test_old_module_path_still_works_and_says_it_moved(tmp_path: Path):
    done = _run("-m", "pathseqsam.data.synthetic", "--help")
    assert done.returncode == 0
    assert "pathseqsam.data.synthetic moved to pathseqsam.synthetic" in done.stderr
    assert "--out" in done.stdout
    bad = _run("-m", "pathseqsam.data.synthetic", "--out", str(tmp_path / "x"), "--cases", "0")
    assert bad.returncode == 2 and "moved" in bad.stderr  # the real CLI ran (and refused 0 cases)


def test_compartment_codes_are_an_enum_of_consecutive_codes():
    assert [int(c) for c in Compartment] == list(range(N_COMPARTMENTS))
    assert Compartment.GLASS == 0 and Compartment(9) is Compartment.CAPSULE
    assert TubeKind.ARTERIOLE == 3
