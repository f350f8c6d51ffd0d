"""The whole-slide sequence benchmark's report, computed from ``slides.csv`` alone.

Per correlation length ``ell``: every arm's mean (over slides, then seeds) and the contrasts
``sequence - per_tile`` and ``sequence_shuffled - per_tile`` with crossed-bootstrap intervals that
resample seeds and slides (:func:`pathseqsam.compare.bootstrap.crossed_bootstrap`); the goals of the
protocol (``docs/experiments/wsi_sequence/protocol.md``) checked; the flatness of the per-tile arm
over ``ell``; throughput as tiles per second of network time. Writes ``report.md``, ``report.json``
and ``report.png`` beside the CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write, atomic_write_json
from pathseqsam.compare.bootstrap import Estimate, case_scores, crossed_bootstrap

__all__ = ["METRICS", "build_report", "read_slides_csv"]

METRICS = ("f1_kpis", "dice_kpis", "f1", "dice")
ARMS = ("sequence", "per_tile", "sequence_shuffled", "sequence_compressed")
PRIMARY_ELL = "2"
NULL_ELL = "0"
SMALLEST_EFFECT = 0.02  # 2 points of KPIs object F1
NO_HARM = -0.005  # -0.5 points
THROUGHPUT_GOAL = 0.8
FLAT = 0.01  # +-1 point


def read_slides_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``slides.csv`` with numbers as numbers and ``case`` = ``slide`` (the bootstrap's unit)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    for r in rows:
        r["seed"] = int(r["seed"])
        for key in (*METRICS, "seconds"):
            r[key] = float(r[key])
        r["tiles"] = int(r["tiles"])
        r["case"] = r["slide"]
    return rows


def _fmt(e: Estimate | None) -> str:
    if e is None:
        return "n/a"
    return f"{100 * e.value:+.2f} ({100 * e.low:+.2f} .. {100 * e.high:+.2f})"


def build_report(csv_path: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compute every figure of the report from ``csv_path`` and write the report files.

    Returns:
        The figures (also ``report.json``).
    """
    rows = read_slides_csv(csv_path)
    out = Path(out_dir) if out_dir is not None else Path(csv_path).parent
    ells = sorted({r["ell"] for r in rows}, key=lambda e: float(e))
    present = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    figures: dict[str, Any] = {"ells": ells, "arms": present, "per_ell": {}}
    for ell in ells:
        sub = [r for r in rows if r["ell"] == ell]
        entry: dict[str, Any] = {}
        for metric in METRICS:
            scores, seeds, slides = case_scores(sub, present, value=metric)
            means = {a: crossed_bootstrap(scores[i]).__dict__ for i, a in enumerate(present)}
            contrasts = {}
            for other, base in (
                ("sequence", "per_tile"),
                ("sequence_shuffled", "per_tile"),
                ("sequence_compressed", "sequence"),
            ):
                if other in present and base in present:
                    w = [1.0 if a == other else -1.0 if a == base else 0.0 for a in present]
                    contrasts[f"{other} - {base}"] = crossed_bootstrap(scores, w).__dict__
            entry[metric] = {
                "means": means,
                "contrasts": contrasts,
                "seeds": len(seeds),
                "slides": len(slides),
            }
        figures["per_ell"][ell] = entry
    figures["throughput"] = {
        a: sum(r["tiles"] for r in rows if r["arm"] == a)
        / max(sum(r["seconds"] for r in rows if r["arm"] == a), 1e-9)
        for a in present
    }
    figures["goals"] = _goals(figures)
    figures["flatness"] = _flatness(figures)
    atomic_write_json(out / "report.json", figures)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(_markdown(figures, Path(csv_path).name)))
    _plot(figures, out / "report.png")
    return figures


def _est(figures: dict[str, Any], ell: str, metric: str, key: str) -> Estimate | None:
    entry = figures["per_ell"].get(ell, {}).get(metric, {}).get("contrasts", {}).get(key)
    return None if entry is None else Estimate(**entry)


