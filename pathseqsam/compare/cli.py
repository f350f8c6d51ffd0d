"""One command that trains and evaluates a set of variants with one budget and writes the report.

Defaults: the tiny models on the bundle's synthetic demo set (generated on first use), on the
machine's default device, PathSeqSAM plus the four baselines, 36 minutes of training shared equally
(7.2 min each, at most the config's epochs; validation on the demo set's validation split picks each
variant's best model), evaluation of each best model on 10 fresh synthetic cases (100 patches, about
30 degraded; the demo set's own test split has 20): about 42 minutes on a 2-core CPU. On real
data (a dataset without ``synthetic_meta.json``) the ``--eval-split`` of its datalist is evaluated.
Output (``--out``, default ``outputs/compare``)::

    report.md, report.csv                     the table (mean +- SD per-patch Dice, degraded-only
                                              Dice, object F1, training time, parameters)
    dice_per_variant.png, dice_vs_quality.png the plots (per-patch Dice; Dice per slice quality)
    validation_curves.png                     validation Dice per epoch of every variant
    eval_data/                                the synthetic evaluation set (datalist_eval.json)
    <variant>/models/model.pt, <variant>/eval/{per_patch_test.csv, metrics.csv, curves.png, ...}
    <variant>/result.json                     what the report was built from

Examples::

    python scripts/compare.py                                   # the default comparison
    python scripts/compare.py --list                            # every variant and what it is
    python scripts/compare.py --variants pathseqsam sam2_per_slice memory_k1 memory_k3 --max-minutes 5
    python scripts/compare.py --variants all --epochs 2 --set image_size=128   # quick look at everything
    python scripts/compare.py --official --dataset-dir /data/KPIs --sam2-checkpoint sam2.1_hiera_base_plus.pt \\
        --device cuda --epochs 100                              # the paper's setting on real data
    python scripts/compare.py --report-only                     # rebuild the report from finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pathseqsam.atomic import atomic_write_json
from pathseqsam.compare.evalset import make_eval_set, synthetic_settings
from pathseqsam.compare.plots import dice_boxplot, dice_vs_quality, read_validation_curve, validation_curves
from pathseqsam.compare.report import comparisons, report_rows, write_report_csv, write_report_md
from pathseqsam.compare.runner import RunSettings, load_result, run_variant
from pathseqsam.compare.stats import damage_kinds, read_per_patch
from pathseqsam.compare.variants import REFERENCE_VARIANT, Variant, discover_variants, select_variants
from pathseqsam.synthetic import SYNTHETIC_META

__all__ = ["DEFAULT_EVAL_CASES", "DEFAULT_TOTAL_MINUTES", "OFFICIAL_OVERRIDES", "main", "parse_set"]

DEFAULT_TOTAL_MINUTES = 36.0
DEFAULT_EVAL_CASES = 10
CONTEXT_FILE = "comparison.json"  # how the comparison was run, for the report (and --report-only)
# the paper's model on KPIs patches (see bundle/docs/README.md): SAM2.1 b+ at 1024 px, distances in
# units of one patch (2048 px x 0.25 um); 0.5 um/px, so a 40x patch is one 1024 px slice; 8-slice
# windows are train.json's default (not set here, so that an overlay with its own window, memory_k7,
# keeps it)
OFFICIAL_OVERRIDES = {
    "model_name": "sam2.1_hiera_b+",
    "image_size": 1024,
    "model_mpp_um": 0.5,
    "distance_unit_um": 512.0,
}


def _say(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` config overrides; VALUE is read as JSON when it parses, else kept as a string.

    Raises:
        ValueError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. image_size=128), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=None, help="names, or all / baselines / ablations")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--out", type=Path, default=Path("outputs/compare"), help="output folder")
    p.add_argument(
        "--configs", type=Path, default=None, help="bundle configs folder (default bundle/configs)"
    )
    p.add_argument("--dataset-dir", default=None, help="dataset folder (default: the bundle's demo set)")
    p.add_argument("--datalist", default=None, help="datalist JSON (default: <dataset-dir>/datalist.json)")
    p.add_argument("--eval-split", default="test", help="datalist split to evaluate (default test)")
    p.add_argument(
        "--eval-cases",
        type=int,
        default=None,
        help=f"synthetic data: evaluate on this many fresh cases (default {DEFAULT_EVAL_CASES}) instead of "
        "the datalist's --eval-split; 0 evaluates the split",
    )
    budget = p.add_argument_group("budget (the same for every variant)")
    budget.add_argument("--epochs", type=int, default=None, help="max epochs (default: train.json's)")
    budget.add_argument("--max-minutes", type=float, default=None, help="wall-time budget per variant")
    budget.add_argument(
        "--total-minutes",
        type=float,
        default=None,
        help=f"training time shared equally by the variants (default {DEFAULT_TOTAL_MINUTES:g} "
        "unless --epochs, --max-minutes or --official is given)",
    )
    model = p.add_argument_group("model and hardware")
    model.add_argument("--model-name", default=None, help="tiny or sam2.1_hiera_{t,s,b+,l}")
    model.add_argument("--image-size", type=int, default=None)
    model.add_argument("--sam2-checkpoint", default=None, help="official SAM2.1 .pt for the SAM2 variants")
    model.add_argument(
        "--official",
        action="store_true",
        help="the paper's configuration: " + ", ".join(f"{k}={v}" for k, v in OFFICIAL_OVERRIDES.items()),
    )
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="further config overrides")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from finished variant runs")
    return p


def _configs_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg.resolve()
    for candidate in (Path("bundle/configs"), Path(__file__).resolve().parents[2] / "bundle" / "configs"):
        if (candidate / "train.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "bundle/configs/train.json not found: run from the repository root or pass --configs"
    )


def _overrides(args: argparse.Namespace, configs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"bundle_root": str(configs.parent)}
    if args.official:
        out.update(OFFICIAL_OVERRIDES)
    for key, value in (
        ("dataset_dir", args.dataset_dir),
        ("datalist", args.datalist),
        ("model_name", args.model_name),
        ("image_size", args.image_size),
        ("sam2_checkpoint", args.sam2_checkpoint),
    ):
        if value is not None:
            out[key] = (
                str(Path(value).resolve()) if key in ("dataset_dir", "datalist", "sam2_checkpoint") else value
            )
    if args.device is not None:
        out["device"] = f"$torch.device({args.device!r})"
        out["amp"] = args.device.startswith("cuda")
    out.update(parse_set(args.set))
    return out


def _budget(args: argparse.Namespace, n_variants: int) -> float | None:
    if args.max_minutes is not None and args.total_minutes is not None:
        raise ValueError("give --max-minutes (per variant) or --total-minutes (shared), not both")
    if args.max_minutes is not None:
        return args.max_minutes
    total = args.total_minutes
    if total is None and args.epochs is None and not args.official:
        total = DEFAULT_TOTAL_MINUTES
    return None if total is None else total / n_variants


def _prepare_data(configs: Path, overrides: dict[str, Any]) -> tuple[str, str]:
    """Resolve (and, for an empty demo folder, generate) the dataset before any timing starts."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.update(overrides)
    return str(parser.get_parsed_content("dataset_dir")), str(parser.get_parsed_content("datalist"))


