"""WallTimeBudget (stops training on time, after a last validation) and PerPatchSaver (one row per patch)."""

from __future__ import annotations

import csv

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


SIDE = 16


def _square(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), bool)
    m[y0:y1, x0:x1] = True
    return m


EMPTY = np.zeros((SIDE, SIDE), bool)
# (prediction, label, tp, fp, fn) per slice, objects placed so that the matches are known by construction
CASE_A = [
    (_square(2, 6, 2, 6), _square(2, 6, 2, 6), 1, 0, 0),
    (_square(2, 6, 2, 6) | _square(10, 14, 2, 6), _square(2, 6, 2, 6) | _square(10, 14, 10, 14), 1, 1, 1),
]
CASE_B = [
    (EMPTY, EMPTY, 0, 0, 0),
    (_square(4, 8, 4, 8), EMPTY, 0, 1, 0),
    (_square(4, 10, 4, 8), _square(4, 10, 4, 10), 1, 0, 0),  # IoU 24 / 36 >= 0.5
]


def _item(case: str, slices: list, degraded: list[int] | None, positions: list[float]) -> dict:
    """A validation item as LoadSequenced gives it; image channel 0 carries the mask to predict."""
    n = len(slices)
    image = torch.zeros(3, n, SIDE, SIDE)
    image[0] = torch.from_numpy(np.stack([pred for pred, *_ in slices])).float()
    item = {
        "case": case,
        "image": image,
        "label": torch.from_numpy(np.stack([lab for _, lab, *_ in slices]))[None].float(),
        "slice_names": [f"{case}_{i}.jpg" for i in range(n)],
        "slice_index": torch.arange(n) + 2,
        "positions": torch.tensor(positions).reshape(n, 1),
    }
    if degraded is not None:
        item["degraded"] = torch.tensor(degraded)
    return item


class _CopyChannel0(torch.nn.Module):
    """A 'network' predicting image channel 0: logits +10 there, -10 elsewhere."""

    def forward(self, images: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return images[:, :1] * 20.0 - 10.0


def _evaluator(items: list[dict], saver: PerPatchSaver, per_slice: bool = True, details: bool = True):
    """The bundle's validation engine in small: MONAI's SupervisedEvaluator with the bundle's prepare
    batch, post-processing and metrics, and the saver attached to it as the bundle attaches handlers."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.handlers import IgniteMetricHandler, from_engine
    from monai.metrics import DiceMetric
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from pathseqsam.engine import SequencePrepareBatch
    from pathseqsam.metrics import ObjectF1Metric, per_slice_output

    transform = per_slice_output(["pred", "label"]) if per_slice else from_engine(["pred", "label"])
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=1, shuffle=False, num_workers=0),
        network=_CopyChannel0(),
        prepare_batch=SequencePrepareBatch(),
        postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        key_val_metric={
            "val_mean_dice": IgniteMetricHandler(
                DiceMetric(include_background=True, reduction="mean", ignore_empty=True),
                output_transform=transform,
                save_details=details,
            )
        },
        additional_metrics={
            "val_object_f1": IgniteMetricHandler(
                ObjectF1Metric(iou_threshold=0.5), output_transform=per_slice_output(["pred", "label"])
            )
        },
        val_handlers=[saver],
    )


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    return float("nan") if not label.any() else 2.0 * (pred & label).sum() / (pred.sum() + label.sum())


def test_per_patch_saver_on_an_evaluator_run(tmp_path):
    """Attached to a real evaluator run (two sequences of 2 and 3 slices): one row per patch in the
    metrics' order, with the item's own fields and the Dice and object matches computed here."""
    items = [
        _item("A", CASE_A, [0, 1], [0.0, 5.0]),
        _item("B", CASE_B, None, [float("nan")] * 3),
    ]
    saver = PerPatchSaver(tmp_path, filename="pp.csv")
    evaluator = _evaluator(items, saver)
    evaluator.run()
    with open(tmp_path / "pp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patch"] for r in rows] == ["A/A_0.jpg", "A/A_1.jpg", "B/B_0.jpg", "B/B_1.jpg", "B/B_2.jpg"]
    assert [r["case"] for r in rows] == ["A", "A", "B", "B", "B"]
    assert [r["degraded"] for r in rows] == ["0", "1", "", "", ""]
    assert [r["slice_index"] for r in rows] == ["2", "3", "2", "3", "4"]
    assert [r["position_um"] for r in rows] == ["0", "5", "", "", ""]
    slices = CASE_A + CASE_B
    expected = [_dice(pred, lab) for pred, lab, *_ in slices]
    np.testing.assert_allclose([float(r["dice"]) for r in rows], expected)  # NaN where no glomerulus
    assert expected[:2] == [1.0, 0.5] and expected[4] == pytest.approx(0.8)
    assert [(int(r["tp"]), int(r["fp"]), int(r["fn"])) for r in rows] == [s[2:] for s in slices]
    # the table agrees with the evaluator's own aggregate
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(float(np.nanmean(expected)))

    evaluator.run()  # a second evaluation rewrites the table, it does not append
    with open(tmp_path / "pp.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_per_patch_saver_errors_are_explained(tmp_path):
    items = [_item("A", CASE_A, [0, 1], [0.0, 5.0])]
    # a Dice scored per sequence instead of per slice
    with pytest.raises(RuntimeError, match="has 1 per-patch values for 2 patches"):
        _evaluator(items, PerPatchSaver(tmp_path), per_slice=False).run()
    with pytest.raises(RuntimeError, match="no per-patch details of 'val_mean_dice'"):
        _evaluator(items, PerPatchSaver(tmp_path), details=False).run()
    bad = _item("C", CASE_A, [0, 1, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match="'degraded' has 3 entries for 2 slices"):
        _evaluator([bad], PerPatchSaver(tmp_path)).run()
    assert not (tmp_path / "per_patch.csv").exists()
