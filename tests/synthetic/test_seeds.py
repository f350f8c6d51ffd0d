"""The pretraining, task and evaluation seed ranges are disjoint, and the seeds actually used fall in them."""

from __future__ import annotations

import inspect
import itertools
import json
import re
from pathlib import Path

import pytest

from pathseqsam.compare.evalset import make_eval_set
from pathseqsam.engine.datalist_setup import prepare_datalist
from pathseqsam.pretrain.trainer import PretrainConfig
from pathseqsam.synthetic.seeds import (
    EVAL_SEED_OFFSET,
    EVAL_SEEDS,
    PRETRAIN_SEEDS,
    STUDY_TEST_SEEDS,
    STUDY_TRAIN_SEEDS,
    TASK_SEEDS,
    pretrain_data_seed,
)

ROOT = Path(__file__).resolve().parents[2]
RANGES = {
    "task": TASK_SEEDS,
    "eval": EVAL_SEEDS,
    "pretrain": PRETRAIN_SEEDS,
    "study_train": STUDY_TRAIN_SEEDS,
    "study_test": STUDY_TEST_SEEDS,
}


@pytest.mark.parametrize("a, b", list(itertools.combinations(RANGES, 2)))
def test_ranges_are_disjoint(a, b):
    ra, rb = RANGES[a], RANGES[b]
    assert ra.step == rb.step == 1
    assert ra.stop <= rb.start or rb.stop <= ra.start, f"{a} {ra} overlaps {b} {rb}"
    assert not set(ra) & set(rb)


def test_the_seeds_in_use_fall_in_their_ranges():
    # the bundle's demo set: prepare_datalist's default seed (train.json does not override it)
    demo_seed = inspect.signature(prepare_datalist).parameters["seed"].default
    assert demo_seed in TASK_SEEDS
    train = json.loads((ROOT / "bundle" / "configs" / "train.json").read_text())
    assert "seed" not in train["datalist"], train["datalist"]
    # the comparison's evaluation set: the training seed plus its default offset
    offset = inspect.signature(make_eval_set).parameters["seed_offset"].default
    assert offset == EVAL_SEED_OFFSET
    assert all(s + offset in EVAL_SEEDS for s in TASK_SEEDS)
    # every literal seed the tests give the generator
    used = set()
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text()
        if "generate_synthetic_dataset" in text:
            used |= {int(s) for s in re.findall(r"\bseed=(\d+)", text)}
    assert used and used <= set(TASK_SEEDS), sorted(used)
    # pretraining: every run seed maps into the pretraining range, the default one too
    assert pretrain_data_seed(PretrainConfig().seed) in PRETRAIN_SEEDS
    assert pretrain_data_seed(len(PRETRAIN_SEEDS) - 1) == PRETRAIN_SEEDS[-1]


def test_pretrain_seed_outside_the_range_is_refused():
    with pytest.raises(ValueError, match=r"pretraining seed must be in \[0, 100000\), got 100000"):
        pretrain_data_seed(len(PRETRAIN_SEEDS))
    with pytest.raises(ValueError, match="got -1"):
        pretrain_data_seed(-1)
