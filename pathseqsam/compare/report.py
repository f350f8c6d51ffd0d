"""``report.csv`` and ``report.md`` of a comparison: one row per variant, paired gains of PathSeqSAM.

``report.csv`` holds fractions at full precision (for machines, and the tests that read it back);
``report.md`` shows Dice in percent like the paper's Table 1, the paired differences of the reference
variant against every other, with bootstrap confidence intervals, and plain-language verdicts.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write, atomic_write_text
from pathseqsam.compare.stats import PatchTable, paired_difference, variant_summary

__all__ = [
    "PAPER_TABLE1",
    "REPORT_COLUMNS",
    "comparisons",
    "report_rows",
    "write_report_csv",
    "write_report_md",
]

REPORT_COLUMNS = (
    "variant",
    "group",
    "overlays",
    "dice_mean",
    "dice_sd",
    "dice_n",
    "degraded_dice_mean",
    "degraded_dice_sd",
    "degraded_dice_n",
    "clean_dice_mean",
    "clean_dice_sd",
    "clean_dice_n",
    "object_f1",
    "object_tp",
    "object_fp",
    "object_fn",
    "best_val_dice",
    "epochs",
    "max_epochs",
    "stopped_by_budget",
    "train_seconds",
    "eval_seconds",
    "params_trainable",
    "params_total",
    "description",
)

# a resolved mean difference below this (1 Dice point) is called negligible
NEGLIGIBLE = 0.01

# the variant without memory: its clean-vs-degraded gap is what memory could win back
NO_MEMORY_VARIANT = "sam2_per_slice"

# below this many paired patches no difference is called resolved (a bootstrap of a handful of
# values gives intervals that are far too narrow)
MIN_PATCHES = 10

# KPIs patch-level Dice % (mean +- SD) from the paper's Table 1
PAPER_TABLE1 = (
    ("nnUNet", 88.79, 5.38),
    ("Swin-Unet", 89.65, 6.41),
    ("SAM2", 92.48, 6.13),
    ("PathSeqSAM", 94.71, 5.89),
)


def report_rows(results: Sequence[dict[str, Any]], tables: dict[str, PatchTable]) -> list[dict[str, Any]]:
    """One report row per variant from its ``result.json`` record and per-patch table.

    Args:
        results: records of :func:`~pathseqsam.compare.runner.run_variant`, in report order.
        tables: per-patch tables by variant name.

    Returns:
        Dicts with the keys of :data:`REPORT_COLUMNS`.
    """
    rows = []
    for r in results:
        s = variant_summary(tables[r["variant"]])
        row: dict[str, Any] = {
            "variant": r["variant"],
            "group": r["group"],
            "overlays": " ".join(r["overlays"]),
            "object_f1": s["object_f1"],
            "object_tp": s["tp"],
            "object_fp": s["fp"],
            "object_fn": s["fn"],
            "description": r["description"],
        }
        for prefix, key in (("dice", "all"), ("degraded_dice", "degraded"), ("clean_dice", "clean")):
            row.update(
                {
                    f"{prefix}_mean": s[key]["mean"],
                    f"{prefix}_sd": s[key]["std"],
                    f"{prefix}_n": s[key]["count"],
                }
            )
        for key in REPORT_COLUMNS:
            if key not in row:
                row[key] = r.get(key)
        rows.append(row)
    return rows


def write_report_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``report.csv`` atomically (floats at full precision, ``nan`` for undefined values)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
            writer.writeheader()
            writer.writerows({k: ("" if row[k] is None else row[k]) for k in REPORT_COLUMNS} for row in rows)

    return atomic_write(path, write)


def comparisons(reference: str, tables: dict[str, PatchTable], others: Sequence[str]) -> list[dict[str, Any]]:
    """Paired per-patch Dice differences ``reference - other`` on all and on degraded patches.

    Args:
        reference: the variant compared against the others (PathSeqSAM).
        tables: per-patch tables (all evaluated on the same patches, same order).
        others: variants to compare with.

    Returns:
        One dict per other variant: ``other``, ``all`` and ``degraded`` (:func:`paired_difference`).

    Raises:
        ValueError: the tables list different patches (not comparable).
    """
    ref = tables[reference]
    out = []
    for other in others:
        tab = tables[other]
        if tab.patch != ref.patch:
            raise ValueError(f"{reference} and {other} were evaluated on different patches: not comparable")
        degraded = ref.degraded == 1
        out.append(
            {
                "other": other,
                "all": paired_difference(ref.dice, tab.dice),
                "degraded": paired_difference(ref.dice[degraded], tab.dice[degraded]),
            }
        )
    return out


def _pct(mean: float | None, sd: float | None = None, n: int | None = None) -> str:
    """``mean +- sd (n=..)`` in percent; ``n/a`` for missing or NaN values."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{100 * mean:.2f}" if sd is None else f"{100 * mean:.2f} +- {100 * sd:.2f}"
    return text if n is None else f"{text} (n={n})"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def _verdict(reference: str, other: str, subset: str, d: dict[str, float]) -> str:
    if d["n"] == 0:
        return f"- {subset}: no {subset} patch with a glomerulus was evaluated, nothing to compare."
    direction = "gains" if d["mean"] > 0 else "loses" if d["mean"] < 0 else "changes nothing"
    excludes_zero = d["ci_low"] > 0 or d["ci_high"] < 0
    if d["n"] < MIN_PATCHES:
        resolved = f"too few patches (fewer than {MIN_PATCHES}) to tell a difference from chance"
    elif excludes_zero and abs(d["mean"]) < NEGLIGIBLE:
        resolved = f"the 95% interval excludes 0, but the difference is under {100 * NEGLIGIBLE:g} Dice point: negligible"
    elif excludes_zero:
        resolved = "the 95% interval excludes 0: a difference this run resolves"
    else:
        resolved = "the 95% interval includes 0: no difference this run can resolve"
    return (
        f"- {subset}: {reference} {direction} {100 * abs(d['mean']):.2f} Dice points against {other} "
        f"(mean paired difference {100 * d['mean']:+.2f}, 95% bootstrap CI {100 * d['ci_low']:+.2f} .. "
        f"{100 * d['ci_high']:+.2f}, n={d['n']} patches, better on {d['wins']}, worse on {d['losses']}); "
        f"{resolved}."
    )


