"""MONAI Label training: datastore file names reach the bundle as data in a datalist file, never as code.

Needs the ``label`` extra (the task subclasses MONAI Label's ``BundleTrainTask``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":
    pytest.importorskip("monailabel", reason="MONAI Label extra not installed (.venv-label, see README)")

ROOT = Path(__file__).resolve().parents[2]
# MONAI's ConfigParser would run this string ($ = expression) and create the file 'pwned'
EXPRESSION = "$open('pwned','w')"


class _Datastore:
    def __init__(self, items: list[dict[str, str]]) -> None:
        self.items = items

    def datalist(self) -> list[dict[str, str]]:
        return [dict(d) for d in self.items]


@pytest.fixture
def task_and_datastore(tmp_path, monkeypatch):
    from pathseqsam.label.train import PathSeqSAMTrainTask
    from pathseqsam.synthetic import generate_synthetic_dataset

    data = tmp_path / "data"
    generate_synthetic_dataset(data, cases=2, seed=0, image_size=64, sections=2, contact_sheet=False)
    stacks = data / "stacks"
    studies = tmp_path / "studies"
    studies.mkdir()
    items = []
    for k, (image, mask) in enumerate(
        sorted(zip(stacks.glob("*_image.nii.gz"), stacks.glob("*_mask.nii.gz")))
    ):
        name = f"{EXPRESSION}{k}" if k == 0 else f"@network{k}"
        items.append({"image": str(shutil.copy(image, studies / f"{name}.nii.gz"))})
        items[-1]["label"] = str(shutil.copy(mask, studies / f"{name}_label.nii.gz"))
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    task = PathSeqSAMTrainTask(bundle, {}, overrides={"image_size": 64, "window": 2})
    monkeypatch.chdir(tmp_path)
    return task, _Datastore(items)


def test_datastore_names_travel_in_a_datalist_file_the_parser_does_not_evaluate(
    task_and_datastore, monkeypatch
):
    from monai.bundle import ConfigParser

    task, datastore = task_and_datastore
    seen: dict = {}

    def parse_like_monai_bundle_run(request, overrides):
        """What monai.bundle.run does with the overrides, up to the datasets' data (no training)."""
        parser = ConfigParser()
        parser.read_config(task.bundle_config_path)
        parser.update(overrides)
        seen["overrides"] = overrides
        seen["train"] = parser.get_parsed_content("train#dataset#data", instantiate=True)
        seen["validate"] = parser.get_parsed_content("validate#dataset#data", instantiate=True)

    monkeypatch.setattr(task, "run_single_gpu", parse_like_monai_bundle_run)
    monkeypatch.setattr(
        "pathseqsam.label.train.publish_if_improved", lambda staging, served: {"published": False}
    )
    task({"model": "pathseqsam", "max_epochs": 2, "val_split": 0.5, "device": "cpu"}, datastore)

    assert not Path("pwned").exists()  # nothing was executed
    # the items reached the datasets verbatim: names with $ and @ are data
    assert [d["case"] for d in seen["train"]] == [f"{EXPRESSION}0"] * 8  # train#windows_per_case 8
    assert [d["case"] for d in seen["validate"]] == ["@network1"]
    assert seen["validate"][0]["image"].endswith("@network1.nii.gz")
    # and no override value holds a datastore string
    text = json.dumps(seen["overrides"], default=str)
    assert EXPRESSION not in text and "@network1" not in text
    assert seen["overrides"]["ckpt_dir"].endswith("models/.monailabel_train")
    assert seen["overrides"]["resume"] is False
    assert seen["overrides"]["train#trainer#max_epochs"] == 2


def test_training_needs_two_labelled_images(task_and_datastore):
    from fastapi import HTTPException

    task, datastore = task_and_datastore
    datastore.items = datastore.items[:1]
    with pytest.raises(HTTPException) as info:
        task({"model": "pathseqsam", "max_epochs": 1}, datastore)
    assert info.value.status_code == 400
    assert info.value.detail.startswith("training needs at least 2 labelled images (the datastore has 1)")


def test_split_always_holds_one_out():
    from pathseqsam.label.train import split_for_validation

    items = [{"i": k} for k in range(5)]
    assert split_for_validation(items, 0.0) == (items[:4], items[4:])
    assert split_for_validation(items, 0.4) == (items[:3], items[3:])
    assert split_for_validation(items, 0.99) == (items[:1], items[1:])


def test_split_keeps_the_patches_of_a_slide_together():
    """A slide's label becomes many patch items: they train or validate together, never both."""
    from pathseqsam.label.requests.options import RequestRefused
    from pathseqsam.label.train import split_for_validation

    items = (
        [{"i": k, "source": "a.svs"} for k in range(3)]
        + [{"i": 3}]
        + [{"i": k, "source": "b.svs"} for k in (4, 5)]
    )
    train, val = split_for_validation(items, 0.2)  # 3 images: one held out, the last (b.svs)
    assert [x["i"] for x in train] == [0, 1, 2, 3] and [x["i"] for x in val] == [4, 5]
    train, val = split_for_validation(items, 0.6)  # two images held out: the stack and b.svs
    assert [x["i"] for x in train] == [0, 1, 2] and [x["i"] for x in val] == [3, 4, 5]
    with pytest.raises(RequestRefused, match="at least 2 labelled images \\(the datastore has 1\\)"):
        split_for_validation(items[:3], 0.5)  # one slide's patches are one image
