"""``scripts/benchmark_wsi_sequence.py``: run, resume or report the whole-slide sequence benchmark.

Examples::

    python scripts/benchmark_wsi_sequence.py                            # run (or resume) the grid
    python scripts/benchmark_wsi_sequence.py --max-cells 2              # 2 more cells, then stop
    python scripts/benchmark_wsi_sequence.py --report-only              # report.md from slides.csv
    python scripts/benchmark_wsi_sequence.py --smoke --out /tmp/smoke   # the tiny grid the tests run

The grid is :data:`pathseqsam.compare.wsi_sequence.GRID` (the protocol in
``docs/experiments/wsi_sequence/protocol.md``). Finished cells are kept in the repository
(``docs/experiments/wsi_sequence/cells/``) so the benchmark resumes on another machine; the generated
slides and the weights stay in ``--out``; rows go to ``docs/experiments/wsi_sequence/slides.csv``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pathseqsam.compare.cells import CellMismatchError
from pathseqsam.compare.study_cli import _configs
from pathseqsam.compare.wsi_sequence import GRID, SMOKE, run_benchmark

__all__ = ["DEFAULT_CELLS", "DEFAULT_CSV", "DEFAULT_OUT", "main"]

DEFAULT_OUT = Path("outputs/wsi_sequence")
DEFAULT_CSV = Path("docs/experiments/wsi_sequence/slides.csv")
DEFAULT_CELLS = Path("docs/experiments/wsi_sequence/cells")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status (2: bad settings or cells from other code).
    """
    p = argparse.ArgumentParser(
        prog="benchmark_wsi_sequence.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--smoke", action="store_true", help="the tiny grid (one seed, two ell, 1024 px slides, one epoch)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help=f"work folder (default {DEFAULT_OUT}; smoke: required)"
    )
    p.add_argument(
        "--cells", type=Path, default=None, help=f"cell store (default {DEFAULT_CELLS}; smoke: <out>/cells)"
    )
    p.add_argument(
        "--csv", type=Path, default=None, help=f"rows (default {DEFAULT_CSV}; smoke: <out>/slides.csv)"
    )
    p.add_argument(
        "--configs", type=Path, default=None, help="bundle configs folder (default bundle/configs)"
    )
    p.add_argument(
        "--max-cells", type=int, default=None, help="compute at most this many new cells, then stop"
    )
    p.add_argument(
        "--report-only", action="store_true", help="write report.md/json/png beside --csv, then stop"
    )
    args = p.parse_args(argv)
    if args.smoke and args.out is None:
        p.error("--smoke needs --out (the smoke grid never writes into the benchmark's own folders)")
    out = args.out or DEFAULT_OUT
    csv = args.csv or (out / "slides.csv" if args.smoke else DEFAULT_CSV)
    cells = args.cells or (out / "cells" if args.smoke else DEFAULT_CELLS)
    try:
        if not args.report_only:
            run_benchmark(
                SMOKE if args.smoke else GRID, out, _configs(args.configs), cells, csv, args.max_cells
            )
        from pathseqsam.compare.wsi_sequence_report import build_report

        figures = build_report(csv)
    except (CellMismatchError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {csv.parent / 'report.md'}; goals: {figures['goals']}")
    return 0