def _eta(done: list[dict[str, Any]], remaining: int, budget_min: float | None) -> str:
    if remaining <= 0:
        return "0 min"
    if budget_min is not None:
        evals = [r["eval_seconds"] for r in done] or [30.0]
        per = 60 * budget_min + 20 + sum(evals) / len(evals)  # + last validation and checkpoints
    elif done:
        per = sum(r["train_seconds"] + r["eval_seconds"] for r in done) / len(done)
    else:
        return "unknown until the first variant finishes"
    return f"{math.ceil(remaining * per / 60)} min"


def _eval_datalist(args: argparse.Namespace, dataset_dir: str, out: Path) -> str | None:
    """The evaluation datalist: fresh synthetic cases for synthetic data (unless --eval-cases 0), else None."""
    if args.eval_cases == 0:
        return None
    if synthetic_settings(dataset_dir) is None:
        if args.eval_cases is not None:
            raise ValueError(
                f"--eval-cases needs a synthetic dataset; {dataset_dir} has no synthetic_meta.json"
            )
        return None
    if args.eval_split != "test":
        raise ValueError("--eval-split applies to the datalist's splits: add --eval-cases 0 to use it")
    cases = DEFAULT_EVAL_CASES if args.eval_cases is None else args.eval_cases
    _say(
        f"evaluation set: {cases} fresh synthetic cases in {out / 'eval_data'} (generated once, then reused)"
    )
    return str(make_eval_set(dataset_dir, out / "eval_data", cases))


def _device_text(device: str | None) -> str:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        threads = os.environ.get("OMP_NUM_THREADS")
        device += f" ({torch.get_num_threads()} torch threads" + (
            f", OMP_NUM_THREADS={threads})" if threads else ")"
        )
    return device


