"""The shareable bundle: ``python scripts/package_bundle.py --out DIR`` builds a zip whose configs run
with only the PyPI packages installed: unpacked in a temp folder and run in a Python whose import
path cannot see this repository's ``pathseqsam`` (no PYTHONPATH to it, no ``.pth`` / editable-install
hook: ``python -S`` with only site-packages), it trains for one short epoch and runs inference."""

from __future__ import annotations

import hashlib
import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "pathseqsam_glomerulus_segmentation"
SIZE = 64
TIMEOUT_S = 420

pytestmark = pytest.mark.slow


def _package(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_bundle.py"), "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _isolated_env() -> dict[str, str]:
    """Site-packages only: the repository (cwd, PYTHONPATH, editable-install hook) stays invisible."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(site.getsitepackages()))
    return env


# Runs `python -m monai.bundle <args>` for each argument list, then reports where pathseqsam came from.
DRIVER = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = ["monai.bundle", *argv]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
module = sys.modules.get("pathseqsam")
print("PATHSEQSAM_FILE=" + str(getattr(module, "__file__", None)))
"""


def _run_isolated(bundle: Path, *commands: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-S", "-c", DRIVER, json.dumps([[str(a) for a in c] for c in commands])],
        cwd=bundle,
        env=_isolated_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def _pathseqsam_file(output: str) -> Path:
    lines = [line for line in output.splitlines() if line.startswith("PATHSEQSAM_FILE=")]
    assert lines, output[-3000:]
    return Path(lines[-1].split("=", 1)[1]).resolve()


CONFIG_ARGS = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    proc = _package(dist)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(dist / f"{NAME}.zip") as zf:
        names = zf.namelist()
        assert all(n.startswith(f"{NAME}/") for n in names)  # the spec's archive layout
        target = tmp_path_factory.mktemp("unpacked")
        zf.extractall(target)
    return target / NAME


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from pathseqsam.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("pkg") / "data"
    generate_synthetic_dataset(
        out, cases=4, seed=0, image_size=SIZE, sections=3, contact_sheet=False, field_um=256.0
    )
    return out


def test_package_carries_the_repository_package_and_rewritten_configs(unpacked):
    files = {p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()}
    for required in ("LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt"):
        assert required in files
    assert not any(f.split("/")[0] in ("data", "models", "eval", "runs") for f in files)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)

    # scripts/pathseqsam is the repository's package, file for file (generated, not a second copy)
    # (its modules, less the MONAI Label app, which needs monailabel and no bundle config uses)
    source = {
        p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (ROOT / "pathseqsam").rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(ROOT / "pathseqsam").parts[0] != "label"
    }
    manifest = json.loads((unpacked / "scripts" / "pathseqsam_manifest.json").read_text())
    assert manifest["excluded_subpackages"] == ["label"]
    assert manifest["files"] == source
    bundled = {
        p.relative_to(unpacked / "scripts").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (unpacked / "scripts" / "pathseqsam").rglob("*")
        if p.is_file()
    }
    assert bundled == source

    # configs: only the import line and bundle_root differ from the repository's
    for name in ("train.json", "inference.json"):
        repo = json.loads((ROOT / "bundle" / "configs" / name).read_text())
        packed = json.loads((unpacked / "configs" / name).read_text())
        assert packed["imports"] == ["$import scripts", *repo["imports"]]
        assert packed["bundle_root"] == "$scripts.BUNDLE_ROOT"
        assert {k: v for k, v in packed.items() if k not in ("imports", "bundle_root")} == {
            k: v for k, v in repo.items() if k not in ("imports", "bundle_root")
        }
    for name in ("evaluate.json", "multi_gpu_train.json", "multi_gpu_evaluate.json", "metadata.json"):
        assert json.loads((unpacked / "configs" / name).read_text()) == json.loads(
            (ROOT / "bundle" / "configs" / name).read_text()
        )
    assert yaml.safe_load((unpacked / "large_files.yml").read_text()) == yaml.safe_load(
        (ROOT / "bundle" / "large_files.yml").read_text()
    )
    # the CPU-pretrained tiny SAM2 and its record travel with the bundle, byte for byte
    pretrained = [p for p in (ROOT / "bundle" / "pretrained").rglob("*") if p.is_file()]
    for path in pretrained:
        rel = path.relative_to(ROOT / "bundle")
        assert (unpacked / rel).read_bytes() == path.read_bytes(), rel


def test_pretrained_folder_is_copied(tmp_path):
    import importlib.util
    import shutil

    bundle = tmp_path / "bundle"
    for name in ("configs", "docs"):
        shutil.copytree(ROOT / "bundle" / name, bundle / name)
    shutil.copy2(ROOT / "bundle" / "LICENSE", bundle / "LICENSE")
    (bundle / "pretrained").mkdir()
    weights = os.urandom(2048)
    (bundle / "pretrained" / "tiny.pt").write_bytes(weights)
    (bundle / "pretrained" / "tiny.json").write_text('{"sha256": "x"}')
    spec = importlib.util.spec_from_file_location("package_bundle", ROOT / "scripts" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.package_bundle(tmp_path / "dist", bundle=bundle, make_zip=False)
    assert (out / "pretrained" / "tiny.pt").read_bytes() == weights
    assert (out / "pretrained" / "tiny.json").read_text() == '{"sha256": "x"}'


def test_packaged_bundle_trains_and_infers_without_the_repository(unpacked, dataset):
    # the isolated interpreter cannot import pathseqsam on its own ...
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import importlib.util as u; print(u.find_spec('pathseqsam'))"],
        cwd=unpacked,
        env=_isolated_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe.stdout + probe.stderr

    # ... so the bundle's own scripts/ is what these runs use
    train = [
        "run",
        "training",
        "--config_file",
        "configs/train.json",
        *CONFIG_ARGS,
        "--dataset_dir",
        dataset,
        "--image_size",
        SIZE,
        "--window",
        2,
        "--batch_size",
        1,
        "--train#windows_per_case",
        1,
        "--train#trainer#max_epochs",
        1,
    ]
    out = _run_isolated(unpacked, train)
    assert _pathseqsam_file(out) == (unpacked / "scripts" / "pathseqsam" / "__init__.py").resolve()
    assert (unpacked / "models" / "model.pt").is_file()  # bundle_root is the unpacked folder
    assert (unpacked / "models" / "checkpoint_epoch=1.pt").is_file()

    infer = ["run", "--config_file", "configs/inference.json", *CONFIG_ARGS, "--dataset_dir", dataset]
    infer += ["--image_size", SIZE]
    verify = ["verify_net_in_out", "--net_id", "network_def", "--config_file", "configs/inference.json"]
    verify += ["--meta_file", "configs/metadata.json", "--image_size", SIZE, "--n", 2]
    out = _run_isolated(unpacked, infer, verify)
    assert _pathseqsam_file(out) == (unpacked / "scripts" / "pathseqsam" / "__init__.py").resolve()
    assert "data shape of network is verified with no error" in out
    summary = json.loads((unpacked / "eval" / "inference" / "summary.json").read_text())
    datalist = json.loads((dataset / "datalist.json").read_text())
    for case in datalist["test"]:
        slices = summary["cases"][case["case"]]["slices"]
        assert len(slices) == len(case["image"])
        assert all((unpacked / "eval" / "inference" / s["mask"]).is_file() for s in slices)


def test_weights_are_shipped_with_a_verifiable_large_files_entry(tmp_path):
    from monai.apps import download_url
    from monai.apps.utils import HashCheckError

    weights = tmp_path / "trained.pt"
    weights.write_bytes(os.urandom(4096))
    url = weights.as_uri()  # a file:// URL stands in for the release URL
    proc = _package(tmp_path / "dist", "--weights", str(weights), "--weights-url", url, "--no-zip")
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "dist" / NAME
    assert not (tmp_path / "dist" / f"{NAME}.zip").exists()
    entries = {e["path"]: e for e in yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]}
    entry = entries["models/model.pt"]
    assert entry["url"] == url and entry["hash_type"] == "sha256"
    assert entry["hash_val"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (bundle / "models" / "model.pt").read_bytes() == weights.read_bytes()
    # the Zoo's download step (MONAI download_url with the entry's hash) accepts it ...
    download_url(
        entry["url"], filepath=tmp_path / "fetched.pt", hash_val=entry["hash_val"], hash_type="sha256"
    )
    assert (tmp_path / "fetched.pt").read_bytes() == weights.read_bytes()
    # ... and rejects a file that does not match it
    (tmp_path / "other.pt").write_bytes(b"not the weights")
    with pytest.raises(HashCheckError, match="sha256 hash check"):
        download_url(
            entry["url"], filepath=tmp_path / "other.pt", hash_val=entry["hash_val"], hash_type="sha256"
        )

    bad = _package(tmp_path / "dist2", "--weights-url", url)
    assert bad.returncode == 2 and "--weights-url needs --weights" in bad.stderr
    missing = _package(tmp_path / "dist3", "--weights", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and "nope.pt not found" in missing.stderr
