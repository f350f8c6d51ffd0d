"""A user's folder scanned into inference inputs: what becomes a sequence, what is skipped and why."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.input_folder import WSI_POINTER, input_name, natural_key, scan_input_folder
from pathseqsam.data.stacks import save_tiff_stack

RGB = np.full((32, 32, 3), 200, np.uint8)


def _png(path, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(path)
    return path


def test_natural_order_and_names():
    names = ["s10.png", "S2.png", "s1.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "s1.png", "S2.png", "s10.png"]
    assert input_name("x/b.ome.tif") == "b" and input_name("v.nii.gz") == "v" and input_name(".png") == ".png"


def test_scan_builds_sequences_and_lists_what_it_skipped(tmp_path):
    _png(tmp_path / "p.png")
    _png(tmp_path / "p.jpg")  # same name as p.png: separate outputs
    for name in ("s10.png", "s2.png", "s1.png"):
        _png(tmp_path / "seq" / name)
    (tmp_path / "seq" / "notes.txt").write_text("x")
    stack = np.stack([RGB] * 3)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="rgb")  # 3 equal pages, no metadata
    save_tiff_stack(tmp_path / "ome.ome.tif", stack, [0.0, 3.0, 7.0], xy_spacing_um=0.5)
    with tifffile.TiffWriter(tmp_path / "slide.tif") as tif:  # pages of decreasing size: a pyramid
        for step in (1, 2, 4):
            tif.write(RGB[::step, ::step], photometric="rgb")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "empty").mkdir()

    found = scan_input_folder(tmp_path, mpp_um=2.0)
    by_case = {item["case"]: item for item in found.items}
    assert sorted(by_case) == ["ome", "p_jpg", "p_png", "seq", "stack"]
    assert [p.split("/")[-1] for p in by_case["seq"]["image"]] == ["s1.png", "s2.png", "s10.png"]
    assert "positions_um" not in by_case["seq"]  # unknown spacing: estimated by the network
    assert by_case["stack"]["image"].endswith("stack.tif") and by_case["stack"]["spacing_source"] == "unknown"
    assert by_case["ome"]["positions_um"] == [[0.0], [3.0], [7.0]]
    assert by_case["ome"]["mpp_um"] == pytest.approx(0.5)  # the file's own pixel size wins
    assert by_case["p_png"]["mpp_um"] == 2.0 and by_case["p_png"]["mpp_source"] == "setting"
    skipped = {s["file"].split("/")[-1]: s["reason"] for s in found.skipped}
    assert skipped["slide.tif"] == WSI_POINTER and "inference_wsi.json" in WSI_POINTER
    assert skipped["readme.txt"].startswith("not an image")
    assert "only 2D images" in skipped["notes.txt"] and "without 2D images" in skipped["empty"]


def test_positions_csv_orders_and_places_a_folder(tmp_path):
    for name in ("b.png", "a.png", "extra.png"):
        _png(tmp_path / "seq" / name)
    (tmp_path / "seq" / "positions.csv").write_text("image,z_um\nb.png,0\na.png,4.5\n")
    found = scan_input_folder(tmp_path, mpp_um=1.0)
    (item,) = found.items
    assert [p.split("/")[-1] for p in item["image"]] == ["b.png", "a.png"]
    assert item["positions_um"] == [[0.0], [4.5]]
    assert found.skipped[0]["file"].endswith("extra.png") and "not listed" in found.skipped[0]["reason"]


def test_missing_pixel_size_and_empty_folders_are_errors(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "seq" / "s1.png")
    with pytest.raises(
        SequenceDataError, match=r"2 input\(s\) have no pixel size: .*a\.png, .*seq; .*--mpp_um"
    ):
        scan_input_folder(tmp_path)
    with pytest.raises(SequenceDataError, match=r"no input image found \(.*notes\.txt: not an image"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("x")
        scan_input_folder(tmp_path / "other")
    with pytest.raises(SequenceDataError, match="input folder not found"):
        scan_input_folder(tmp_path / "missing")


def test_names_never_collide_with_each_other_or_the_summary(tmp_path):
    _png(tmp_path / "summary.json.png")
    _png(tmp_path / "a.png")
    _png(tmp_path / "a" / "s.png")
    names = sorted(item["case"] for item in scan_input_folder(tmp_path, mpp_um=1.0).items)
    assert names == ["a_dir", "a_png", "summary.json_png"]
