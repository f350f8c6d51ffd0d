"""Which generator seeds serve which purpose, so pretraining never sees the task's cases.

Every synthetic case is a deterministic function of the generator's ``seed`` and its case index
(:func:`pathseqsam.synthetic.generate_synthetic_dataset`), so datasets made from different seeds
share no case. The ranges below are disjoint (``tests/synthetic/test_seeds.py`` checks that, and
that the seeds actually used fall inside them):

* :data:`TASK_SEEDS`: the task's own data: the bundle's demo set (seed 0,
  :func:`pathseqsam.engine.prepare_datalist`), the comparison's training set and the tests' datasets;
* :data:`EVAL_SEEDS`: the comparison's fresh evaluation cases (the training seed plus
  :data:`EVAL_SEED_OFFSET`, :func:`pathseqsam.compare.evalset.make_eval_set`);
* :data:`PRETRAIN_SEEDS`: SAM2's pretraining blocks (``scripts/pretrain_tiny_sam2.py``): run seed
  ``s`` draws its tissue from root seed ``PRETRAIN_SEEDS[s]``;
* :data:`STUDY_TRAIN_SEEDS`: the mechanisms study's training sets (training seed ``s`` trains on
  the 24 cases of root seed ``STUDY_TRAIN_SEEDS[s]``, :mod:`pathseqsam.compare.study`);
* :data:`STUDY_TEST_SEEDS`: the mechanisms study's test sets (``STUDY_TEST_SEEDS[0]`` for the grid,
  ``[1]`` for its smoke grid): one seed for every test setting, so case ``k`` of one setting
  differs from case ``k`` of another only in what the dials change.
"""

from __future__ import annotations

__all__ = [
    "EVAL_SEEDS",
    "EVAL_SEED_OFFSET",
    "PRETRAIN_SEEDS",
    "STUDY_TEST_SEEDS",
    "STUDY_TRAIN_SEEDS",
    "TASK_SEEDS",
    "pretrain_data_seed",
]

TASK_SEEDS = range(0, 1_000)
EVAL_SEED_OFFSET = 1_000
EVAL_SEEDS = range(TASK_SEEDS.start + EVAL_SEED_OFFSET, TASK_SEEDS.stop + EVAL_SEED_OFFSET)
PRETRAIN_SEEDS = range(1_000_000, 1_100_000)
STUDY_TRAIN_SEEDS = range(2_000_000, 2_001_000)
STUDY_TEST_SEEDS = range(2_001_000, 2_002_000)


def pretrain_data_seed(run_seed: int) -> int:
    """The root seed of a pretraining run's tissue blocks.

    Args:
        run_seed: the pretraining run's seed, ``0 <= run_seed < len(PRETRAIN_SEEDS)``.

    Returns:
        ``PRETRAIN_SEEDS[run_seed]``.

    Raises:
        ValueError: ``run_seed`` outside that range.
    """
    if not 0 <= int(run_seed) < len(PRETRAIN_SEEDS):
        raise ValueError(f"pretraining seed must be in [0, {len(PRETRAIN_SEEDS)}), got {run_seed}")
    return PRETRAIN_SEEDS[int(run_seed)]
