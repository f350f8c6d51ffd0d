"""Report of the memory-compression measurement, computed from its ``cells.csv.gz`` alone.

Per test set, on all slices and on degraded slices: the Dice of the trained full model without
compression (``pathseqsam``) and with it (``pathseqsam_compressed``, the same weights), and the
paired difference with a crossed-bootstrap interval over seeds and cases
(:func:`pathseqsam.compare.bootstrap.crossed_bootstrap`; slices are never resampled). The setting
may become the default only if the lower 95 % bound of (on - off) is >= -0.5 Dice points on every
test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write, atomic_write_json
from pathseqsam.compare.bootstrap import case_scores, crossed_bootstrap
from pathseqsam.compare.cells import read_cells_csv

__all__ = ["DEFAULT_CHANGE_BOUND", "build_compression_report"]

ARMS = ("pathseqsam_compressed", "pathseqsam")
DEFAULT_CHANGE_BOUND = -0.005  # -0.5 Dice points


def build_compression_report(csv_path: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``report.md`` and ``report.json`` beside ``csv_path``; returns the figures."""
    rows = read_cells_csv(csv_path)
    out = Path(out_dir) if out_dir is not None else Path(csv_path).parent
    figures: dict[str, Any] = {"sets": {}}
    for dial in sorted({r["dial"] for r in rows}):
        sub = [r for r in rows if r["dial"] == dial]
        entry = {}
        for subset, where in (("all slices", None), ("degraded slices", lambda r: bool(r["degraded"]))):
            scores, seeds, cases = case_scores(sub, list(ARMS), "dice", where)
            if np.isnan(scores).all():  # e.g. no degraded slice in this set
                continue
            entry[subset] = {
                "on": crossed_bootstrap(scores[0]).__dict__,
                "off": crossed_bootstrap(scores[1]).__dict__,
                "on - off": crossed_bootstrap(scores, [1.0, -1.0]).__dict__,
                "seeds": len(seeds),
                "cases": len(cases),
            }
        figures["sets"][dial] = entry
    lows = [e["all slices"]["on - off"]["low"] for e in figures["sets"].values()]
    figures["default_may_change"] = bool(lows) and min(lows) >= DEFAULT_CHANGE_BOUND
    atomic_write_json(out / "report.json", figures)
    lines = [
        "# Distance-aware memory compression: quality",
        "",
        f"Computed from `{Path(csv_path).name}` by `python scripts/study_mechanisms.py --grid compression --report-only`.",
        "Dice x 100; differences with 95 % intervals resampling seeds and cases.",
        "",
        "| test set | slices | off | on | on - off | seeds x cases |",
        "|---|---|---|---|---|---|",
    ]
    for dial, entry in figures["sets"].items():
        for subset, e in entry.items():
            d = e["on - off"]
            lines.append(
                f"| {dial} | {subset} | {100 * e['off']['value']:.2f} | {100 * e['on']['value']:.2f} | "
                f"{100 * d['value']:+.2f} ({100 * d['low']:+.2f} .. {100 * d['high']:+.2f}) | {e['seeds']} x {e['cases']} |"
            )
    lines += [
        "",
        f"Default may change (lower bound of on - off >= {100 * DEFAULT_CHANGE_BOUND:+.1f} points on every set, all "
        f"slices): **{figures['default_may_change']}**",
        "",
    ]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return figures
