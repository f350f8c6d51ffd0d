"""Output names from data stay inside the output folder and never overwrite each other silently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from pathseqsam.engine import OverlaySaver, SaveSequencePredictiond
from pathseqsam.engine.output_names import UniqueNames, safe_component


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../evil", "_.._evil"),
        ("/etc/passwd", "_etc_passwd"),
        ("..", "unnamed"),
        ("a\\b", "a_b"),
        (".hidden", "hidden"),
        ("70-102_case.ome", "70-102_case.ome"),
        ("", "unnamed"),
    ],
)
def test_safe_component(name, expected):
    assert safe_component(name) == expected


def test_unique_names_number_the_repeats(caplog):
    names = UniqueNames("case")
    assert [names("A"), names("A"), names("a"), names("B"), names("A")] == ["A", "A_2", "a_3", "B", "A_4"]
    assert "case 'A' is written as 'A_2'" in caplog.text


def _item(case: str, value: float, names=("s0.png", "s1.png")) -> dict:
    pred = torch.zeros(1, 2, 8, 8)
    pred[0, :, :4] = value
    return {"pred": pred, "image": torch.zeros(3, 2, 8, 8), "case": case, "slice_names": list(names)}


def test_case_names_cannot_leave_the_output_folder(tmp_path):
    out = tmp_path / "inner" / "out"
    SaveSequencePredictiond("pred", output_dir=out)(_item("../../escaped", 1.0))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(out in p.parents for p in written)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        list(summary["cases"]) == ["_.._escaped"]
        and summary["cases"]["_.._escaped"]["case"] == "../../escaped"
    )


def test_same_case_or_slice_name_twice_keeps_both_outputs(tmp_path):
    writer = SaveSequencePredictiond("pred", output_dir=tmp_path)
    writer(_item("A", 1.0))
    writer(_item("A", 0.0))  # another sequence named A: must not replace the first
    writer(_item("B", 1.0, names=("x/s.png", "y/s.jpg")))  # two slices whose stems are both 's'
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["cases"]) == ["A", "A_2", "B"]
    first = np.asarray(Image.open(tmp_path / summary["cases"]["A"]["slices"][0]["mask"]))
    second = np.asarray(Image.open(tmp_path / summary["cases"]["A_2"]["slices"][0]["mask"]))
    assert first.max() == 255 and second.max() == 0  # each kept its own prediction
    masks = [s["mask"] for s in summary["cases"]["B"]["slices"]]
    assert masks == ["B/s_mask.png", "B/s_2_mask.png"]


def test_overlays_of_repeated_and_unsafe_case_names(tmp_path):
    out = tmp_path / "overlays"
    saver = OverlaySaver(out)
    items = [_item("../up", 1.0), _item("A", 1.0), _item("A", 0.0)]

    def step(engine, k):  # an evaluator step: the batch's items as output, their metadata as batch
        engine.state.batch = [items[k]]
        return [{**items[k], "label": None}]

    engine = Engine(step)
    saver.attach(engine)
    engine.run([0, 1, 2], max_epochs=1)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["A.png", "A_2.png", "_up.png"]
    assert all(p.parent == out for p in tmp_path.rglob("*.png"))