def write_report_md(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    gains: Sequence[dict[str, Any]],
    reference: str | None,
    context: dict[str, Any],
    plots: dict[str, str],
) -> Path:
    """Write ``report.md`` atomically.

    Args:
        path: destination.
        rows: from :func:`report_rows`.
        gains: from :func:`comparisons` (empty without a reference variant).
        reference: the reference variant's name, or None.
        context: run facts shown in the header (command, wall time, data, split, budget, device, ...).
        plots: ``{title: relative path}`` of the PNG plots.

    Returns:
        The written path.
    """
    lines = ["# PathSeqSAM comparison", ""]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += [
        "",
        "Per-patch Dice in % (mean +- SD over patches with a glomerulus, n = patches), degraded = sections "
        "flagged as damaged in the datalist, object F1 at IoU >= 0.5 pooled over all patches. Training time: "
        "wall time of the training run (per-epoch validation included).",
        "",
        "| variant | Dice all | Dice degraded | Dice clean | object F1 | best val Dice | epochs | training time | "
        "parameters trainable / total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stopped = " (time budget)" if r["stopped_by_budget"] else ""
        lines.append(
            f"| {r['variant']} | {_pct(r['dice_mean'], r['dice_sd'], r['dice_n'])} | "
            f"{_pct(r['degraded_dice_mean'], r['degraded_dice_sd'], r['degraded_dice_n'])} | "
            f"{_pct(r['clean_dice_mean'], r['clean_dice_sd'], r['clean_dice_n'])} | "
            f"{_pct(r['object_f1'])} | {_pct(r['best_val_dice'])} | "
            f"{r['epochs']}/{r['max_epochs']}{stopped} | {_duration(r['train_seconds'])} | "
            f"{r['params_trainable']:,} / {r['params_total']:,} |"
        )
    lines += ["", "Variants:", ""]
    lines += [f"- `{r['variant']}` ({r['overlays'] or 'train.json'}): {r['description']}" for r in rows]
    if reference is not None and gains:
        lines += [
            "",
            f"## What {reference} gains (paired per-patch Dice differences)",
            "",
            f"`{reference}` minus the other variant on the same patches; 95% percentile bootstrap interval "
            "of the mean difference (5000 resamples, seed 0).",
            "",
        ]
        for g in gains:
            lines.append(f"`{reference}` vs `{g['other']}`:")
            lines.append("")
            lines.append(_verdict(reference, g["other"], "all slices", g["all"]))
            lines.append(_verdict(reference, g["other"], "degraded slices", g["degraded"]))
            lines.append("")
        ref_row = next(r for r in rows if r["variant"] == reference)
        widths = [
            g["degraded"]["ci_high"] - g["degraded"]["ci_low"]
            for g in gains
            if g["degraded"]["n"] >= MIN_PATCHES
        ]
        lines += [
            "Reading these numbers:",
            "",
            f"- {ref_row['degraded_dice_n']} degraded and {ref_row['clean_dice_n']} clean patches were scored; "
            + (
                f"the 95% intervals on degraded slices are {100 * float(np.median(widths)):.1f} Dice points wide "
                "(median), so smaller effects are invisible here."
                if widths
                else f"with fewer than {MIN_PATCHES} degraded patches no effect on them can be resolved."
            ),
            f"- {reference} reached {_pct(ref_row['clean_dice_mean'], ref_row['clean_dice_sd'])} on clean slices "
            f"after {ref_row['epochs']} epoch(s) ({_duration(ref_row['train_seconds'])}). Memory can only carry "
            "over what the model already segments on the clean neighbours of a degraded slice: while clean-slice "
            "Dice is low, a gain on degraded slices is not to be expected.",
        ]
        per_slice = next((r for r in rows if r["variant"] == NO_MEMORY_VARIANT), None)
        if per_slice is not None and per_slice["degraded_dice_n"] and per_slice["clean_dice_n"]:
            gap = per_slice["clean_dice_mean"] - per_slice["degraded_dice_mean"]
            lines.append(
                f"- Without memory (`{NO_MEMORY_VARIANT}`) degraded slices score "
                f"{_pct(per_slice['degraded_dice_mean'])} and clean ones {_pct(per_slice['clean_dice_mean'])}: "
                f"a gap of {100 * gap:.2f} Dice points, "
                + (
                    "about the most that memory can win back on degraded slices here."
                    if gap > 0
                    else "so degraded slices are not harder than clean ones for this model: memory has nothing "
                    "to win back on them here."
                )
            )
    lines += ["", "## Plots", ""]
    lines += [f"- {title}: `{rel}`" for title, rel in plots.items()]
    lines += [
        "",
        "## For reference: the paper's Table 1 (KPIs patch level, Dice %)",
        "",
        "| method | Dice |",
        "|---|---|",
    ]
    lines += [f"| {name} | {mean:.2f} +- {sd:.2f} |" for name, mean, sd in PAPER_TABLE1]
    return atomic_write_text(path, "\n".join(lines) + "\n")
