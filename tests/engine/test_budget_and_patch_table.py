"""WallTimeBudget (stops training on time, after a last validation) and PerPatchSaver (one row per patch)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from pathseqsam.engine import PerPatchSaver, WallTimeBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _trainer(clock: FakeClock, seconds_per_iteration: float) -> tuple[Engine, list[tuple[int, int]]]:
    def step(_engine, _batch):
        clock.now += seconds_per_iteration
        return 0.0

    engine = Engine(step)
    validations: list[
        tuple[int, int]
    ] = []  # (epoch, iteration) at each epoch end: the ValidationHandler's slot
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: validations.append((e.state.epoch, e.state.iteration))
    )
    return engine, validations


def test_budget_cuts_the_epoch_then_validates_and_stops():
    clock = FakeClock()
    engine, validations = _trainer(clock, seconds_per_iteration=1.0)
    budget = WallTimeBudget(max_minutes=3.5 / 60, clock=clock)  # 3.5 s
    budget.attach(engine)
    engine.run(range(5), max_epochs=4)
    # iterations 1..4 take 4 s >= 3.5 s: epoch 1 is cut after iteration 4, validated once, training ends
    assert engine.state.iteration == 4 and engine.state.epoch == 1
    assert validations == [(1, 4)]
    assert budget.expired and budget.stopped_early
    assert budget.elapsed() == pytest.approx(4.0)


def test_budget_at_an_epoch_boundary_and_when_not_reached():
    clock = FakeClock()
    engine, validations = _trainer(clock, seconds_per_iteration=1.0)
    budget = WallTimeBudget(max_minutes=10 / 60, clock=clock)  # 10 s = exactly 2 epochs of 5
    budget.attach(engine)
    engine.run(range(5), max_epochs=4)
    assert engine.state.iteration == 10 and [v[0] for v in validations] == [1, 2]
    assert budget.stopped_early

    clock = FakeClock()
    engine, validations = _trainer(clock, seconds_per_iteration=1.0)
    budget = WallTimeBudget(max_minutes=1.0, clock=clock)
    budget.attach(engine)
    engine.run(range(5), max_epochs=3)
    assert engine.state.iteration == 15 and len(validations) == 3
    assert not budget.expired and not budget.stopped_early


def test_budget_none_is_inert_and_bad_values_are_refused():
    engine = Engine(lambda e, b: 0.0)
    budget = WallTimeBudget(None)
    budget.attach(engine)
    assert not engine.has_event_handler(budget._iteration, Events.ITERATION_COMPLETED)
    engine.run(range(3), max_epochs=2)
    assert engine.state.iteration == 6
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="max_minutes must be > 0 or None"):
            WallTimeBudget(bad)


def _item(case: str, n: int, degraded: list[int] | None, positions: list[float]) -> dict:
    item = {
        "case": case,
        "image": torch.zeros(3, n, 4, 4),
        "slice_names": [f"{case}_{i}.jpg" for i in range(n)],
        "slice_index": torch.arange(n) + 2,
        "positions": torch.tensor(positions).reshape(n, 1),
    }
    if degraded is not None:
        item["degraded"] = torch.tensor(degraded)
    return item


def _evaluate(saver: PerPatchSaver, batches: list, dice: list, counts: list) -> None:
    """Drive the saver as an evaluator would: batches, then the metrics' per-patch details."""
    engine = Engine(lambda e, b: None)
    saver._reset(engine)
    for batch in batches:
        engine.state.batch = batch
        saver._collect(engine)
    engine.state.metric_details = {
        "val_mean_dice": torch.tensor(dice).reshape(-1, 1),
        "val_object_f1": torch.tensor(counts, dtype=torch.float32),
    }
    saver._write(engine)


def test_per_patch_saver_rows_follow_the_metric_order(tmp_path):
    batches = [
        [_item("A", 2, [0, 1], [0.0, 5.0])],
        [_item("B", 3, None, [float("nan")] * 3)],
    ]
    dice = [0.5, 0.25, float("nan"), 1.0, 0.75]
    counts = [[1, 0, 0], [0, 1, 1], [0, 2, 0], [1, 0, 0], [2, 1, 0]]
    saver = PerPatchSaver(tmp_path, filename="pp.csv")
    _evaluate(saver, batches, dice, counts)
    with open(tmp_path / "pp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patch"] for r in rows] == ["A/A_0.jpg", "A/A_1.jpg", "B/B_0.jpg", "B/B_1.jpg", "B/B_2.jpg"]
    assert [r["degraded"] for r in rows] == ["0", "1", "", "", ""]
    assert [r["slice_index"] for r in rows] == ["2", "3", "2", "3", "4"]
    assert [r["position_um"] for r in rows] == ["0", "5", "", "", ""]
    got = [float(r["dice"]) for r in rows]
    assert math.isnan(got[2]) and np.allclose([got[i] for i in (0, 1, 3, 4)], [0.5, 0.25, 1.0, 0.75])
    assert [(r["tp"], r["fp"], r["fn"]) for r in rows][4] == ("2", "1", "0")


def test_per_patch_saver_errors_are_explained(tmp_path):
    saver = PerPatchSaver(tmp_path)
    with pytest.raises(RuntimeError, match="has 1 per-patch values for 2 patches"):
        _evaluate(saver, [[_item("A", 2, [0, 1], [0.0, 5.0])]], [0.5], [[1, 0, 0]])
    engine = Engine(lambda e, b: None)
    engine.state.metric_details = {}
    with pytest.raises(RuntimeError, match="no per-patch details of 'val_mean_dice'"):
        saver._write(engine)
    bad = _item("C", 2, [0, 1, 1], [0.0, 1.0])
    engine.state.batch = [bad]
    with pytest.raises(ValueError, match="'degraded' has 3 entries for 2 slices"):
        saver._collect(engine)
