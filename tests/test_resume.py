"""A training run killed after epoch 2 and resumed repeats the uninterrupted run; resume keeps the best model.

The bundle's ``train.json`` on the tiny model and a small synthetic set, on CPU with ``num_workers=0``:
every random stream (torch, numpy, Python, the MONAI transforms' own generators) is in the
checkpoint, so the resumed run draws the same windows, augmentations and data order and its
per-iteration losses equal the uninterrupted run's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from tests.bundle_paths import with_pretrained

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
SIZE = 128
EPOCHS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from pathseqsam.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("resume") / "data"
    generate_synthetic_dataset(
        out, cases=4, seed=0, image_size=SIZE, sections=4, contact_sheet=False, field_um=256.0
    )
    return out


def _workflow(root: Path, dataset: Path, **extra) -> ConfigWorkflow:
    overrides = {
        "bundle_root": str(with_pretrained(root)),
        "dataset_dir": str(dataset),
        "image_size": SIZE,
        "window": 2,
        "batch_size": 1,
        "num_workers": 0,
        "device": "$torch.device('cpu')",
        "amp": False,
        "train#windows_per_case": 2,
        "train#trainer#max_epochs": EPOCHS,
        **extra,
    }
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )
    workflow.initialize()
    return workflow


class Killed(Exception):
    """Stands for the process dying (power, OOM killer) in the middle of an epoch."""


def _run(workflow: ConfigWorkflow, kill_in_epoch: int | None = None) -> list[tuple[int, float]]:
    """Run, recording (iteration, loss); ``kill_in_epoch`` dies after that epoch's first iteration.

    The losses of the epoch cut short are dropped: that work is lost with the process.
    """
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses: list[tuple[int, float]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        if engine.state.epoch == kill_in_epoch:
            raise Killed
        losses.append((engine.state.iteration, float(engine.state.output[0]["loss"])))

    if kill_in_epoch is None:
        workflow.run()
        workflow.finalize()
    else:
        with pytest.raises(RuntimeError, match="Failed to evaluate ConfigExpression") as info:
            workflow.run()  # MONAI's parser wraps the exception
        assert isinstance(info.value.__cause__, Killed)
    return losses


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    straight_root = tmp_path_factory.mktemp("straight")
    straight = _run(_workflow(straight_root, dataset))
    killed_root = tmp_path_factory.mktemp("killed")
    first_half = _run(_workflow(killed_root, dataset), kill_in_epoch=3)  # killed after epoch 2
    models = killed_root / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["checkpoint_epoch=2.pt", "model.pt"]
    spare = tmp_path_factory.mktemp("spare") / "models"
    shutil.copytree(models, spare)  # the state at the kill, for the best-score test
    second_half = _run(_workflow(killed_root, dataset, resume=True))
    return straight, first_half, second_half, spare


def test_resumed_run_repeats_the_uninterrupted_run(runs):
    straight, first_half, second_half, _ = runs
    per_epoch = len(straight) // EPOCHS
    assert per_epoch >= 2 and len(straight) == EPOCHS * per_epoch
    assert [i for i, _ in first_half] == list(range(1, 2 * per_epoch + 1))
    assert [i for i, _ in second_half] == list(range(2 * per_epoch + 1, EPOCHS * per_epoch + 1))
    resumed = first_half + second_half
    assert [i for i, _ in resumed] == [i for i, _ in straight]
    for (i, got), (_, expected) in zip(resumed, straight):
        assert got == pytest.approx(expected, abs=1e-6), f"iteration {i}"
    assert len({round(loss, 6) for _, loss in straight}) > 1  # the losses move: a real comparison


def test_resumed_run_keeps_model_pt_when_its_validation_is_worse_than_the_best(dataset, runs, tmp_path):
    *_, spare = runs
    root = tmp_path / "root"
    shutil.copytree(spare, root / "models")
    checkpoint = root / "models" / "checkpoint_epoch=2.pt"
    state = torch.load(checkpoint, weights_only=True)
    best = state["best_model_saver"]["_saved"]
    assert (
        len(best) == 1 and 0.0 <= best[0][0] <= 1.0
    )  # the best Dice of epochs 1-2 travels in the checkpoint
    state["best_model_saver"]["_saved"] = [(1.5, best[0][1])]  # a best no validation can reach
    torch.save(state, checkpoint)
    served = (root / "models" / "model.pt").read_bytes()

    workflow = _workflow(root, dataset, resume=True, **{"train#trainer#max_epochs": 3})
    _run(workflow)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert 0.0 <= evaluator.state.metrics["val_mean_dice"] <= 1.0  # epoch 3 was validated ...
    assert (root / "models" / "model.pt").read_bytes() == served  # ... and did not replace the best
    assert (root / "models" / "checkpoint_epoch=3.pt").is_file()


def test_resume_without_a_checkpoint_stops_with_a_clear_error(dataset, tmp_path):
    workflow = _workflow(tmp_path, dataset, resume=True)
    with pytest.raises(RuntimeError, match="Failed to evaluate ConfigExpression") as info:
        workflow.run()  # MONAI's parser wraps the error; the cause is ours
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert str(info.value.__cause__).startswith(
        f"resume requested but {tmp_path / 'models'} has no checkpoint_epoch=*.pt to resume from; "
        "start a fresh run with --resume false"
    )
    assert not (tmp_path / "models" / "model.pt").exists()  # nothing trained, nothing written
