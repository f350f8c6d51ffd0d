"""Train and evaluate one variant with the bundle's own configs (MONAI ``ConfigWorkflow``), in process.

For a variant the runner does exactly what a user would do by hand::

    python -m monai.bundle run training --config_file "['train.json', <overlays>]" ...
    python -m monai.bundle run --config_file "['train.json', <overlays>, 'evaluate.json']" --eval_split test ...

with ``ckpt_dir`` and ``output_dir`` pointing into the variant's own folder, then records what the
report needs in ``<variant>/result.json``: training wall time (``trainer.run()`` only, validation
included), epochs done, whether the time budget stopped it, trainable/total parameters, the best
validation Dice and the evaluator's metrics on the evaluation split, whose per-patch table
(:class:`~pathseqsam.engine.PerPatchSaver`) is ``<variant>/eval/per_patch_<split>.csv``.
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathseqsam.atomic import atomic_write_json
from pathseqsam.compare.variants import Variant
from pathseqsam.engine import WallTimeBudget

__all__ = ["RESULT_FILE", "RunSettings", "count_parameters", "load_result", "run_variant"]

RESULT_FILE = "result.json"
_MARKER = "variant.json"


@dataclass
class RunSettings:
    """What every variant of one comparison shares.

    Attributes:
        configs_dir: the bundle's ``configs`` folder (train.json, evaluate.json, metadata.json, logging.conf).
        out_dir: comparison folder; each variant writes into ``out_dir/<name>/``.
        overrides: config overrides for every variant (``{"image_size": 128, "device": "$torch.device('cuda:0')"}``).
        max_minutes: wall-time budget per variant (None: epochs only).
        epochs: ``train#trainer#max_epochs`` (None: the config's).
        eval_split: datalist split evaluated after training (``validation`` picks the best model).
        eval_datalist: evaluate this datalist's ``eval_split`` instead of the training datalist's
            (e.g. :func:`~pathseqsam.compare.evalset.make_eval_set`); None: the training datalist.
    """

    configs_dir: Path
    out_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    max_minutes: float | None = None
    epochs: int | None = None
    eval_split: str = "test"
    eval_datalist: str | None = None


def count_parameters(net: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (trainable = ``requires_grad``)."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _workflow(settings: RunSettings, files: list[Path], overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=[str(f) for f in files],
        meta_file=str(settings.configs_dir / "metadata.json"),
        logging_file=str(settings.configs_dir / "logging.conf"),
        **overrides,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise RuntimeError(f"config {[f.name for f in files]} lacks required properties {missing}")
    return workflow


def _fresh_dir(path: Path) -> None:
    """Empty a variant folder written by an earlier comparison; refuse to touch anything else."""
    if path.exists() and any(path.iterdir()):
        if not (path / _MARKER).is_file():
            raise FileExistsError(
                f"{path} exists and is not a comparison output folder (no {_MARKER}); choose another --out"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def _budget_handler(workflow: Any) -> Any:
    handlers = workflow.parser.get_parsed_content("train#handlers")
    return next((h for h in handlers if isinstance(h, WallTimeBudget)), None)


def run_variant(variant: Variant, settings: RunSettings) -> dict[str, Any]:
    """Train ``variant``, evaluate its best model on ``settings.eval_split``, write ``result.json``.

    Args:
        variant: what to run.
        settings: shared settings.

    Returns:
        The result record (also written to ``<out_dir>/<name>/result.json``).

    Raises:
        FileNotFoundError: training produced no ``model.pt`` (no validation ran).
    """
    run_dir = settings.out_dir / variant.name
    _fresh_dir(run_dir)
    atomic_write_json(
        run_dir / _MARKER,
        {"variant": variant.name, "overlays": [str(p) for p in variant.overlays]},
    )
    common = {
        **settings.overrides,
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "eval"),
    }
    train_overrides = {**common, "max_minutes": settings.max_minutes}
    if settings.epochs is not None:
        train_overrides["train#trainer#max_epochs"] = int(settings.epochs)
    files = [settings.configs_dir / "train.json", *variant.overlays]

    workflow = _workflow(settings, files, train_overrides)
    trainable, total = count_parameters(workflow.parser.get_parsed_content("network"))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    validator = workflow.parser.get_parsed_content("validate#evaluator")
    budget = _budget_handler(workflow)
    t0 = time.perf_counter()
    workflow.run()
    train_seconds = time.perf_counter() - t0
    workflow.finalize()
    record: dict[str, Any] = {
        "variant": variant.name,
        "group": variant.group,
        "description": variant.description,
        "overlays": [p.name for p in variant.overlays],
        "train_seconds": train_seconds,
        "epochs": int(trainer.state.epoch),
        "max_epochs": int(trainer.state.max_epochs),
        "iterations": int(trainer.state.iteration),
        "stopped_by_budget": bool(budget is not None and budget.stopped_early),
        "max_minutes": settings.max_minutes,
        "params_trainable": trainable,
        "params_total": total,
        "best_val_dice": float(validator.state.best_metric),
        "best_val_epoch": int(validator.state.best_metric_epoch),
    }
    del workflow, trainer, validator, budget
    gc.collect()
    if not (run_dir / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"{variant.name}: training wrote no {run_dir / 'models' / 'model.pt'}")

    eval_overrides = {**common, "eval_split": settings.eval_split}
    if settings.eval_datalist is not None:
        eval_overrides["eval_datalist"] = settings.eval_datalist
    workflow = _workflow(settings, [*files, settings.configs_dir / "evaluate.json"], eval_overrides)
    t0 = time.perf_counter()
    workflow.run()
    eval_seconds = time.perf_counter() - t0
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items()}
    workflow.finalize()
    del workflow, evaluator
    gc.collect()

    record.update(
        eval_datalist=settings.eval_datalist,
        eval_split=settings.eval_split,
        eval_seconds=eval_seconds,
        eval_metrics=metrics,
        per_patch_csv=f"eval/per_patch_{settings.eval_split}.csv",
    )
    atomic_write_json(run_dir / RESULT_FILE, _json_safe(record))
    return record


def _json_safe(value: Any) -> Any:
    """NaN/inf (e.g. a Dice over no patch with a glomerulus) become None: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def load_result(run_dir: str | Path) -> dict[str, Any]:
    """Read a variant's ``result.json`` (with ``per_patch_csv`` made absolute).

    Raises:
        FileNotFoundError: the variant has not finished (no result file).
    """
    import json

    run_dir = Path(run_dir)
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: variant {run_dir.name!r} has not been run to the end")
    record = json.loads(path.read_text())
    record["per_patch_csv"] = str(run_dir / record["per_patch_csv"])
    return record
