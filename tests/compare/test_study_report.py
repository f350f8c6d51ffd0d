"""The mechanisms report's figures are computed from cells.csv.gz: recomputed here by hand from a
hand-made table, and they follow an edit of the table."""

from __future__ import annotations

import numpy as np
import pytest

from pathseqsam.compare.cells import write_cells_csv
from pathseqsam.compare.study_report import build_report, verdict

KINDS = ["none", "fold+blur", "loss", "none"]  # slice 1 has two kinds, slices 1 and 2 are degraded


def _table(bump: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for arm, base in (("sam2_memory", 0.60), ("pathseqsam", 0.66), ("pathseqsam_shuffled", 0.62)):
        for seed in (0, 1):
            for dial in ("nulls", "all"):
                for c in range(3):
                    for s, kind in enumerate(KINDS):
                        dice = float(np.clip(base + rng.normal(0, 0.05), 0, 1))
                        if (arm, seed, dial, c, s) == ("pathseqsam", 0, "all", 0, 1):
                            dice += bump
                        rows.append(
                            {"arm": arm, "seed": seed, "dial": dial, "case": f"c{c}", "slice": s,
                             "position_um": 7.5 * s, "damage_kind": kind, "degraded": int(kind != "none"),
                             "truth_empty": 0, "pred_empty": 0, "dice": round(dice, 6)}
                        )  # fmt: skip
    return rows


def _by_hand(rows: list[dict], arm: str, dial: str, keep) -> float:
    """Mean over a case's kept slices, then over cases, then over seeds: plain loops."""
    seed_means = []
    for seed in sorted({r["seed"] for r in rows}):
        case_means = []
        for case in sorted({r["case"] for r in rows}):
            values = [
                r["dice"] for r in rows
                if (r["arm"], r["seed"], r["dial"], r["case"]) == (arm, seed, dial, case) and keep(r)
            ]  # fmt: skip
            if values:
                case_means.append(sum(values) / len(values))
        seed_means.append(sum(case_means) / len(case_means))
    return sum(seed_means) / len(seed_means)


def test_report_figures_are_recomputed_from_the_csv(tmp_path):
    rows = _table()
    csv = write_cells_csv(tmp_path / "cells.csv.gz", rows)
    fig = build_report(csv, tmp_path, resamples=300)
    rows = [{**r, "dice": round(r["dice"], 6)} for r in rows]
    degraded = lambda r: r["degraded"] == 1  # noqa: E731
    want = _by_hand(rows, "pathseqsam", "all", degraded) - _by_hand(rows, "sam2_memory", "all", degraded)
    assert fig["primary"]["value"] == pytest.approx(want, abs=1e-9)
    assert fig["primary"]["low"] <= want <= fig["primary"]["high"]
    assert fig["primary"]["seeds"] == 2 and fig["primary"]["cases"] == 3
    # per damage kind: the fold+blur slice counts under both kinds
    for kind in ("fold", "blur"):
        by_hand = _by_hand(rows, "pathseqsam", "all", lambda r, k=kind: k in r["damage_kind"].split("+"))
        assert fig["damage_kinds"]["all"][kind]["pathseqsam"]["value"] == pytest.approx(by_hand)
    control = fig["contrasts"]["nulls"]["all slices"]["control (pathseqsam - pathseqsam_shuffled)"]
    everything = lambda r: True  # noqa: E731
    assert control["value"] == pytest.approx(
        _by_hand(rows, "pathseqsam", "nulls", everything)
        - _by_hand(rows, "pathseqsam_shuffled", "nulls", everything)
    )
    text = (tmp_path / "report.md").read_text()
    p = fig["primary"]
    assert f"**{100 * want:+.2f} ({100 * p['low']:+.2f}..{100 * p['high']:+.2f})**" in text
    assert (tmp_path / "dice_per_arm.png").stat().st_size > 0
    assert (tmp_path / "dice_per_damage_kind.png").stat().st_size > 0

    # one slice of the table moves: the primary moves by its share (1 of 2 degraded slices of 1 of 3
    # cases of 1 of 2 seeds)
    write_cells_csv(tmp_path / "cells.csv.gz", _table(bump=0.3))
    moved = build_report(tmp_path / "cells.csv.gz", tmp_path, resamples=300)
    assert moved["primary"]["value"] - p["value"] == pytest.approx(0.3 / 2 / 3 / 2, abs=1e-5)


def test_verdict_reads_the_protocol():
    assert verdict(0.001, 0.025, 0.05) == "a gain that counts"
    assert verdict(-0.015, 0.0, 0.019) == "no effect that counts"
    assert verdict(-0.01, 0.015, 0.04) == "inconclusive at this size"
    assert verdict(0.005, 0.015, 0.025) == "inconclusive at this size"  # clear, but below 2 points