def _report(
    out: Path,
    variants: list[Variant],
    dataset_dir: str,
    datalist: str,
    context: dict[str, Any],
) -> Path:
    results = [load_result(out / v.name) for v in variants]
    eval_lists = sorted({r.get("eval_datalist") or "" for r in results})
    eval_dir = Path(eval_lists[0]).parent if eval_lists[0] else Path(dataset_dir)
    kinds = damage_kinds(eval_dir / SYNTHETIC_META)
    tables = {r["variant"]: read_per_patch(r["per_patch_csv"], kinds) for r in results}
    rows = report_rows(results, tables)
    write_report_csv(out / "report.csv", rows)
    plots = {
        "per-patch Dice per variant": dice_boxplot(tables, out / "dice_per_variant.png"),
        "Dice vs slice quality": dice_vs_quality(tables, out / "dice_vs_quality.png"),
    }
    # each run's validation curve, written by the bundle next to its per-patch table
    curve_files = {r["variant"]: Path(r["per_patch_csv"]).parent / "curves.csv" for r in results}
    curves = {name: read_validation_curve(f) for name, f in curve_files.items() if f.is_file()}
    if curves:
        plots["validation Dice per epoch"] = validation_curves(curves, out / "validation_curves.png")
    names = [r["variant"] for r in results]
    reference = REFERENCE_VARIANT if REFERENCE_VARIANT in names else None
    gains = comparisons(reference, tables, [n for n in names if n != reference]) if reference else []
    splits = ", ".join(sorted({r["eval_split"] for r in results}))
    parts = []
    for e in eval_lists:
        description = json.loads(Path(e).read_text()).get("description") if e else None
        parts.append(f"{splits} split of " + (f"{e}: {description}" if description else e or datalist))
    context = {**context, "evaluated": "; ".join(parts)}
    path = write_report_md(
        out / "report.md",
        rows,
        gains,
        reference,
        context,
        {title: p.name for title, p in plots.items()},
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison (see the module docstring). Returns the exit status (1 if a variant failed)."""
    args = _parser().parse_args(argv)
    configs = _configs_dir(args.configs)
    available = discover_variants(configs)
    if args.list:
        for v in available.values():
            print(f"{v.name:20s} {v.group:10s} {v.description}")
        return 0
    variants = select_variants(available, args.variants)
    overrides = _overrides(args, configs)
    budget_min = _budget(args, len(variants))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/compare.py " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    _say(f"variants: {', '.join(v.name for v in variants)}; output {out}")
    _say("data: resolving the datalist (the demo set is generated if its folder is empty)")
    dataset_dir, datalist = _prepare_data(configs, overrides)
    eval_datalist = None if args.report_only else _eval_datalist(args, dataset_dir, out)

    settings = RunSettings(
        configs_dir=configs,
        out_dir=out,
        overrides=overrides,
        max_minutes=budget_min,
        epochs=args.epochs,
        eval_split=args.eval_split,
        eval_datalist=eval_datalist,
    )
    budget_text = (f"{budget_min:.1f} min per variant, " if budget_min is not None else "") + (
        f"at most {args.epochs} epochs" if args.epochs is not None else "at most train.json's epochs"
    )
    failed: list[str] = []
    done: list[dict[str, Any]] = []
    if not args.report_only:
        for k, variant in enumerate(variants):
            elapsed = time.perf_counter() - t_start
            _say(
                f"[{k + 1}/{len(variants)}] {variant.name}: training ({budget_text}); "
                f"elapsed {elapsed / 60:.1f} min, ETA {_eta(done, len(variants) - k, budget_min)}"
            )
            try:
                record = run_variant(variant, settings)
            except Exception:  # one broken variant must not cost the others' results
                traceback.print_exc()
                _say(f"[{k + 1}/{len(variants)}] {variant.name}: FAILED (see the traceback above)")
                failed.append(variant.name)
                continue
            done.append(record)
            dice = record["eval_metrics"].get("val_mean_dice", math.nan)
            _say(
                f"[{k + 1}/{len(variants)}] {variant.name}: {record['epochs']} epochs in "
                f"{record['train_seconds'] / 60:.1f} min, evaluation Dice {dice:.4f}"
            )
    finished = [v for v in variants if v.name not in failed]
    if not finished:
        _say("no variant finished: no report")
        return 1
    context_file = out / CONTEXT_FILE
    if args.report_only and context_file.is_file():
        context = json.loads(context_file.read_text())
        context["report"] = (
            f"rebuilt {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} with --report-only"
        )
    else:
        context = {
            "command": f"`{command}`",
            "started": started,
            "wall time": f"{(time.perf_counter() - t_start) / 60:.1f} min"
            + (" (report rebuilt; see the variants' training times)" if args.report_only else ""),
            "device": _device_text(args.device),
            "budget": budget_text,
            "datalist": datalist,
            "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items() if k != "bundle_root") or "none",
        }
        if not args.report_only:
            atomic_write_json(context_file, context)
    report = _report(out, finished, dataset_dir, datalist, context)
    _say(f"report: {report} and {out / 'report.csv'}; plots in {out}")
    print(report.read_text(), flush=True)
    if failed:
        _say(f"failed variants: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
