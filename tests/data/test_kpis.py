"""KPIs Task 1 reader on a tree written here: both naming styles, positions, order, CLI, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseqsam.data.datalist import load_datalist
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.kpis import build_kpis_datalist, canonical_class, main, parse_kpis_name, scan_kpis

from .conftest import PATCH


def test_parse_names_of_all_styles():
    assert parse_kpis_name("56Nx_12_116_4_4096_0_img.jpg") == ("56Nx_12_116_4_4096_0", "img", (4096, 0))
    assert parse_kpis_name("normal_F1_14_14336_0_img.jpg")[2] == (14336, 0)
    key, kind, xy = parse_kpis_name("08_373_01_242_4096_14336_mask.jpg", offset_order="yx")
    assert (key, kind, xy) == ("08_373_01_242_4096_14336", "mask", (14336, 4096))
    assert parse_kpis_name("56Nx_12-173_0_2048_0_IMG.JPG")[1] == "img"
    with pytest.raises(
        SequenceDataError, match=r"scan\.jpg: unparseable KPIs file name; expected '<prefix>_<A>_<B>_img"
    ):
        parse_kpis_name("scan.jpg")
    with pytest.raises(SequenceDataError, match="unparseable"):
        parse_kpis_name("a_1_2_img.txt")
    assert canonical_class("56NX") == "56Nx" and canonical_class("nep25") == "NEP25"


def test_scan_pairs_groups_orders_and_positions(kpis_tree):
    root, cases = kpis_tree
    out = scan_kpis(root)
    assert [it["case"] for it in out["training"]] == ["12_116", "08_373_01"]  # classes sorted: 56NX < NEP25
    assert [it["case"] for it in out["validation"]] == ["12-173"]
    assert [it["case"] for it in out["test"]] == ["normal_M1"]
    for split_items in out.values():
        for item in split_items:
            case = cases[item["case"]]
            mpp = 0.5 if case["class"] == "NEP25" else 0.25
            assert item["class"] == canonical_class(case["class"]) and item["mpp_um"] == mpp
            assert len(item["image"]) == len(case["files"])
            by_image = {str(img): (xy, str(msk)) for xy, (img, msk) in case["files"].items()}
            for image, label, pos in zip(item["image"], item["label"], item["positions_um"]):
                (x, y), mask = by_image[image]
                assert label == mask  # paired with its own mask
                assert pos == [(x + PATCH / 2) * mpp, (y + PATCH / 2) * mpp]  # centre in um
            # The order is a walk between neighbouring patches, starting top-left.
            pos = np.array(item["positions_um"])
            assert pos[0].tolist() == pos[np.lexsort((pos[:, 0], pos[:, 1]))[0]].tolist()
            steps = np.linalg.norm(np.diff(pos, axis=0), axis=1) / mpp
            assert np.all(steps <= PATCH * np.sqrt(2) + 1e-6)
    assert out["training"][0]["class"] == "56Nx"  # 56NX folder spelling


def test_offset_order_and_mpp_settings(kpis_tree):
    root, _ = kpis_tree
    xy = scan_kpis(root)["training"][1]
    yx = scan_kpis(root, offset_order="yx", mpp_um={"nep25": 1.0})["training"][1]
    swapped = {tuple(p[::-1]) for p in (np.array(xy["positions_um"]) / 0.5).tolist()}
    assert {tuple(p) for p in yx["positions_um"]} == swapped
    with pytest.raises(SequenceDataError, match="offset_order must be 'xy' or 'yx'"):
        scan_kpis(root, offset_order="rc")
    with pytest.raises(SequenceDataError, match="must be a positive number"):
        scan_kpis(root, mpp_um={"DN": -1})


def test_datalist_file_and_cli(kpis_tree, tmp_path, capsys):
    root, _ = kpis_tree
    out = tmp_path / "lists" / "kpis.json"
    assert main(["--root", str(root), "--out", str(out), "--mpp", "NEP25=0.5"]) == 0
    assert "training: 2 cases, 10 patches" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    assert raw["training"][0]["image"][0].startswith("../Task1_patch_level/train/56NX/12_116/img/")
    items = load_datalist(out, "training", require_label=True)
    assert items == scan_kpis(root)["training"]  # the file holds exactly what the scanner found
    # The module runs as a script too.
    out2 = tmp_path / "cli.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pathseqsam.data.kpis",
            "--root",
            str(root / "Task1_patch_level"),
            "--out",
            str(out2),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out2.read_text())["validation"][0]["case"] == "12-173"
    assert main(["--root", str(root), "--out", str(out), "--mpp", "NEP25"]) == 2
    assert "expected CLASS=MICRONS_PER_PIXEL" in capsys.readouterr().err


def _case_dir(root: Path, case: str = "12_116") -> Path:
    return next((root / "Task1_patch_level").glob(f"*/*/{case}"))


def test_missing_mask_required_vs_optional(kpis_tree, tmp_path):
    root, _ = kpis_tree
    victim = sorted((_case_dir(root) / "mask").iterdir())[0]
    victim.unlink()
    out = tmp_path / "d.json"
    with pytest.raises(
        SequenceDataError, match=r"56Nx_12_116_0_0_0_img\.jpg: no mask found \(expected .*_0_0_0_mask\.jpg\)"
    ):
        build_kpis_datalist(root, out)
    assert not out.exists()  # nothing half-written
    with pytest.warns(UserWarning, match="kept without labels"):
        items = scan_kpis(root, masks="optional")["training"]
    assert "label" not in items[0] and "label" in items[1]


def test_unparseable_name_strict_and_lenient(kpis_tree):
    root, _ = kpis_tree
    Image.new("RGB", (PATCH, PATCH)).save(_case_dir(root) / "img" / "overview.jpg")
    (_case_dir(root) / "img" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored silently
    with pytest.raises(SequenceDataError, match=r"img/overview\.jpg: unparseable KPIs file name"):
        scan_kpis(root)
    with pytest.warns(UserWarning, match=r"overview\.jpg: unparseable.*\(skipped\)"):
        assert len(scan_kpis(root, strict=False)["training"][0]["image"]) == 6


def test_size_mismatch(kpis_tree):
    root, _ = kpis_tree
    mask = sorted((_case_dir(root, "12-173") / "mask").iterdir())[1]
    Image.new("L", (PATCH, PATCH // 2)).save(mask, format="JPEG")
    with pytest.raises(
        SequenceDataError, match=rf"{mask.name}: mask is 64x32 px but its image .* is 64x64 px"
    ):
        scan_kpis(root)


def test_empty_case_strict_and_lenient(kpis_tree):
    root, _ = kpis_tree
    empty = root / "Task1_patch_level" / "test" / "normal" / "normal_M2"
    (empty / "img").mkdir(parents=True)
    with pytest.raises(
        SequenceDataError, match=r"normal_M2: empty case; expected image patches in .*normal_M2/img"
    ):
        scan_kpis(root)
    with pytest.warns(UserWarning, match="empty case"):
        assert [it["case"] for it in scan_kpis(root, strict=False)["test"]] == ["normal_M1"]


def test_duplicate_offsets(kpis_tree):
    root, _ = kpis_tree
    case = _case_dir(root)
    for sub, kind in (("img", "img"), ("mask", "mask")):
        shutil.copy(
            case / sub / f"56Nx_12_116_1_64_0_{kind}.jpg", case / sub / f"56Nx_12_116_9_64_0_{kind}.jpg"
        )
    with pytest.raises(
        SequenceDataError, match=r"duplicate position .* \(.*_1_64_0_img\.jpg and .*_9_64_0_img\.jpg\)"
    ):
        scan_kpis(root)


def test_corrupt_image_found_by_header_or_verify(kpis_tree):
    root, _ = kpis_tree
    image = sorted((_case_dir(root) / "img").iterdir())[2]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # truncated: the header still parses
    scan_kpis(root)  # headers only: fine
    with pytest.raises(SequenceDataError, match=rf"{image.name}: cannot read image"):
        scan_kpis(root, verify=True)
    image.write_bytes(b"garbage")
    with pytest.raises(SequenceDataError, match=rf"{image.name}: cannot read image"):
        scan_kpis(root)


def test_unknown_class_and_bad_root(kpis_tree, tmp_path):
    root, _ = kpis_tree
    shutil.copytree(_case_dir(root), root / "Task1_patch_level" / "train" / "IgAN" / "x_1")
    with pytest.raises(
        SequenceDataError, match=r"IgAN: no microns-per-pixel setting for class 'IgAN'.*--mpp IgAN="
    ):
        scan_kpis(root)
    assert len(scan_kpis(root, mpp_um={"IgAN": 0.25})["training"]) == 3
    with pytest.raises(SequenceDataError, match="no split folders; expected train/, validation/"):
        scan_kpis(tmp_path / "Task1_patch_level" / "train")
    with pytest.raises(SequenceDataError, match="KPIs root folder not found"):
        scan_kpis(tmp_path / "missing")
