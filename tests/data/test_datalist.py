"""Datalist JSON: relative paths, MONAI compatibility, validation errors, atomic writes."""

from __future__ import annotations

import json

import pytest
from monai.data import load_decathlon_datalist

from pathseqsam.data.datalist import load_datalist, validate_positions, write_datalist
from pathseqsam.data.errors import SequenceDataError


def _item(tmp_path, n=3, **extra):
    images = [str(tmp_path / "data" / f"s{i}_img.jpg") for i in range(n)]
    labels = [str(tmp_path / "data" / f"s{i}_mask.jpg") for i in range(n)]
    item = {
        "image": images,
        "label": labels,
        "positions_um": [[0.0, 4.0 * i] for i in range(n)],
        "case": "c1",
    }
    item.update(extra)
    return item


def test_round_trip_relative_paths_and_monai_reader(tmp_path):
    out = tmp_path / "lists" / "datalist.json"
    item = _item(tmp_path, degraded=[0, 1, 0], **{"class": "DN"})
    stack = {"image": str(tmp_path / "st.nii.gz"), "positions_um": [[0.0], [3.5]], "case": "c2"}
    write_datalist({"training": [item], "test": [stack]}, out, extra={"description": "t"})
    raw = json.loads(out.read_text())
    assert set(raw) == {"description", "training", "validation", "test"}
    assert raw["validation"] == []
    assert raw["training"][0]["image"][0] == "../data/s0_img.jpg"  # relative to the datalist folder
    assert raw["test"][0]["image"] == "../st.nii.gz"
    assert "label" not in raw["test"][0]

    items = load_datalist(out, "training")
    assert items[0]["image"] == item["image"] and items[0]["label"] == item["label"]
    assert items[0]["positions_um"] == item["positions_um"] and items[0]["degraded"] == [0, 1, 0]
    monai_items = load_decathlon_datalist(out, True, "training")
    assert monai_items[0]["image"] == item["image"] and monai_items[0]["label"] == item["label"]
    assert load_datalist(out, "test")[0]["image"] == str(tmp_path / "st.nii.gz")


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        ([[0.0, 0.0], [0.0, 4.0]], r"has 2 rows, expected one per slice \(3\)"),
        ([[0.0], [float("nan")], [2.0]], r"non-finite position \[nan\] at slice 1 \(s1_img\.jpg\)"),
        (
            [[0.0], [5.0], [5.0]],
            r"duplicate position \[5\.0\] for slices 1 and 2 \(s1_img\.jpg and s2_img\.jpg\)",
        ),
        ([[0.0, 1, 2, 3]] * 3, "one row of 1, 2 or 3 coordinates"),
        ([["a"], ["b"], ["c"]], "must be a list of numeric rows"),
    ],
)
def test_bad_positions_are_refused_and_nothing_is_written(tmp_path, positions, message):
    out = tmp_path / "datalist.json"
    with pytest.raises(SequenceDataError, match=message):
        write_datalist({"training": [_item(tmp_path, positions_um=positions)]}, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_structure_errors(tmp_path):
    out = tmp_path / "d.json"
    with pytest.raises(SequenceDataError, match=r"unknown split\(s\) \['train'\]"):
        write_datalist({"train": []}, out)
    with pytest.raises(SequenceDataError, match="2 labels for 3 images"):
        write_datalist({"training": [_item(tmp_path, label=["a", "b"])]}, out)
    with pytest.raises(SequenceDataError, match="'degraded' has 2 flags, expected 3"):
        write_datalist({"training": [_item(tmp_path, degraded=[0, 1])]}, out)
    with pytest.raises(SequenceDataError, match="'image' must be a stack path or a list"):
        write_datalist({"training": [{"image": 3}]}, out)
    no_label = _item(tmp_path)
    del no_label["label"]
    write_datalist({"test": [no_label]}, out)
    with pytest.raises(
        SequenceDataError, match=r"\[test\]\[0\]: 'label' is missing; training data needs masks"
    ):
        load_datalist(out, "test", require_label=True)
    with pytest.raises(SequenceDataError, match=r"expected a JSON object with a 'training' list"):
        json_path = tmp_path / "list.json"
        json_path.write_text("[]")
        load_datalist(json_path)
    with pytest.raises(SequenceDataError, match="cannot read datalist JSON"):
        (tmp_path / "broken.json").write_text("{")
        load_datalist(tmp_path / "broken.json")


def test_failed_rewrite_keeps_the_previous_file(tmp_path):
    out = tmp_path / "d.json"
    write_datalist({"training": [_item(tmp_path)]}, out)
    before = out.read_text()
    with pytest.raises(SequenceDataError):
        write_datalist({"training": [_item(tmp_path, positions_um=[[1.0]] * 3)]}, out)
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_validate_positions_flat_list_means_z():
    arr = validate_positions([0.0, 2.5, 7.0], 3, "here")
    assert arr.shape == (3, 1) and arr[:, 0].tolist() == [0.0, 2.5, 7.0]
