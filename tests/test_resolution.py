"""Physical resolution end to end: results do not depend on the pixel density of the input.

The bug these tests would have caught: training resized every slice to ``image_size`` while
validation and inference read slices at their native size, so the same tissue scanned at twice the
pixel density looked twice as large to the network. Now every slice is resampled to the bundle's
``model_mpp_um`` and predictions are scored on the input's own pixel grid.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from PIL import Image

from pathseqsam.data.datalist import write_datalist
from pathseqsam.data.rescale import rescale_datalist
from tests.bundle_paths import CONFIGS, LOGGING, META, with_pretrained

TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")


def _network_inputs(workflow: ConfigWorkflow, network_id: str = "network") -> list[tuple[int, ...]]:
    """Record the shape of every tensor the network is called with during ``run``."""
    shapes: list[tuple[int, ...]] = []
    net = workflow.parser.get_parsed_content(network_id)
    net.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes


def _evaluate(root: Path, dataset: Path, out: Path, **overrides) -> tuple[dict, list]:
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=[TRAIN, EVALUATE],
        meta_file=META,
        logging_file=LOGGING,
        bundle_root=str(root),
        dataset_dir=str(dataset),
        output_dir=str(out),
        **overrides,
    )
    workflow.initialize()
    shapes = _network_inputs(workflow)
    workflow.run()
    workflow.finalize()
    with open(out / "per_patch_validation.csv") as f:
        rows = list(csv.DictReader(f))
    return {(r["case"], int(r["slice_index"])): float(r["dice"]) for r in rows}, shapes


def test_same_dice_at_twice_the_pixel_density(demo_checkpoint, tmp_path):
    root, data = demo_checkpoint
    double = rescale_datalist(data / "datalist.json", tmp_path / "x2", 2.0, splits=["validation"]).parent
    first = next(iter((double / "validation").glob("*/img/*.png")))
    assert Image.open(first).size == (256, 256)  # the same 256 um field, 1 um per pixel

    native, native_shapes = _evaluate(root, data, tmp_path / "native")
    dense, dense_shapes = _evaluate(root, double, tmp_path / "dense")
    assert set(native) == set(dense) and len(native) >= 6
    scored = [k for k in native if np.isfinite(native[k])]  # patches without a glomerulus are NaN in both
    assert all(np.isfinite(dense[k]) for k in scored)
    native_mean = float(np.mean([native[k] for k in scored]))
    dense_mean = float(np.mean([dense[k] for k in scored]))
    assert native_mean >= 0.5, f"the checkpoint is too weak to compare resolutions: Dice {native_mean:.3f}"
    assert abs(dense_mean - native_mean) <= 0.03, (native_mean, dense_mean)
    diffs = np.abs([dense[k] - native[k] for k in scored])
    assert np.median(diffs) <= 0.03, sorted(diffs)
    # the network saw the same 128 px slices in both: the 256 px inputs were resampled to 2 um/px
    assert {s[-2:] for s in native_shapes} == {s[-2:] for s in dense_shapes} == {(128, 128)}


def test_ensembling_at_twice_the_pixel_density(demo_checkpoint, tmp_path):
    """``--ensemble true`` (4 mirrors around the sliding window) on the resampled slices."""
    root, data = demo_checkpoint
    double = rescale_datalist(data / "datalist.json", tmp_path / "x2", 2.0, splits=["validation"]).parent
    native, shapes = _evaluate(root, data, tmp_path / "native", ensemble=True)
    dense, _ = _evaluate(root, double, tmp_path / "dense", ensemble=True)
    scored = [k for k in native if np.isfinite(native[k])]
    assert len(shapes) == 4 * len({k[0] for k in native})  # 4 passes per sequence, one 128 px window each
    assert abs(np.mean([dense[k] for k in scored]) - np.mean([native[k] for k in scored])) <= 0.03


def test_checkpoint_of_another_resolution_is_refused(demo_checkpoint, tmp_path):
    root, data = demo_checkpoint
    with pytest.raises(Exception) as info:
        _evaluate(root, data, tmp_path / "wrong", model_mpp_um=1.0)
    chain, exc = [], info.value
    while exc is not None:  # ignite and the config parser wrap the loader's error
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any(
        "trained at model_mpp_um=2 um/px but this network is configured for model_mpp_um=1" in m
        for m in chain
    )


def _kpis_like(root: Path) -> Path:
    """2048 px patches at 0.25 um/px (KPIs 40x): bright tissue with dark round 'glomeruli'."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:2048, :2048]
    split: dict[str, list] = {"training": [], "validation": []}
    for name in ["a", "b", "v"]:
        images, labels = [], []
        for s in range(2):
            cy, cx = rng.integers(500, 1500, size=2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 300**2
            img = np.where(mask[..., None], [150, 60, 120], [235, 200, 215]).astype(np.uint8)
            images.append(root / f"{name}{s}_img.png")
            labels.append(root / f"{name}{s}_mask.png")
            Image.fromarray(img).save(images[-1], compress_level=1)
            Image.fromarray(mask.astype(np.uint8) * 255).save(labels[-1], compress_level=1)
        item = {
            "image": [str(p) for p in images],
            "label": [str(p) for p in labels],
            "positions_um": [[0.0, 512.0 * s] for s in range(2)],
            "case": name,
            "mpp_um": 0.25,
        }
        split["validation" if name == "v" else "training"].append(item)
    return write_datalist(split, root / "datalist.json")


def test_kpis_shaped_inputs_train_and_validate_at_one_scale(tmp_path):
    """2048 px at 0.25 um/px with model_mpp_um 1.0 and image_size 256: training sees 256 px crops
    of 512 px working slices, validation tiles the whole 512 px slice with 256 px windows, and the
    metrics are computed on the 2048 px grid."""
    data = tmp_path / "kpis"
    data.mkdir()
    _kpis_like(data)
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=TRAIN,
        meta_file=META,
        logging_file=LOGGING,
        bundle_root=str(with_pretrained(tmp_path / "root")),
        dataset_dir=str(data),
        image_size=256,
        model_mpp_um=1.0,
        window=2,
        batch_size=1,
        **{"train#windows_per_case": 1, "train#trainer#max_epochs": 1},
    )
    workflow.initialize()
    seen = _network_inputs(workflow)
    loaded: list[tuple[int, ...]] = []
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    scored: list[tuple[int, ...]] = []

    @evaluator.on(Events.ITERATION_STARTED)
    def _loaded(engine):
        loaded.append(tuple(engine.state.batch["image"].shape))

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _scored(engine):
        scored.extend(tuple(o["pred"].shape) for o in engine.state.output)

    workflow.run()
    workflow.finalize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    n_train = trainer.state.iteration
    assert n_train == 2
    train_shapes, val_shapes = seen[:n_train], seen[n_train:]
    assert train_shapes == [(1, 3, 2, 256, 256)] * 2  # one 256 px crop of the 512 px working slices
    assert loaded == [(1, 3, 2, 512, 512)]  # 2048 px * 0.25 / 1.0
    assert len(val_shapes) == 9 and set(val_shapes) == {(1, 3, 2, 256, 256)}  # 3 x 3 sliding windows
    assert scored == [(1, 2, 2048, 2048)]  # predictions back on the input grid, scored against its labels
    assert 0.0 <= evaluator.state.metrics["val_mean_dice"] <= 1.0
