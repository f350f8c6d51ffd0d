"""The README's own-data command: a folder of PNGs and a multi-page TIFF, no datalist, one command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from tests.bundle_paths import CONFIGS, LOGGING, META, ROOT


def _run_inference(root: Path, dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(CONFIGS / "inference.json"), "--meta_file", META, "--logging_file", LOGGING,
        "--dataset_dir", str(dataset), "--output_dir", str(out), "--bundle_root", str(root), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _user_folder(data: Path, folder: Path) -> list[np.ndarray]:
    """Three demo validation sections as PNGs (a sub-folder, 2 um/px), the same three at 1 um/px in
    a multi-page TIFF with resolution tags, two single patches of one name, and files to skip."""
    sections = sorted((data / "Task1_patch_level" / "validation").glob("*/*/img/*.jpg"))[:3]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sections]
    (folder / "serial").mkdir(parents=True)
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / "serial" / f"section{k + 1}.png")
    Image.fromarray(images[0]).save(folder / "patch.png")
    Image.fromarray(images[1]).save(folder / "patch.jpg", quality=95)
    dense = np.stack([np.asarray(Image.fromarray(i).resize((256, 256), Image.LANCZOS)) for i in images])
    tifffile.imwrite(
        folder / "dense.tif", dense, photometric="rgb", resolution=(1e4, 1e4), resolutionunit="CENTIMETER"
    )
    with tifffile.TiffWriter(folder / "slide.tif") as tif:
        for step in (1, 2, 4):
            tif.write(dense[0, ::step, ::step], photometric="rgb")
    (folder / "notes.txt").write_text("not an image")
    return images


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_own_folder_of_pngs_and_a_multipage_tiff(demo_checkpoint, tmp_path):
    root, data = demo_checkpoint
    folder, out = tmp_path / "my images", tmp_path / "out"
    _user_folder(data, folder)

    refused = _run_inference(root, folder, tmp_path / "refused")
    assert refused.returncode != 0
    assert "have no pixel size" in refused.stderr and "--mpp_um <um per px>" in refused.stderr

    proc = _run_inference(root, folder, out, "--mpp_um", "2.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_mpp_um"] == 2.0
    assert sorted(summary["cases"]) == ["dense", "patch_jpg", "patch_png", "serial"]
    skipped = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"notes.txt", "slide.tif"} and "inference_wsi.json" in skipped["slide.tif"]

    dense = summary["cases"]["dense"]
    assert dense["mpp_um"] == 1.0 and dense["size"] == [256, 256]  # the TIFF's own tags, not --mpp_um
    stack = tifffile.imread(out / dense["stack"])
    assert stack.shape == (3, 256, 256)
    serial = summary["cases"]["serial"]
    assert serial["mpp_um"] == 2.0 and [s["slice"] for s in serial["slices"]] == [
        "section1.png", "section2.png", "section3.png",
    ]  # fmt: skip
    compared = 0
    for k, entry in enumerate(serial["slices"]):
        mask = np.asarray(Image.open(out / entry["mask"])) > 0
        assert mask.shape == (128, 128)
        assert (out / entry["overlay"]).is_file()
        # the same tissue at twice the pixel density gives the same mask, on its own grid
        dense_mask = stack[k] > 0
        np.testing.assert_array_equal(
            dense_mask, np.asarray(Image.open(out / dense["slices"][k]["mask"])) > 0
        )
        if mask.sum() > 200:
            shrunk = dense_mask.reshape(128, 2, 128, 2).mean(axis=(1, 3)) >= 0.5
            assert _dice(mask, shrunk) > 0.9, (k, _dice(mask, shrunk))
            compared += 1
    assert compared >= 1  # the checkpoint found glomeruli to compare
    # two inputs named 'patch' never share a folder
    png = np.asarray(Image.open(out / summary["cases"]["patch_png"]["slices"][0]["mask"]))
    assert png.shape == (128, 128) and (out / "patch_jpg" / "patch_mask.png").is_file()


def _readme_own_data_command() -> list[str]:
    """The README's own-data command, read from README.md (so the test runs what a newcomer copies): the
    first line of a fenced code block that runs ``configs/inference.json`` with ``--dataset_dir`` and
    ``--mpp_um``."""
    in_code, found = False, []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif in_code and "configs/inference.json" in line and "--dataset_dir" in line and "--mpp_um" in line:
            found.append(line.strip())
    assert found, "README.md has no own-data command (configs/inference.json with --dataset_dir and --mpp_um)"
    return shlex.split(found[0])


def test_readme_own_data_command_on_a_missing_folder_fails_naming_it(tmp_path):
    """A typo or a first try: the README's command on a folder that does not exist stops with an error
    naming the folder, and writes nothing (no demo set generated into it, no masks)."""
    argv = _readme_own_data_command()
    assert Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "monai.bundle"]
    dataset = Path(argv[argv.index("--dataset_dir") + 1])
    output = Path(argv[argv.index("--output_dir") + 1]) if "--output_dir" in argv else None
    assert not dataset.is_absolute()  # relative to where the newcomer runs it: here, an empty folder
    # the command's working directory: a fresh folder holding only the bundle's configs, as a checkout does
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "configs").symlink_to(CONFIGS, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert f"input folder {dataset} ({tmp_path / dataset}) not found: expected 2D images (.png" in proc.stderr
    assert not (tmp_path / dataset).exists()  # no demo set generated into it
    if output is not None:
        assert not (tmp_path / output).exists() or not any((tmp_path / output).iterdir())
    # nothing else written either (no demo folder under the bundle, no output folder)
    written = sorted(
        os.path.relpath(os.path.join(d, n), tmp_path) for d, ds, fs in os.walk(tmp_path) for n in ds + fs
    )
    assert written == ["bundle", "bundle/configs"]  # os.walk does not follow the configs link
