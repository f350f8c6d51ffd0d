"""MONAI Label training publishes its model only when it beats the served one (core environment too)."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events

from pathseqsam.label.publish import RECORD_NAME, ServedModelGate, publish_if_improved


class _Validator(Engine):
    """Runs like MONAI's Evaluator: ``run(global_epoch)``, one pass over one batch."""

    def run(self, global_epoch: int = 1):
        return super().run([0], max_epochs=1)


def _engines(scores: list[float]):
    """A trainer validating after each epoch; the validator yields ``scores`` (the first: the baseline)."""
    stream = iter(scores)
    validator = _Validator(lambda e, b: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):  # runs before the gate's recorder (attached first)
        engine.state.metrics["val_mean_dice"] = next(stream)

    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run(e.state.epoch))
    return trainer, validator


@pytest.mark.parametrize(
    ("scores", "published", "best_epoch"),
    [
        ([0.5, 0.4, 0.6, 0.55], True, 2),  # epoch 2 beats the served model's 0.5
        ([0.5, 0.4, 0.5, 0.3], False, 0),  # a tie is not better: the served model stays
        ([float("nan"), 0.2, 0.1], True, 1),  # an unscorable baseline is beaten by any score
    ],
)
def test_publish_only_when_an_epoch_beats_the_served_model(tmp_path, scores, published, best_epoch):
    trainer, validator = _engines(scores)
    staging = tmp_path / "staging"
    served = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, served)
    ServedModelGate(validator, staging).attach(trainer)
    trainer.run([0], max_epochs=len(scores) - 1)
    torch.save({"w": torch.ones(1)}, staging / "model.pt")  # what the key-metric saver kept

    record = json.loads((staging / RECORD_NAME).read_text())
    expected = [None if s != s else s for s in scores]
    assert [v["val_mean_dice"] for v in record["validations"]] == expected
    assert [v["epoch"] for v in record["validations"]] == list(range(len(scores)))
    summary = publish_if_improved(staging, served)
    assert summary["published"] is published and summary["best_epoch"] == best_epoch
    assert torch.load(served, weights_only=True)["w"].item() == (1.0 if published else 0.0)
    assert (staging / "model.pt").exists() is not published  # moved, not copied


def test_publish_without_a_record_is_an_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"validation.json not found: the training run recorded no validation"
    ):
        publish_if_improved(tmp_path, tmp_path / "model.pt")
