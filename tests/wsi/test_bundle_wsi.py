"""The bundle's whole-slide configs: inference_wsi.json (the documented command line, on an Aperio SVS),
evaluate_wsi.json (an overlay on it, in-process: KPIs Task 2 root and --slides/--masks), the torchrun
overlay, and the demo slides they read but never write."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from tests.torchrun import torchrun_bundle

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Callable[[float], Path]:
    """State dicts of the bundle's tiny network (as the training job's model.pt holds), one per working
    resolution: the weights carry their ``model_mpp_um`` and refuse to load at another."""
    from pathseqsam import build_pathseqsam

    folder = tmp_path_factory.mktemp("ckpt")

    def at(model_mpp_um: float) -> Path:
        path = folder / f"model_{model_mpp_um:g}.pt"
        if not path.is_file():
            torch.manual_seed(0)
            net = build_pathseqsam(
                model="tiny", image_size=128, lora_rank=8, memory_k=5, distance_unit_um=5.0,
                multimask_output=False, model_mpp_um=model_mpp_um,
            )  # fmt: skip
            torch.save(net.state_dict(), path)
        return path

    return at


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


def test_inference_wsi_command_on_an_aperio_svs(tmp_path, slide_files, tiny_checkpoint):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "inference_wsi.json"),
        "--meta_file",
        META,
        "--logging_file",
        LOGGING,
        "--slides",
        str(slide_files["svs"].parent / "*.svs"),
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(tiny_checkpoint(4.0)),
        "--model_mpp_um",
        "4.0",
        "--slide_settings#chunk",
        "3",
        "--slide_settings#overwrite",
        "true",
    ]
    (out / "syn_00").mkdir(parents=True)  # an earlier run's folder: replaced (overwrite true)
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = out / "syn_00"
    assert sorted(p.name for p in folder.iterdir()) == [
        "glomeruli.geojson",
        "mask.tif",
        "summary.json",
        "thumbnail.png",
    ]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["reader"] == "openslide" and summary["mpp_um"] == pytest.approx(1.0, rel=1e-3)
    # the working resolution is the network's (--model_mpp_um builds it), the slide settings the node's
    assert summary["settings"]["model_mpp_um"] == 4.0 and summary["settings"]["tile_um"] == 512.0
    assert summary["settings"]["chunk"] == 3 and summary["settings"]["overwrite"] is True
    assert summary["settings"]["per_tile"] is True  # the slides' default mode
    assert summary["tiles"] > 0
    assert "syn_00: tiles" in proc.stderr + proc.stdout  # the progress line
    gj = json.loads((folder / "glomeruli.geojson").read_text())
    assert gj["type"] == "FeatureCollection"


def test_a_file_name_is_never_evaluated(tmp_path, slide_files, tiny_checkpoint):
    """A slide named like a config expression is only a file name to the bundle."""
    folder = tmp_path / "slides"
    folder.mkdir()
    odd = folder / "$__import__('os').getcwd()@x.svs"
    odd.write_bytes(slide_files["svs"].read_bytes())
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference_wsi.json"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=None,
        slides=str(folder),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tiny_checkpoint(8.0)),
        model_mpp_um=8.0,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert (tmp_path / "out" / "$__import__('os').getcwd()@x" / "summary.json").is_file()


def test_evaluate_wsi_on_a_task2_root_and_on_globs(tmp_path, slide_files, tiny_checkpoint):
    import shutil

    root = tmp_path / "kpis" / "Task2_WSI_level" / "DN"
    root.mkdir(parents=True)
    shutil.copy(slide_files["slide"], root / "syn_00_wsi.tiff")
    shutil.copy(slide_files["mask"], root / "syn_00_mask.tiff")
    common = {
        "config_file": [str(CONFIGS / "inference_wsi.json"), str(CONFIGS / "evaluate_wsi.json")],
        "meta_file": META,
        "logging_file": LOGGING,
        "workflow_type": None,
        "ckpt_path": str(tiny_checkpoint(8.0)),
        "model_mpp_um": 8.0,
    }
    runs = {
        "root": {"dataset_dir": str(tmp_path / "kpis")},
        "globs": {
            "slides": str(root / "*_wsi.tiff"),
            "masks": str(root / "*_mask.tiff"),
            "modes": ["sequence"],
        },
    }
    for name, overrides in runs.items():
        out = tmp_path / f"eval_{name}"
        workflow = ConfigWorkflow(output_dir=str(out), **common, **overrides)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        rows = list(csv.DictReader((out / "slides.csv").open()))
        modes = ["sequence", "per_tile"] if name == "root" else ["sequence"]
        assert [r["mode"] for r in rows] == modes + modes
        assert [r["slide"] for r in rows[len(modes) :]] == ["mean"] * len(modes)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["slides"] == 1 and set(summary["mean"]) == set(modes)
        for row in rows[: len(modes)]:
            assert 0.0 <= float(row["dice"]) <= 1.0 and int(row["n_gt"]) > 50


def test_torchrun_shards_slides_over_ranks(tmp_path, slide_files, tiny_checkpoint):
    """multi_gpu_inference_wsi.json: two processes (gloo on CPU), each segments its own slide."""
    import shutil

    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(slide_files["svs"], folder / f"{name}.svs")
    out, logs = tmp_path / "out", tmp_path / "logs"
    configs = [str(CONFIGS / "inference_wsi.json"), str(CONFIGS / "multi_gpu_inference_wsi.json")]
    ranks = torchrun_bundle(
        logs,
        configs,
        timeout=600,
        slides=folder,
        output_dir=out,
        ckpt_path=tiny_checkpoint(8.0),
        model_mpp_um=8.0,
    )
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c"]
    # rank 0 took slides 0 and 2, rank 1 slide 1 (every world-th slide)
    assert "this process: 2 of them, rank 0 of 2" in ranks[0]
    assert "this process: 1 of them, rank 1 of 2" in ranks[1]
    assert "b: tiles" in ranks[1] and "b: tiles" not in ranks[0]


def _chain(exc: BaseException) -> str:
    """Every message of an exception and its causes (MONAI wraps what a config expression raises)."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


