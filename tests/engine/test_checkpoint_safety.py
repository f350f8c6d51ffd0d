"""Checkpoints survive a failing save, resume refuses to start from nothing, random states round-trip."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose

from pathseqsam.data.transforms import RandSequenceSpatiald, RandSliceStainJitterd
from pathseqsam.engine import AtomicCheckpointSaver, RandomStates, resume_from_latest


def _failing_second_save(monkeypatch):
    """torch.save that writes once, then fails as a full disk does (ignite's DiskSaver calls torch.save)."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


def _engine_with_rising_metric(net: torch.nn.Module) -> Engine:
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _train_and_score(e):  # new weights, a better score each epoch
        with torch.no_grad():
            net.weight.add_(1.0)
        e.state.metrics["val_mean_dice"] = 0.1 * e.state.epoch

    return engine


def test_model_pt_survives_a_full_disk_while_it_is_replaced(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    engine = _engine_with_rising_metric(net)
    AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": net},
        save_key_metric=True,
        key_metric_name="val_mean_dice",
        key_metric_filename="model.pt",
    ).attach(engine)
    calls = _failing_second_save(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        engine.run([0], max_epochs=2)
    assert len(calls) == 2  # epoch 1 saved, epoch 2's better model failed to save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # still there, no temp file
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.testing.assert_close(state["weight"], net.weight.detach() - 1.0)  # epoch 1's weights, intact


def test_latest_checkpoint_survives_a_full_disk_while_the_next_is_written(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    engine = _engine_with_rising_metric(net)
    AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, n_saved=1, epoch_level=True
    ).attach(engine)
    _failing_second_save(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        engine.run([0], max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_epoch=1.pt"]


def test_replaced_files_are_removed_once_the_new_ones_are_written(tmp_path):
    net = torch.nn.Linear(2, 2)
    engine = _engine_with_rising_metric(net)
    for kwargs in (
        {"save_interval": 1, "n_saved": 1, "epoch_level": True},
        {"save_key_metric": True, "key_metric_name": "val_mean_dice", "key_metric_filename": "model.pt"},
    ):
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, **kwargs).attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model_epoch=3.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight)


def test_best_score_is_saved_and_restored(tmp_path):
    net = torch.nn.Linear(2, 2)
    engine = _engine_with_rising_metric(net)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": net},
        save_key_metric=True,
        key_metric_name="val_mean_dice",
        key_metric_filename="model.pt",
    )
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    state = saver.state_dict()
    assert state == {"_saved": [(pytest.approx(0.3), "model_key_metric=0.3000.pt")]}
    torch.save(state, tmp_path / "s.pt")
    restored = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt"
    )
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored.state_dict() == state


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"resume requested but .* has no checkpoint_epoch=\*.pt to resume from; start a fresh run with --resume false",
    ):
        resume_from_latest(Engine(lambda e, b: None), tmp_path, {})


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    transforms = Compose([RandSequenceSpatiald(["image"]), RandSliceStainJitterd("image")])
    transforms.set_random_state(seed=3)
    states = RandomStates(transforms)

    def draw():
        return (
            torch.rand(3).tolist(),
            np.random.rand(3).tolist(),  # noqa: NPY002 (the legacy global stream is under test)
            [random.random() for _ in range(3)],
            [t.R.rand() for t in transforms.transforms],
        )

    draw()
    torch.save(states.state_dict(), tmp_path / "rng.pt")
    first = draw()
    draw()  # move every stream on
    states.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == first

    with pytest.raises(
        ValueError, match="random states of 2 randomizable transforms, this run's preprocessing has 1"
    ):
        RandomStates(Compose([RandSliceStainJitterd("image")])).load_state_dict(
            torch.load(tmp_path / "rng.pt", weights_only=True)
        )
