"""Which job may make the demo set, and where: inference never, training only in the bundle's demo folder;
every other missing or empty folder is an error that names it (and nothing is written into it)."""

from __future__ import annotations

import hashlib
import inspect
import re
import shlex
from pathlib import Path

import pytest
import tifffile
from monai.bundle import ConfigParser

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.engine import inference_inputs, prepare_datalist
from pathseqsam.engine.datalist_setup import demo_command
from pathseqsam.synthetic.generator import main as synthetic_main
from tests.bundle_paths import CONFIGS


def _tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` with the sha256 of its content: the bytes, or for an OME-TIFF (whose
    header carries a fresh random UUID each write) the pixels."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = tifffile.imread(p).tobytes() if p.name.endswith(".ome.tif") else p.read_bytes()
            out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def _parsed_error(configs: list[str], key: str, **overrides) -> BaseException:
    """The exception behind resolving ``key`` of the bundle configs (MONAI wraps it in a RuntimeError)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update(overrides)
    with pytest.raises(Exception) as err:
        parser.get_parsed_content(key)
    exc: BaseException = err.value
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def test_inference_on_a_missing_or_empty_folder_names_it_and_writes_nothing(tmp_path):
    demo = tmp_path / "bundle" / "data" / "synthetic_demo"
    missing = tmp_path / "my_images"
    with pytest.raises(SequenceDataError) as err:
        inference_inputs(missing, mpp_um=0.5, demo_mpp_um=2.0, demo_dir=demo)
    assert str(err.value).startswith(f"input folder {missing} not found: expected 2D images (.png")
    assert not missing.exists() and not demo.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SequenceDataError, match=rf"^input folder {re.escape(str(empty))} is empty") as err:
        inference_inputs(empty, demo_mpp_um=2.0, demo_dir=demo)
    assert "--mpp_um <um per px>" in str(err.value)  # not given: the pixel-size rule is part of the answer
    assert list(empty.iterdir()) == []

    (empty / "notes.txt").write_text("x")
    with pytest.raises(SequenceDataError) as err:
        inference_inputs(empty, mpp_um=0.5, demo_dir=demo)
    assert str(err.value).startswith(
        f"no readable input image in {empty} (skipped: {empty / 'notes.txt'}: not an"
    )
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]


def test_inference_on_the_demo_folder_before_training_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bundle" / "configs" / "train.json").write_text("{}")
    demo = "bundle/data/synthetic_demo"  # relative, as train.json/inference.json make it
    for dataset_dir in (demo, tmp_path / demo):  # the same folder named either way
        with pytest.raises(FileNotFoundError) as err:
            inference_inputs(dataset_dir, demo_mpp_um=2.0, demo_dir=demo)
        message = str(err.value)
        assert f"the demo folder {dataset_dir} does not exist. The training job generates it" in message
        assert "python -m monai.bundle run training --config_file bundle/configs/train.json" in message
        assert message.endswith(
            f"python -m pathseqsam.synthetic --out {dataset_dir} --cases 10 --seed 0 --image-size 128 "
            "--field-um 256 --difficulty easy --workers 2"
        )
    assert not (tmp_path / "bundle" / "data").exists()
    (tmp_path / demo).mkdir(parents=True)  # an empty demo folder is "not made yet" too
    with pytest.raises(
        FileNotFoundError, match=r"the demo folder .* is empty\. The training job generates it"
    ):
        inference_inputs(demo, demo_dir=demo)


def test_training_generates_only_into_the_demo_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = Path("bundle/data/synthetic_demo")
    for other in (tmp_path / "typo", tmp_path / "empty"):
        if other.name == "empty":
            other.mkdir()
        state = "is empty" if other.exists() else "does not exist"
        with pytest.raises(FileNotFoundError) as err:
            prepare_datalist(other, cases=2, image_size=32, demo_dir=demo)
        message = str(err.value)
        assert message.startswith(f"dataset folder {other} {state}: expected a folder holding datalist.json")
        assert f"only in the bundle's demo folder {demo}" in message
        assert not other.exists() or list(other.iterdir()) == []
    # the demo folder, named absolutely while demo_dir is relative: generated there
    made = prepare_datalist(tmp_path / demo, cases=2, image_size=32, workers=1, demo_dir=demo)
    assert made == str(tmp_path / demo / "datalist.json") and Path(made).is_file()


def test_the_demo_command_in_the_message_makes_the_same_set(tmp_path):
    """The command the demo-folder error prints writes, byte for byte, what the training job generates."""
    params = inspect.signature(prepare_datalist).parameters
    for name, param in inspect.signature(demo_command).parameters.items():
        if name != "dataset_dir":
            assert param.default == params[name].default, name
    generated = Path(prepare_datalist(tmp_path / "job", cases=2, demo_mpp_um=8.0, workers=1)).parent
    command = demo_command(tmp_path / "cli", cases=2, demo_mpp_um=8.0, workers=1)
    argv = shlex.split(command)
    assert (
        argv[:3] == ["python", "-m", "pathseqsam.synthetic"] and "32" == argv[argv.index("--image-size") + 1]
    )
    assert synthetic_main(argv[3:]) == 0
    job, cli = _tree(generated), _tree(tmp_path / "cli")
    assert len(job) > 10 and "datalist.json" in job and any(n.endswith(".ome.tif") for n in job)
    assert job == cli


@pytest.mark.parametrize(
    "configs", [["train.json"], ["train.json", "multi_gpu_train.json"], ["train.json", "evaluate.json"]]
)
def test_bundle_jobs_on_another_missing_folder_fail_naming_it(configs, tmp_path):
    typo = tmp_path / "my_dataset"
    exc = _parsed_error(configs, "datalist", bundle_root=str(tmp_path / "root"), dataset_dir=str(typo))
    assert isinstance(exc, FileNotFoundError)
    assert str(exc).startswith(
        f"dataset folder {typo} does not exist: expected a folder holding datalist.json"
    )
    assert f"only in the bundle's demo folder {tmp_path / 'root' / 'data' / 'synthetic_demo'}" in str(exc)
    assert not typo.exists() and not (tmp_path / "root").exists()


@pytest.mark.parametrize("configs", [["train.json", "evaluate.json"], ["inference.json"]])
def test_evaluation_and_inference_never_make_the_demo_set(configs, tmp_path):
    root = tmp_path / "root"
    key = "inputs" if configs == ["inference.json"] else "datalist"
    exc = _parsed_error(configs, key, bundle_root=str(root))
    assert isinstance(exc, FileNotFoundError)
    assert f"the demo folder {root / 'data' / 'synthetic_demo'} does not exist. The training job" in str(exc)
    assert "python -m pathseqsam.synthetic --out" in str(exc) and "--image-size 128" in str(exc)
    assert not root.exists()


def test_multi_gpu_evaluation_inherits_the_rule(tmp_path):
    exc = _parsed_error(
        ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
        "datalist",
        bundle_root=str(tmp_path / "r"),
    )
    assert isinstance(exc, FileNotFoundError) and "The training job generates it" in str(exc)
    assert not (tmp_path / "r").exists()