@pytest.mark.parametrize("job", ["inference", "evaluation", "torchrun overlay"])
def test_missing_demo_slides_are_not_generated(tmp_path, job):
    """Left at their default input, the slide jobs stop with the folder and the command that makes it."""
    configs = {
        "inference": [CONFIGS / "inference_wsi.json"],
        "evaluation": [CONFIGS / "inference_wsi.json", CONFIGS / "evaluate_wsi.json"],
        "torchrun overlay": [CONFIGS / "inference_wsi.json", CONFIGS / "multi_gpu_inference_wsi.json"],
    }[job]
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser["bundle_root"] = str(tmp_path)
    # the demo check is the only initialize step touching data (the torchrun one would first start a
    # process group)
    checks = [e for e in parser["initialize"] if "synthetic" in e]
    assert checks and not any("ensure_synthetic_task2" in e for e in parser["initialize"])
    parser["initialize"] = checks
    demo = tmp_path / "data" / "synthetic_wsi"
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("initialize")
    message = _chain(info.value)
    assert f"demo slide folder {demo} does not exist" in message
    assert f"Make them with: python -m pathseqsam.synthetic slides --out {demo}" in message
    assert not (tmp_path / "data").exists()  # nothing written


def test_slide_settings_node_uses_the_dataclass_names():
    """One node, SlideInferenceSettings' own field names; no slide setting left at the top level."""
    import dataclasses

    from pathseqsam.wsi.segment import SlideInferenceSettings

    config = json.loads((CONFIGS / "inference_wsi.json").read_text())
    node = config["slide_settings"]
    fields = {f.name for f in dataclasses.fields(SlideInferenceSettings)}
    assert node["_target_"] == "pathseqsam.wsi.segment.SlideInferenceSettings"
    assert set(node) - {"_target_"} <= fields - {"model_mpp_um", "image_size"}  # those are the network's
    assert not (set(config) & (fields - {"model_mpp_um", "image_size"}))
    assert config["segmenter"]["settings"] == "@slide_settings"
    overlay = json.loads((CONFIGS / "evaluate_wsi.json").read_text())
    assert overlay["evaluator"]["settings"] == "@slide_settings"
    # the overlay holds only what differs: no network or slide setting of its own
    assert not (set(overlay) & ({"network_def", "network", "model_mpp_um", "image_size"} | fields))
