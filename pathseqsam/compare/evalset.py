"""A larger, independent synthetic evaluation set for comparisons on synthetic data.

The demo set's own test split holds 2 cases (20 patches, about 6 of them degraded): too few to
resolve any difference on degraded slices. :func:`make_eval_set` generates ``cases`` fresh cases
with the training set's settings but another seed (every case is a deterministic function of seed
and index, so none of them was seen in training or model selection) and writes a datalist whose
``test`` split holds all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathseqsam.atomic import atomic_write_json
from pathseqsam.synthetic import SYNTHETIC_META, generate_synthetic_dataset

__all__ = ["EVAL_DATALIST", "GENERATOR_SETTINGS", "make_eval_set", "synthetic_settings"]

EVAL_DATALIST = "datalist_eval.json"
# generator arguments copied from the training set's metadata when present
GENERATOR_SETTINGS = ("image_size", "field_um", "sections", "spacing_um", "degraded_fraction", "difficulty")


def synthetic_settings(dataset_dir: str | Path) -> dict[str, Any] | None:
    """Generator arguments of a synthetic dataset (from ``synthetic_meta.json``: ``seed``, ``cases``,
    :data:`GENERATOR_SETTINGS`), or None for other data."""
    path = Path(dataset_dir) / SYNTHETIC_META
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    settings = {k: meta[k] for k in (*GENERATOR_SETTINGS, "seed", "cases") if k in meta}
    for key in ("sections", "spacing_um"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    return settings


def make_eval_set(dataset_dir: str | Path, out_dir: str | Path, cases: int, seed_offset: int = 1000) -> Path:
    """Generate (or reuse) ``cases`` unseen synthetic cases; return a datalist with all of them as ``test``.

    Args:
        dataset_dir: the synthetic training set (its ``synthetic_meta.json`` gives the settings).
        out_dir: folder of the evaluation set; reused when it was generated with the same settings,
            regenerated otherwise.
        cases: number of cases (10 sections each by default: 10 cases are 100 patches).
        seed_offset: the evaluation seed is the training seed plus this.

    Returns:
        Path of ``<out_dir>/datalist_eval.json``.

    Raises:
        ValueError: ``dataset_dir`` is not a synthetic dataset, or ``cases < 1``.
    """
    source = synthetic_settings(dataset_dir)
    if source is None:
        raise ValueError(
            f"{dataset_dir} is not a synthetic dataset (no synthetic_meta.json): evaluate a split"
        )
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    wanted = {**source, "seed": int(source.get("seed", 0)) + seed_offset, "cases": cases}
    out_dir = Path(out_dir)
    if synthetic_settings(out_dir) != wanted:
        generate_synthetic_dataset(out_dir, contact_sheet=False, stacks=False, overwrite=True, **wanted)
    datalist = json.loads((out_dir / "datalist.json").read_text())
    items = [item for split in ("training", "validation", "test") for item in datalist.get(split, [])]
    return atomic_write_json(
        out_dir / EVAL_DATALIST,
        {
            "description": f"{len(items)} fresh synthetic cases (seed {wanted['seed']}; their case names restart "
            f"at those of the training set, their tissue is new) in {out_dir}",
            "test": items,
        },
    )
