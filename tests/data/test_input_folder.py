"""A user's folder scanned into inference inputs: what becomes a sequence, what is skipped and why."""

from __future__ import annotations

import re

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


def test_missing_empty_and_unreadable_folders_name_the_folder_and_what_was_expected(tmp_path):
    """Nothing to segment is an error naming the folder, the accepted suffixes and (without --mpp_um)
    the pixel-size rule; the scan never creates or writes into the folder."""
    missing = tmp_path / "missing"
    with pytest.raises(SequenceDataError) as err:
        scan_input_folder(missing)
    message = str(err.value)
    assert message.startswith(
        f"input folder {missing} not found: expected 2D images (.png, .jpg, .jpeg, .bmp"
    )
    assert (
        ".nii.gz" in message and "sub-folders of 2D images" in message and "--mpp_um <um per px>" in message
    )
    assert not missing.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"x")  # hidden files do not count
    with pytest.raises(
        SequenceDataError, match=rf"^input folder {re.escape(str(empty))} is empty: expected 2D images"
    ) as err:
        scan_input_folder(empty)
    assert "--mpp_um" in str(err.value)
    with pytest.raises(SequenceDataError, match="is empty") as err:
        scan_input_folder(empty, mpp_um=0.5)
    assert "--mpp_um" not in str(err.value)  # given already: the hint would be noise
    assert sorted(p.name for p in empty.iterdir()) == [".DS_Store"]

    # a folder of files none of which is a readable image: a text file, a PNG that is not one, a
    # truncated TIFF; each is listed with its reason
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    (other / "scan.png").write_bytes(b"not a png")
    (other / "cut.tif").write_bytes(b"II*\x00")
    with pytest.raises(SequenceDataError) as err:
        scan_input_folder(other, mpp_um=0.5)
    message = str(err.value)
    assert message.startswith(f"no readable input image in {other} (skipped: ")
    assert f"{other / 'notes.txt'}: not an image" in message
    assert (
        f"{other / 'scan.png'}: cannot read image" in message
        and f"{other / 'cut.tif'}: cannot read" in message
    )
    assert message.endswith("sub-folders of 2D images (one ordered sequence each)")


def test_a_relative_folder_is_named_as_given_and_where_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SequenceDataError,
        match=rf"^input folder my_images \({re.escape(str(tmp_path / 'my_images'))}\) not found",
    ):
        scan_input_folder("my_images")


def test_an_unreadable_image_beside_good_ones_is_skipped_with_the_reason(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    found = scan_input_folder(tmp_path, mpp_um=1.0)
    assert [item["case"] for item in found.items] == ["good"]
    assert len(found.skipped) == 1 and found.skipped[0]["file"] == str(tmp_path / "bad.png")
    assert "cannot read image" in found.skipped[0]["reason"]


def test_names_never_collide_with_each_other_or_the_summary(tmp_path):
    _png(tmp_path / "summary.json.png")
    _png(tmp_path / "a.png")
    _png(tmp_path / "a" / "s.png")
    names = sorted(item["case"] for item in scan_input_folder(tmp_path, mpp_um=1.0).items)
    assert names == ["a_dir", "a_png", "summary.json_png"]
