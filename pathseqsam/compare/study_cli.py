"""``scripts/study_mechanisms.py``: run, resume or price the mechanisms study's grid.

Examples::

    python scripts/study_mechanisms.py --estimate-only            # measure and print the grid's cost
    python scripts/study_mechanisms.py --max-cells 4              # compute 4 more cells, then stop
    python scripts/study_mechanisms.py                            # run (or resume) the whole grid
    python scripts/study_mechanisms.py --smoke --out /tmp/smoke   # the tiny grid CI runs
    python scripts/study_mechanisms.py --report-only              # report.md from cells.csv.gz
    python scripts/study_mechanisms.py --check-leakage            # leakage.json (positions, truth, cases)

The grid is :data:`pathseqsam.compare.study.GRID` (the protocol in
``docs/experiments/mechanisms/protocol.md``). Its finished cells are kept in the repository, in
``docs/experiments/mechanisms/cells/``, so a grid longer than one session is committed cell by cell
and resumes on another machine (the generated data and the weights stay in ``--out``); its rows go to
``docs/experiments/mechanisms/cells.csv.gz``. A rerun skips finished cells and refuses cells made by
other model or training code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pathseqsam.compare.cells import CellMismatchError
from pathseqsam.compare.study import COMPRESSION, GRID, SMOKE, StudySettings, run_study

__all__ = ["DEFAULT_CELLS", "DEFAULT_CSV", "DEFAULT_OUT", "main"]

DEFAULT_OUT = Path("outputs/study_mechanisms")
DEFAULT_CSV = Path("docs/experiments/mechanisms/cells.csv.gz")
DEFAULT_CELLS = Path("docs/experiments/mechanisms/cells")
# the memory-compression measurement (--grid compression): its own folders
COMPRESSION_OUT = Path("outputs/memory_cost")
COMPRESSION_DIR = Path("docs/experiments/memory_cost")


def _configs(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    for candidate in (Path("bundle/configs"), Path(__file__).resolve().parents[2] / "bundle" / "configs"):
        if (candidate / "train.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "bundle/configs/train.json not found: run from the repository root or pass --configs"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status (2: bad settings or cells from other code).
    """
    p = argparse.ArgumentParser(
        prog="study_mechanisms.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="the tiny grid (two arms, two seeds, one epoch)")
    p.add_argument(
        "--grid",
        choices=("mechanisms", "compression"),
        default="mechanisms",
        help="the mechanism study (default) or the memory-compression measurement (trained pathseqsam, "
        "3 seeds at 256 px, compression off and on; folders docs/experiments/memory_cost/, outputs/memory_cost/)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help=f"study folder (default {DEFAULT_OUT}; smoke: required)"
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help=f"gathered rows (default {DEFAULT_CSV}; smoke: <out>/cells.csv.gz)",
    )
    p.add_argument(
        "--cells",
        type=Path,
        default=None,
        help=f"cell store (default {DEFAULT_CELLS}; smoke: <out>/cells)",
    )
    p.add_argument(
        "--configs", type=Path, default=None, help="bundle configs folder (default bundle/configs)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's)")
    p.add_argument(
        "--max-cells", type=int, default=None, help="compute at most this many new cells, then stop"
    )
    p.add_argument("--estimate-only", action="store_true", help="measure and print the cost, then stop")
    p.add_argument("--no-estimate", action="store_true", help="skip the cost measurement")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write report.md, report.json and the plots beside --csv from its rows, then stop",
    )
    p.add_argument(
        "--check-leakage",
        action="store_true",
        help="check that no test case, truth or damage-bearing position reaches a trained model "
        "(the protocol's leakage check); writes leakage.json beside --csv, exit 1 when a check fails",
    )
    args = p.parse_args(argv)
    compression = args.grid == "compression"
    settings = SMOKE if args.smoke else COMPRESSION if compression else GRID
    if args.smoke and compression:
        from dataclasses import replace

        settings = replace(SMOKE, arms=("pathseqsam",), shuffled_control=False, compression_control=(64.0,))
    if args.smoke and args.out is None:
        p.error("--smoke needs --out (the smoke grid never writes into the study's own folders)")
    out = args.out or (COMPRESSION_OUT if compression else DEFAULT_OUT)
    home = COMPRESSION_DIR if compression else DEFAULT_CSV.parent
    csv = args.csv or (out / "cells.csv.gz" if args.smoke else home / "cells.csv.gz")
    cells = args.cells or (out / "cells" if args.smoke else home / "cells")
    if args.report_only and compression:
        from pathseqsam.compare.compression_report import build_compression_report

        try:
            figures = build_compression_report(csv)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {csv.parent / 'report.md'}; default may change: {figures['default_may_change']}")
        return 0
    if args.report_only:
        from pathseqsam.compare.study_report import build_report

        try:
            figures = build_report(csv, csv.parent)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        primary = figures["primary"]
        print(
            f"wrote {csv.parent / 'report.md'}; primary endpoint: "
            + (
                "not available"
                if primary is None
                else f"{100 * primary['value']:+.2f} ({100 * primary['low']:+.2f}..{100 * primary['high']:+.2f}) points, "
                f"{primary['verdict']}"
            )
        )
        return 0
    if args.check_leakage:
        return _check_leakage(settings, out, _configs(args.configs), csv.parent / "leakage.json")
    try:
        run_study(
            settings,
            out,
            _configs(args.configs),
            csv,
            device=args.device,
            max_cells=args.max_cells,
            estimate=not args.no_estimate,
            estimate_only=args.estimate_only,
            cells_dir=cells,
        )
    except (CellMismatchError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _check_leakage(settings: StudySettings, out: Path, configs: Path, target: Path) -> int:
    from pathseqsam.atomic import atomic_write_json
    from pathseqsam.compare.leakage import check_leakage
    from pathseqsam.compare.study import prepare_data

    result = check_leakage(settings, prepare_data(settings, out), out, configs)
    atomic_write_json(target, result)
    blind = ", ".join(
        f"{b['arm']}: {'identical' if b['identical'] else 'DIFFERENT'}" for b in result["truth_blind"]
    )
    print(
        f"wrote {target}: test slices found in training {len(result['shared_slices'])}, "
        f"test blocks found in training {len(result['shared_blocks'])}, "
        f"nulls gaps constant {result['nulls_gaps_constant']}, predictions with labels zeroed: {blind}; "
        + ("clean" if result["clean"] else "LEAKAGE CHECK FAILED")
    )
    return 0 if result["clean"] else 1
