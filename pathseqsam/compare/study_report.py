"""The mechanisms study's report, computed from ``cells.csv.gz`` alone.

Every figure of ``report.md`` is also in ``report.json`` (same numbers, unrounded), and both are a
function of the rows of ``cells.csv.gz`` (:func:`build_report`), with the protocol's statistics:
per (arm, seed, case) means over the selected slices, then over cases, then over seeds; intervals
from the crossed seed-and-case bootstrap (:mod:`pathseqsam.compare.bootstrap`).

Plots: ``dice_per_arm.png`` (degraded-slice Dice per arm and test set, with intervals) and
``dice_per_damage_kind.png`` (per damage kind on the all-dials set).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write, atomic_write_json, atomic_write_text
from pathseqsam.compare.bootstrap import BOOTSTRAP_RESAMPLES, case_scores, crossed_bootstrap
from pathseqsam.compare.cells import read_cells_csv

__all__ = [
    "CONTRASTS",
    "DAMAGE_KINDS",
    "MIN_EFFECT",
    "PRIMARY",
    "SUBSETS",
    "build_report",
    "load_report",
    "verdict",
]

PRIMARY = {"dial": "all", "subset": "degraded", "contrast": ("pathseqsam", "sam2_memory")}
MIN_EFFECT = 0.02  # the smallest effect that counts: 2 Dice points
CONTRASTS = {
    "Eq. 1 alone (memory_last - sam2_memory)": ("memory_last", "sam2_memory"),
    "Eq. 1 on top of Eq. 2 (pathseqsam - distance_none)": ("pathseqsam", "distance_none"),
    "Eq. 2 alone (distance_none - sam2_memory)": ("distance_none", "sam2_memory"),
    "Eq. 2 on top of Eq. 1 (pathseqsam - memory_last)": ("pathseqsam", "memory_last"),
    "both (pathseqsam - sam2_memory)": ("pathseqsam", "sam2_memory"),
    "memory at all (sam2_memory - sam2_per_slice)": ("sam2_memory", "sam2_per_slice"),
    "control (pathseqsam - pathseqsam_shuffled)": ("pathseqsam", "pathseqsam_shuffled"),
}
SUBSETS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "degraded": lambda r: r["degraded"] == 1,
    "clean": lambda r: r["degraded"] == 0,
    "all slices": lambda r: True,
}
DAMAGE_KINDS = ("fade", "blur", "fold", "tear", "loss")
ARM_ORDER = (
    "sam2_per_slice",
    "sam2_memory",
    "memory_last",
    "distance_none",
    "pathseqsam",
    "pathseqsam_shuffled",
    "dynunet",
    "swinunetr",
)


def verdict(low: float, value: float, high: float, min_effect: float = MIN_EFFECT) -> str:
    """The protocol's reading of an effect and its interval (Dice as fractions)."""
    if value >= min_effect and low > 0:
        return "a gain that counts"
    if -min_effect < low and high < min_effect:
        return "no effect that counts"
    return "inconclusive at this size"


def _estimate(rows: list[dict], arms: list[str], where, contrast, resamples: int) -> dict[str, Any] | None:
    scores, _, _ = case_scores(rows, arms, where=where)
    if scores.size == 0 or np.isnan(scores).all() or any(np.isnan(scores[i]).all() for i in range(len(arms))):
        return None
    est = crossed_bootstrap(scores, contrast=contrast, resamples=resamples)
    return {
        "value": est.value,
        "low": est.low,
        "high": est.high,
        "seeds": est.seeds,
        "cases": est.cases,
        "cases_scored": int((~np.isnan(scores[0])).any(axis=0).sum()),
    }


def _by(rows: list[dict], key: str) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def build_report(
    csv_path: str | Path, out_dir: str | Path, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, Any]:
    """Compute every figure from ``csv_path``; write ``report.json``, ``report.md`` and the plots.

    Args:
        csv_path: the study's ``cells.csv.gz``.
        out_dir: where the report goes.
        resamples: bootstrap resamples (the protocol's 10,000; fewer only in tests).

    Returns:
        The figures (as in ``report.json``).
    """
    rows = read_cells_csv(csv_path)
    if not rows:
        raise ValueError(f"{csv_path}: no rows; run the study first")
    by_dial = _by(rows, "dial")
    present = [a for a in ARM_ORDER if any(r["arm"] == a for r in rows)]
    present += sorted({r["arm"] for r in rows} - set(present))
    figures: dict[str, Any] = {
        "source": str(Path(csv_path).name),
        "rows": len(rows),
        "resamples": resamples,
        "arms": {},
        "contrasts": {},
        "damage_kinds": {},
    }
    for dial, dial_rows in by_dial.items():
        for subset, where in SUBSETS.items():
            for arm in present:
                est = _estimate(dial_rows, [arm], where, None, resamples)
                if est is not None:
                    figures["arms"].setdefault(dial, {}).setdefault(subset, {})[arm] = est
            for name, (a, b) in CONTRASTS.items():
                if a in present and b in present:
                    est = _estimate(dial_rows, [a, b], where, [1, -1], resamples)
                    if est is not None:
                        figures["contrasts"].setdefault(dial, {}).setdefault(subset, {})[name] = est
        for kind in DAMAGE_KINDS:  # a slice with two kinds counts under each
            where = lambda r, k=kind: k in r["damage_kind"].split("+")  # noqa: E731
            for arm in present:
                est = _estimate(dial_rows, [arm], where, None, resamples)
                if est is not None:
                    figures["damage_kinds"].setdefault(dial, {}).setdefault(kind, {})[arm] = est
        empty = [r for r in dial_rows if r["truth_empty"]]
        figures.setdefault("empty_truth", {})[dial] = {
            arm: float(np.mean([r["dice"] for r in empty if r["arm"] == arm])) for arm in present if empty
        }
    a, b = PRIMARY["contrast"]
    primary = None
    if PRIMARY["dial"] in by_dial and a in present and b in present:
        primary = _estimate(by_dial[PRIMARY["dial"]], [a, b], SUBSETS["degraded"], [1, -1], resamples)
    if primary is not None:
        primary["verdict"] = verdict(primary["low"], primary["value"], primary["high"])
    figures["primary"] = primary
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "report.json", figures)
    atomic_write_text(out_dir / "report.md", _markdown(figures, present))
    _plots(figures, present, out_dir)
    return figures


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _cell(est: dict[str, Any] | None, signed: bool = False) -> str:
    if est is None:
        return "-"
    fmt = _pts if signed else (lambda v: f"{100 * v:.2f}")
    return f"{fmt(est['value'])} ({fmt(est['low'])}..{fmt(est['high'])})"


