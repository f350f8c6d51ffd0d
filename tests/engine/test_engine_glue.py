"""Engine glue: batch preparation, checkpoint discovery, NaN guard, atomic saver, writers, curves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from pathseqsam.engine import (
    AtomicCheckpointSaver,
    NaNLossGuard,
    SaveSequencePredictiond,
    SequencePrepareBatch,
    TrainingCurves,
    latest_checkpoint,
    prepare_datalist,
)


def test_prepare_batch_passes_positions_and_prompts():
    batch = {
        "image": torch.zeros(1, 3, 2, 8, 8),
        "label": torch.ones(1, 1, 2, 8, 8),
        "positions": torch.tensor([[[0.0], [4.0]]], dtype=torch.float64),
        "prompts": {"boxes": torch.zeros(1, 2, 4)},
    }
    image, label, args, kwargs = SequencePrepareBatch(return_aux=True)(batch, device="cpu")
    assert image.shape == (1, 3, 2, 8, 8) and label.shape == (1, 1, 2, 8, 8) and args == ()
    assert kwargs["positions"].dtype == torch.float32 and kwargs["positions"].shape == (1, 2, 1)
    assert kwargs["return_aux"] is True and set(kwargs["prompts"]) == {"boxes"}
    _, label, _, kwargs = SequencePrepareBatch()({"image": torch.zeros(1, 3, 1, 8, 8)})
    assert label is None and kwargs == {}
    with pytest.raises(KeyError, match="batch has no 'image'"):
        SequencePrepareBatch()({"img": 1})


def test_latest_checkpoint_and_prepare_datalist(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for e in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={e}.pt").write_bytes(b"x")
    (tmp_path / "checkpoint_epoch=final.pt").write_bytes(b"x")
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_epoch=10.pt"

    data = tmp_path / "data"
    data.mkdir()
    (data / "something.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"python -m pathseqsam.data.kpis --root"):
        prepare_datalist(data)
    (data / "datalist.json").write_text("{}")
    assert prepare_datalist(data) == str(data / "datalist.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is empty"):
        prepare_datalist(tmp_path / "empty", generate_if_empty=False)
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        prepare_datalist(tmp_path / "missing", generate_if_empty=False)
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "empty").iterdir())


def _engine_with_loss(value: float) -> Engine:
    engine = Engine(lambda e, b: [{"loss": torch.tensor(value)}])
    return engine


def test_nan_guard_names_epoch_iteration_and_terms():
    loss_fn = SimpleNamespace(last_terms={"dice": 0.5, "bce": float("nan")})
    engine = _engine_with_loss(float("nan"))
    NaNLossGuard(loss_fn).attach(engine)
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss nan at epoch 1, iteration 1 \(terms: .*bce"
    ):
        engine.run([0, 1], max_epochs=1)
    ok = _engine_with_loss(0.3)
    NaNLossGuard().attach(ok)
    ok.run([0, 1], max_epochs=2)
    assert ok.state.iteration == 4


def test_atomic_checkpoint_saver(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": net, "optimizer": opt},
        save_interval=1,
        n_saved=1,
        epoch_level=True,
    )
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint_epoch=3.pt"]  # latest only, no temp files left behind
    assert (tmp_path / files[0]).stat().st_mode & 0o044  # group/others can read
    state = torch.load(tmp_path / files[0], weights_only=True)
    assert torch.equal(state["model"]["weight"], net.weight)


def test_training_curves_written(tmp_path):
    trainer = Engine(lambda e, b: [{"loss": torch.tensor(0.5 + b)}])
    validator = Engine(lambda e, b: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mean_dice"] = 0.25 * trainer.state.epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):  # like ValidationHandler(interval=2), attached before the curves
        if engine.state.epoch % 2 == 0:
            validator.run([0])

    TrainingCurves(tmp_path, validator=validator, metric_name="val_mean_dice").attach(trainer)
    trainer.run([0, 1], max_epochs=4)
    lines = (tmp_path / "curves.csv").read_text().splitlines()
    assert lines == ["epoch,train_loss,val_mean_dice", "1,1.0,", "2,1.0,0.5", "3,1.0,", "4,1.0,1.0"]
    assert Image.open(tmp_path / "curves.png").format == "PNG"


def test_save_sequence_prediction_writes_pngs_stacks_and_summary(tmp_path):
    pred = torch.zeros(1, 2, 16, 16)
    pred[0, 0, 4:8, 4:8] = 1
    pred[0, 1, 2:4, 2:4] = 1
    pred[0, 1, 10:14, 10:14] = 1
    item = {
        "pred": pred,
        "image": torch.zeros(3, 2, 16, 16),
        "label": torch.zeros(1, 2, 16, 16),
        "case": "c1",
        "slice_names": ["s0.jpg", "s1.jpg"],
    }
    out = tmp_path / "out"
    writer = SaveSequencePredictiond("pred", output_dir=out)
    writer(item)
    summary = json.loads((out / "summary.json").read_text())
    slices = summary["cases"]["c1"]["slices"]
    assert [s["objects"] for s in slices] == [1, 2]
    assert slices[0]["foreground_fraction"] == pytest.approx(16 / 256)
    mask = np.asarray(Image.open(out / slices[1]["mask"]))
    np.testing.assert_array_equal(mask > 0, pred[0, 1].numpy() > 0)
    overlay = np.asarray(Image.open(out / slices[0]["overlay"]))
    assert overlay.shape == (16, 16, 3) and (overlay[4, 4] == [0, 230, 0]).all()  # green contour

    # a NIfTI stack input gets a NIfTI mask stack with the source's affine
    affine = np.diag([0.5, 0.5, 4.0, 1.0])
    src = tmp_path / "c2.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.uint8), affine), str(src))
    writer({**item, "case": "c2", "image_source": str(src)})
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cases"]) == {"c1", "c2"}
    stack = nib.load(out / summary["cases"]["c2"]["stack"])
    np.testing.assert_allclose(stack.affine, affine)
    np.testing.assert_array_equal(np.asarray(stack.dataobj)[:, :, 1].T > 0, pred[0, 1].numpy() > 0)
    with pytest.raises(ValueError, match="1 slice names for 2 predicted slices"):
        writer({**item, "slice_names": ["only.jpg"]})
