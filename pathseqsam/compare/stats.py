"""Per-patch tables of evaluated variants, their summaries and paired differences between variants.

Conventions (as the bundle's evaluator and the paper's Table 1): Dice per patch, patches without a
glomerulus left out (``nan`` in the table), mean +- SD over patches (population SD, numpy's
default); object F1 from TP/FP/FN pooled over all patches (empty patches count: false positives).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.engine.per_patch_saver import PER_PATCH_COLUMNS
from pathseqsam.metrics import pooled_f1, summarise

__all__ = [
    "PatchTable",
    "damage_kinds",
    "paired_difference",
    "read_per_patch",
    "variant_summary",
]


@dataclass
class PatchTable:
    """A variant's per-patch results (one entry per patch, in evaluation order).

    Attributes:
        patch: ``case/slice`` names.
        case: case names.
        slice_index: index of each patch in its full sequence (-1 when unknown).
        degraded: 1.0 / 0.0, ``nan`` when the datalist has no flags.
        dice: per-patch Dice (``nan``: no glomerulus, left out).
        counts: ``[P, 3]`` object TP, FP, FN (``nan`` rows when absent).
        quality: per-patch slice-quality labels (``clean``, damage kinds, ``degraded``, ``unknown``).
    """

    patch: list[str]
    case: list[str]
    slice_index: np.ndarray
    degraded: np.ndarray
    dice: np.ndarray
    counts: np.ndarray
    quality: list[tuple[str, ...]]


def _number(text: str, path: Path, line: int, column: str) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}: column {column!r} is not a number: {text!r}") from None


def read_per_patch(path: str | Path, kinds: dict[tuple[str, int], list[str]] | None = None) -> PatchTable:
    """Read a :class:`~pathseqsam.engine.PerPatchSaver` CSV.

    Args:
        path: the CSV.
        kinds: damage kinds per ``(case, slice_index)`` (:func:`damage_kinds`) to label degraded patches.

    Returns:
        The table.

    Raises:
        ValueError: missing columns or non-numeric values (the message names the file and line).
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(PER_PATCH_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a per-patch table, columns {sorted(missing)} are missing")
        rows = list(reader)
    num = {
        col: np.array([_number(r[col], path, i + 2, col) for i, r in enumerate(rows)], dtype=np.float64)
        for col in ("slice_index", "degraded", "dice", "tp", "fp", "fn")
    }
    case = [r["case"] for r in rows]
    index = np.nan_to_num(num["slice_index"], nan=-1).astype(np.int64)
    quality = []
    for c, i, d in zip(case, index, num["degraded"]):
        if np.isnan(d):
            quality.append(("unknown",))
        elif d == 0:
            quality.append(("clean",))
        else:
            quality.append(tuple((kinds or {}).get((c, int(i))) or ("degraded",)))
    return PatchTable(
        patch=[r["patch"] for r in rows],
        case=case,
        slice_index=index,
        degraded=num["degraded"],
        dice=num["dice"],
        counts=np.stack([num["tp"], num["fp"], num["fn"]], axis=1).reshape(-1, 3),
        quality=quality,
    )


def damage_kinds(meta_path: str | Path) -> dict[tuple[str, int], list[str]]:
    """Damage kinds of every damaged synthetic section, from ``synthetic_meta.json``.

    Args:
        meta_path: the generator's metadata file (absent for real data: returns ``{}``).

    Returns:
        ``{(case, section index): ["fade", "blur", ...]}`` for damaged sections.
    """
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text())
    out: dict[tuple[str, int], list[str]] = {}
    for case in meta.get("case_meta", []):
        for i, damage in enumerate(case.get("damage", [])):
            if damage.get("kinds"):
                out[(str(case["case"]), i)] = list(damage["kinds"])
    return out


def variant_summary(table: PatchTable) -> dict[str, Any]:
    """Dice summaries on all, degraded and clean patches, and pooled object F1.

    Returns:
        ``{"all": summarise(...), "degraded": ..., "clean": ..., "object_f1": float, "tp", "fp", "fn"}``.
    """
    degraded = table.degraded == 1
    clean = table.degraded == 0
    counts = table.counts[~np.isnan(table.counts).any(axis=1)]
    tp, fp, fn = (float(v) for v in counts.sum(axis=0)) if len(counts) else (math.nan,) * 3
    return {
        "all": summarise(table.dice),
        "degraded": summarise(table.dice[degraded]),
        "clean": summarise(table.dice[clean]),
        "object_f1": pooled_f1(tp, fp, fn) if len(counts) else math.nan,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def paired_difference(
    a: np.ndarray, b: np.ndarray, n_boot: int = 5000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Per-patch paired difference ``a - b`` over patches where both are finite.

    Args:
        a: per-patch values of one variant.
        b: the other variant's values for the same patches, same order.
        n_boot: bootstrap resamples for the confidence interval of the mean difference.
        seed: bootstrap seed (deterministic reports).
        level: confidence level of the percentile interval.

    Returns:
        ``mean``, ``sd`` (population), ``ci_low``, ``ci_high``, ``n``, ``wins`` (a > b), ``losses``,
        ``ties``; NaN statistics when no patch is finite in both.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same patches: {a.shape} vs {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    out = {
        "n": int(d.size),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
    }
    if d.size == 0:
        return {**out, "mean": math.nan, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {
        **out,
        "mean": float(d.mean()),
        "sd": float(d.std()),
        "ci_low": float(low),
        "ci_high": float(high),
    }