def _markdown(fig: dict[str, Any], arms: list[str]) -> str:
    lines = [
        "# Mechanisms study: report",
        "",
        f"Computed from `{fig['source']}` ({fig['rows']} slice rows) by `pathseqsam.compare.study_report` "
        "(protocol: `protocol.md`). Dice in points; intervals: 95 % crossed seed-and-case bootstrap, "
        f"{fig['resamples']} resamples.",
        "",
        "## Primary endpoint",
        "",
    ]
    p = fig["primary"]
    if p is None:
        lines.append("Not available: the all-dials set lacks `pathseqsam` or `sam2_memory` rows.")
    else:
        lines.append(
            f"All-dials set, degraded slices, `pathseqsam` - `sam2_memory`: **{_cell(p, True)}** "
            f"({p['seeds']} seeds, {p['cases_scored']} of {p['cases']} cases with a degraded slice): {p['verdict']}."
        )
    lines += ["", "## Each arm, degraded slices", ""]
    dials = list(fig["arms"])
    lines += ["| arm | " + " | ".join(dials) + " |", "|---|" + "---|" * len(dials)]
    for arm in arms:
        cells = [_cell(fig["arms"][d].get("degraded", {}).get(arm)) for d in dials]
        lines.append(f"| `{arm}` | " + " | ".join(cells) + " |")
    for subset in SUBSETS:
        lines += ["", f"## What each mechanism buys: {subset}", ""]
        lines += ["| contrast | " + " | ".join(dials) + " |", "|---|" + "---|" * len(dials)]
        for name in CONTRASTS:
            cells = [_cell(fig["contrasts"].get(d, {}).get(subset, {}).get(name), True) for d in dials]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per damage kind (degraded slices with that kind; a slice with two kinds counts under each)",
        "",
    ]
    for dial, kinds in fig["damage_kinds"].items():
        lines += [f"### `{dial}`", "", "| arm | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for arm in arms:
            lines.append(f"| `{arm}` | " + " | ".join(_cell(kinds[k].get(arm)) for k in kinds) + " |")
        lines.append("")
    lines += ["## Slices with an empty truth (share scored 1: nothing predicted)", ""]
    lines += ["| test set | " + " | ".join(f"`{a}`" for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for dial, shares in fig.get("empty_truth", {}).items():
        lines.append(
            f"| {dial} | " + " | ".join(f"{100 * shares[a]:.1f}" if a in shares else "-" for a in arms) + " |"
        )
    return "\n".join(lines) + "\n"


def _plots(fig: dict[str, Any], arms: list[str], out_dir: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(figure: Any, name: str) -> None:
        figure.tight_layout()
        atomic_write(out_dir / name, lambda tmp: figure.savefig(tmp, format="png", dpi=110))

    dials = list(fig["arms"])
    figure = Figure(figsize=(1.6 + 1.4 * len(dials), 4.0))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        ests = [fig["arms"][d].get("degraded", {}).get(arm) for d in dials]
        xs = [j + (i - len(arms) / 2 + 0.5) * width for j, e in enumerate(ests) if e]
        vals = [100 * e["value"] for e in ests if e]
        errs = [
            [100 * (e["value"] - e["low"]) for e in ests if e],
            [100 * (e["high"] - e["value"]) for e in ests if e],
        ]
        ax.bar(xs, vals, width, yerr=errs, label=arm, color=f"C{i % 10}", capsize=2)
    ax.set_xticks(range(len(dials)), dials)
    ax.set_ylabel("Dice of degraded slices (points)")
    ax.set_title("per arm and test set (95 % crossed bootstrap)")
    ax.legend(fontsize=7, ncol=2)
    save(figure, "dice_per_arm.png")

    kinds_fig = fig["damage_kinds"].get(PRIMARY["dial"]) or next(iter(fig["damage_kinds"].values()), {})
    figure = Figure(figsize=(1.6 + 1.4 * max(len(kinds_fig), 1), 4.0))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    kinds = list(kinds_fig)
    for i, arm in enumerate(arms):
        ests = [kinds_fig[k].get(arm) for k in kinds]
        xs = [j + (i - len(arms) / 2 + 0.5) * width for j, e in enumerate(ests) if e]
        ax.bar(xs, [100 * e["value"] for e in ests if e], width, label=arm, color=f"C{i % 10}")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("Dice (points)")
    ax.set_title(f"per damage kind, test set {PRIMARY['dial']!r}")
    ax.legend(fontsize=7, ncol=2)
    save(figure, "dice_per_damage_kind.png")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read ``report.json``."""
    return json.loads(Path(path).read_text())