def _goals(figures: dict[str, Any]) -> dict[str, Any]:
    primary = _est(figures, PRIMARY_ELL, "f1_kpis", "sequence - per_tile")
    null = _est(figures, NULL_ELL, "f1_kpis", "sequence - per_tile")
    control = _est(figures, PRIMARY_ELL, "f1_kpis", "sequence_shuffled - per_tile")
    tp = figures["throughput"]
    ratio = (
        tp["sequence"] / tp["per_tile"]
        if {"sequence", "per_tile"} <= set(tp) and tp["per_tile"] > 0
        else None
    )
    return {
        "primary_gain_at_ell_2": None
        if primary is None
        else primary.value >= SMALLEST_EFFECT and primary.low > 0,
        "no_harm_at_ell_0": None if null is None else null.low >= NO_HARM,
        "throughput_ratio": ratio,
        "throughput_met": None if ratio is None else ratio >= THROUGHPUT_GOAL,
        "control_loses_gain": None if control is None else control.low <= 0,
    }


def _flatness(figures: dict[str, Any]) -> dict[str, Any]:
    values = {
        ell: figures["per_ell"][ell]["f1_kpis"]["means"]["per_tile"]["value"]
        for ell in figures["ells"]
        if "per_tile" in figures["per_ell"][ell]["f1_kpis"]["means"]
    }
    if not values:
        return {"flat": None}
    mean = float(np.mean(list(values.values())))
    return {
        "per_tile_f1_kpis": values,
        "mean": mean,
        "flat": all(abs(v - mean) <= FLAT for v in values.values()),
    }


def _markdown(figures: dict[str, Any], csv_name: str) -> str:
    lines = [
        "# Whole-slide sequence benchmark: report",
        "",
        f"Computed from `{csv_name}` by `python scripts/benchmark_wsi_sequence.py --report-only`; protocol in",
        "`protocol.md`. Differences in points (x 100) with 95 % intervals that resample seeds and slides.",
        "",
        "| ell (strides) | metric | sequence | per_tile | shuffled | sequence - per_tile | shuffled - per_tile "
        "| compressed - sequence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ell in figures["ells"]:
        for metric in METRICS:
            e = figures["per_ell"][ell][metric]
            means = {a: f"{100 * e['means'][a]['value']:.2f}" if a in e["means"] else "n/a" for a in ARMS}
            c1 = _est(figures, ell, metric, "sequence - per_tile")
            c2 = _est(figures, ell, metric, "sequence_shuffled - per_tile")
            c3 = _est(figures, ell, metric, "sequence_compressed - sequence")
            lines.append(
                f"| {ell} | {metric} | {means['sequence']} | {means['per_tile']} | {means['sequence_shuffled']} "
                f"| {_fmt(c1)} | {_fmt(c2)} | {_fmt(c3)} |"
            )
    g, f = figures["goals"], figures["flatness"]
    tp = figures["throughput"]
    lines += [
        "",
        "## Goals",
        "",
        f"- primary (ell 2, KPIs F1 gain >= 2 points, lower bound > 0): **{g['primary_gain_at_ell_2']}**",
        f"- no harm at ell 0 (lower bound >= -0.5 points): **{g['no_harm_at_ell_0']}**",
        "- throughput sequence / per-tile: "
        + ("n/a" if g["throughput_ratio"] is None else f"**{g['throughput_ratio']:.2f}**")
        + f" (goal >= {THROUGHPUT_GOAL}); tiles/s: "
        + ", ".join(f"{a} {v:.2f}" for a, v in tp.items()),
        f"- the control loses the gain (shuffled - per_tile at ell 2, lower bound <= 0): **{g['control_loses_gain']}**",
        "",
        "## Flatness of the per-tile arm over ell (KPIs F1 within +-1 point of its mean)",
        "",
        f"- flat: **{f['flat']}**; "
        + ", ".join(f"ell {k}: {100 * v:.2f}" for k, v in f.get("per_tile_f1_kpis", {}).items()),
        "",
    ]
    return "\n".join(lines)


def _plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ells = figures["ells"]
    for k, (key, colour) in enumerate(
        (("sequence - per_tile", "C0"), ("sequence_shuffled - per_tile", "C3"))
    ):
        xs, ys, lo, hi = [], [], [], []
        for i, ell in enumerate(ells):
            e = _est(figures, ell, "f1_kpis", key)
            if e is not None:
                xs.append(i + (k - 0.5) * 0.2)
                ys.append(100 * e.value)
                lo.append(100 * (e.value - e.low))
                hi.append(100 * (e.high - e.value))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=colour, capsize=4, label=key)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(100 * SMALLEST_EFFECT, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(ells)), [f"ell {e}" for e in ells])
    ax.set_ylabel("KPIs object F1 difference (points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
