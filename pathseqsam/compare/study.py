"""The mechanisms study: does Eq. 1 (distance-aware attention) or Eq. 2 (top-K memory) help, and when?

The protocol is ``docs/experiments/mechanisms/protocol.md``; this module runs it, in cells that
resume. A cell is one trained (arm, seed) with its evaluations on every test set
(:mod:`pathseqsam.compare.cells`). Arms are the comparison's variants
(:func:`pathseqsam.compare.variants.discover_variants`: ``train.json`` plus the arm's overlay), trained
by the bundle's own configs with MONAI's ``ConfigWorkflow``, with these study settings on top: the
seed's training set (24 cases, every dial mixed per case, honest masks), fixed iterations per epoch
(``windows_per_case``), a fixed number of epochs with the cosine schedule over them, no per-epoch
validation, and the final weights evaluated. The control ``pathseqsam_shuffled`` is the trained
``pathseqsam`` model evaluated with the slice positions shuffled within each case (no training of
its own).

Evaluation (per slice, at the slice's own pixel grid, after the bundle's post-processing): Dice
``2|P&T| / (|P| + |T|)``; a slice whose truth is empty scores 1 if the prediction is empty, else 0.

Layout of ``out_dir``::

    data/train_seed<k>/, data/test_<set>/   generated once (datalists study_train.json / study_test.json)
    cells/<arm>__seed<k>.json.gz             finished cells (record + rows), unless ``cells_dir`` is given
    models/<arm>__seed<k>.pt                 the final weights of each cell
    cost.json                                the measured unit costs and the extrapolated grid cost
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_torch_save, atomic_write_json
from pathseqsam.compare.cells import (
    cell_path,
    check_cell,
    code_fingerprint,
    git_commit,
    read_cell,
    write_cell,
    write_cells_csv,
)
from pathseqsam.compare.variants import discover_variants
from pathseqsam.data.datalist import load_datalist, write_datalist
from pathseqsam.synthetic import SYNTHETIC_META, generate_synthetic_dataset
from pathseqsam.synthetic.dials import GLOMERULI_PER_MM3, Dials
from pathseqsam.synthetic.seeds import STUDY_TEST_SEEDS, STUDY_TRAIN_SEEDS

__all__ = [
    "ARMS",
    "COMPRESSED_ARM",
    "COMPRESSION",
    "CONTROL_ARM",
    "GRID",
    "REFERENCES",
    "SMOKE",
    "TEST_SETS",
    "TRAIN_DIALS",
    "StudySettings",
    "arm_workflow",
    "empty_rule_dice",
    "estimate_cost",
    "eval_pieces",
    "prepare_data",
    "run_cell",
    "run_study",
]

ARMS = ("sam2_per_slice", "sam2_memory", "memory_last", "distance_none", "pathseqsam")
REFERENCES = ("dynunet", "swinunetr")
CONTROL_ARM = "pathseqsam_shuffled"
CONTROL_OF = "pathseqsam"
COMPRESSED_ARM = "pathseqsam_compressed"
# one test set per setting: all nulls, each dial alone, all dials (the primary endpoint's set)
TEST_SETS = {
    "nulls": Dials(),
    "spacing": Dials(spacing="variable"),
    "burst": Dials(burst=8.0),
    "misregistration": Dials(misregistration="pose"),
    "all": Dials(spacing="variable", burst=8.0, misregistration="pose"),
}
TRAIN_DIALS = Dials(spacing="mix", burst="mix", misregistration="mix")
SHUFFLE_SEED = 7_000  # the control's position permutation of case i: default_rng([SHUFFLE_SEED, i])
TRAIN_DATALIST = "study_train.json"
TEST_DATALIST = "study_test.json"
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class StudySettings:
    """Everything that defines a study grid (recorded in every cell).

    Attributes:
        arms: trained arms, each for every seed in ``seeds``.
        seeds: training seeds (the seed also picks the training data).
        references: reference arms (DynUNet, SwinUNETR), each for every seed in ``reference_seeds``.
        reference_seeds: their seeds.
        test_sets: names from :data:`TEST_SETS`.
        train_cases: cases per training set (every dial mixed per case).
        test_cases: cases per test set.
        sections: sections per case.
        image_size: section side in pixels (also the model's input size).
        field_um: field of view in um (``field_um / image_size`` is both the data's and the model's
            micrometres per pixel).
        epochs: training epochs (the cosine schedule runs over them).
        windows_per_case: training windows drawn per case per epoch (iterations per epoch =
            ``train_cases * windows_per_case / batch_size``).
        window: slices per training window.
        batch_size: windows per iteration.
        test_seed: root seed of every test set.
        glomeruli_per_mm3: density of the generated blocks.
        overrides: further bundle config overrides (plain values only).
        shuffled_control: evaluate the control with ``pathseqsam``.
        compression_control: evaluate each trained ``pathseqsam`` model again with distance-aware
            memory compression at this budget (``memory_token_um``, um per token nearest first) as
            arm ``pathseqsam_compressed`` (training-free: no training of its own); None: not.
    """

    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    references: tuple[str, ...] = REFERENCES
    reference_seeds: tuple[int, ...] = (0, 1)
    test_sets: tuple[str, ...] = tuple(TEST_SETS)
    train_cases: int = 24
    test_cases: int = 50
    sections: int = 24
    image_size: int = 128
    field_um: float = 256.0
    epochs: int = 40
    windows_per_case: int = 1
    window: int = 8
    batch_size: int = 2
    test_seed: int = STUDY_TEST_SEEDS[0]
    glomeruli_per_mm3: float = GLOMERULI_PER_MM3
    overrides: dict[str, Any] = field(default_factory=dict)
    shuffled_control: bool = True
    compression_control: tuple[float, ...] | None = None

    @property
    def mpp_um(self) -> float:
        return self.field_um / self.image_size

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(self.train_cases * self.windows_per_case / self.batch_size)

    def cells(self) -> list[tuple[str, int]]:
        """``(arm, seed)`` in run order: seed by seed (each seed's arms together, so a partial grid
        stays paired), then the references."""
        grid = [(arm, s) for s in self.seeds for arm in self.arms]
        return grid + [(arm, s) for s in self.reference_seeds for arm in self.references]

    def check(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        unknown = [t for t in self.test_sets if t not in TEST_SETS]
        if unknown:
            raise ValueError(f"unknown test set(s) {unknown}; known: {list(TEST_SETS)}")
        for name in (
            "train_cases",
            "test_cases",
            "sections",
            "epochs",
            "windows_per_case",
            "window",
            "batch_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"study setting {name} must be >= 1, got {getattr(self, name)}")
        if self.window > self.sections:
            raise ValueError(f"window ({self.window}) cannot exceed sections ({self.sections})")
        for key, value in self.overrides.items():
            if isinstance(value, str) and value[:1] in "$@%":
                raise ValueError(
                    f"override {key}={value!r}: study overrides are plain values, never expressions"
                )


# The grid of the protocol, and the smoke grid CI runs (two arms, two seeds, tiny data, one epoch,
# a tiny randomly initialised SAM2 at 64 px).
GRID = StudySettings()
SMOKE = StudySettings(
    arms=("sam2_memory", "pathseqsam"),
    seeds=(0, 1),
    references=(),
    reference_seeds=(),
    test_sets=("nulls", "all"),
    train_cases=2,
    test_cases=2,
    sections=4,
    image_size=64,
    field_um=128.0,
    epochs=1,
    windows_per_case=1,
    window=2,
    batch_size=2,
    test_seed=STUDY_TEST_SEEDS[1],
    overrides={"sam2_checkpoint": None, "model_name": "tiny"},
)


# Distance-aware memory compression, measured (issue: memory cost): the trained full model with and
# without compression, 3 seeds, at 256 px (a 16 x 16 token grid: room to pool; 128 px has 8 x 8) and
# the bundle's 2 um/px, on the nulls and all-dials test sets. Native tokens are 32 um: the nearest
# slice keeps them, the others are pooled 4 x 4 (128 um).
COMPRESSION = replace(
    GRID,
    arms=("pathseqsam",),
    seeds=(0, 1, 2),
    references=(),
    reference_seeds=(),
    test_sets=("nulls", "all"),
    image_size=256,
    field_um=512.0,
    shuffled_control=False,
    compression_control=(32.0, 128.0),
)


def _say(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def empty_rule_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of one slice; an empty truth scores 1 if the prediction is empty, else 0."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    if not truth.any():
        return 1.0 if not pred.any() else 0.0
    return 2.0 * float(np.logical_and(pred, truth).sum()) / total


# --------------------------------------------------------------------------- data


def _generator_kwargs(settings: StudySettings, cases: int, seed: int, dials: Dials) -> dict[str, Any]:
    return {
        "cases": int(cases),
        "seed": int(seed),
        "image_size": int(settings.image_size),
        "sections": int(settings.sections),
        "field_um": float(settings.field_um),
        "dials": dials,
        "honest_masks": True,
        "glomeruli_per_mm3": float(settings.glomeruli_per_mm3),
    }


def _matches(folder: Path, kwargs: dict[str, Any]) -> bool:
    path = folder / SYNTHETIC_META
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    want = {**kwargs, "dials": kwargs["dials"].as_dict(), "sections": [kwargs["sections"]] * 2}
    return all(meta.get(k) == v for k, v in want.items())


def _dataset(folder: Path, kwargs: dict[str, Any], datalist: str, split_of: Callable[[list], dict]) -> Path:
    """Generate (or reuse, when its metadata match) one study dataset and write its study datalist."""
    if not _matches(folder, kwargs):
        _say(
            f"generating {folder.name}: {kwargs['cases']} cases, seed {kwargs['seed']}, {kwargs['dials'].label()}"
        )
        generate_synthetic_dataset(folder, stacks=False, contact_sheet=False, overwrite=True, **kwargs)
    source = folder / "datalist.json"
    items = [it for split in ("training", "validation", "test") for it in load_datalist(source, split)]
    target = folder / datalist
    if not target.is_file():
        write_datalist(split_of(items), target, extra={"description": f"mechanisms study: {folder.name}"})
    return target


def _file_sha256(paths: Sequence[Path]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()


def prepare_data(settings: StudySettings, out_dir: str | Path) -> dict[str, Any]:
    """Generate every training and test set of the grid (once; reused when their settings match).

    Training set of seed ``k``: ``train_cases`` cases of root seed ``STUDY_TRAIN_SEEDS[k]``, every
    dial mixed per case, all in the datalist's ``training`` split (its ``validation`` split repeats
    the first case only because the bundle's config parses a validator; no validation runs).
    Test set ``t``: ``test_cases`` cases of root seed ``settings.test_seed`` under ``TEST_SETS[t]``.

    Returns:
        ``{"train": {seed: datalist}, "test": {set: datalist}, "data_sha256": {seed: fingerprint}}``;
        a cell's data fingerprint covers its training set and every test set.
    """
    data = Path(out_dir) / "data"
    seeds = sorted({*settings.seeds, *settings.reference_seeds})
    train, test = {}, {}
    for s in seeds:
        kwargs = _generator_kwargs(settings, settings.train_cases, STUDY_TRAIN_SEEDS[s], TRAIN_DIALS)
        train[s] = _dataset(
            data / f"train_seed{s}",
            kwargs,
            TRAIN_DATALIST,
            lambda items: {"training": items, "validation": items[:1]},
        )
    for name in settings.test_sets:
        kwargs = _generator_kwargs(settings, settings.test_cases, settings.test_seed, TEST_SETS[name])
        test[name] = _dataset(data / f"test_{name}", kwargs, TEST_DATALIST, lambda items: {"test": items})
    test_files = [test[n].parent / SYNTHETIC_META for n in settings.test_sets]
    fingerprints = {s: _file_sha256([train[s].parent / SYNTHETIC_META, *test_files]) for s in seeds}
    return {"train": train, "test": test, "data_sha256": fingerprints}


def _damage_lookup(datalist: Path) -> dict[tuple[str, int], str]:
    meta = json.loads((datalist.parent / SYNTHETIC_META).read_text())
    return {
        (case["case"], i): ("+".join(d["kinds"]) or "none")
        for case in meta["case_meta"]
        for i, d in enumerate(case["damage"])
    }


# --------------------------------------------------------------------------- one cell


def _overrides(
    settings: StudySettings, configs: Path, train_datalist: Path, work: Path, device: str | None
) -> dict:
    from pathseqsam.config_values import plain_value

    for name, value in (("configs", configs), ("datalist", train_datalist), ("out", work)):
        plain_value(str(value), name)  # folders never become config code
    out = {
        "bundle_root": str(configs.parent),
        "dataset_dir": str(train_datalist.parent),
        "datalist": str(train_datalist),
        "image_size": int(settings.image_size),
        "model_mpp_um": float(settings.mpp_um),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "max_minutes": None,
        "window": int(settings.window),
        "batch_size": int(settings.batch_size),
        "num_workers": 0,
        "train#windows_per_case": int(settings.windows_per_case),
        "train#trainer#max_epochs": int(settings.epochs),
        # never validate: the final weights are evaluated (no model selection on any data)
        "val_interval": int(settings.epochs) + 1,
        **settings.overrides,
    }
    if device is not None:
        if not _DEVICE.match(device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
        out["device"] = f"$torch.device('{device}')"
        out["amp"] = device.startswith("cuda")
    return out


def _shuffled(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control's items: each case's slice positions permuted (slice order and pixels unchanged)."""
    out = []
    for i, item in enumerate(items):
        order = np.random.default_rng([SHUFFLE_SEED, i]).permutation(len(item["positions_um"]))
        out.append({**item, "positions_um": [item["positions_um"][j] for j in order]})
    return out


def eval_pieces(parsed: Callable[[str], Any]) -> dict[str, Any]:
    """The arm's evaluation pieces from its parsed config (``parser.get_parsed_content``): the
    validator's device, preprocessing, inferer, batch preparation, post-processing and autocast."""
    template = parsed("validate#evaluator")
    return {
        "device": parsed("device"),
        "preprocessing": parsed("validate#preprocessing"),
        "inferer": parsed("validate#inferer"),
        "prepare_batch": parsed("validate#prepare_batch"),
        "postprocessing": parsed("validate#postprocessing"),
        "amp": template.amp,
        "amp_kwargs": template.amp_kwargs,
    }


def _evaluate(
    pieces: dict[str, Any],
    network: Any,
    items: list[dict[str, Any]],
    label: dict[str, Any],
    kinds: dict,
    keep_pred: list[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Run the arm's own evaluation pieces (preprocessing, inferer, post-processing) on ``items``; one
    row per slice (and each case's thresholded ``[N, H, W]`` prediction appended to ``keep_pred``)."""
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.engines import SupervisedEvaluator

    evaluator = SupervisedEvaluator(
        device=pieces["device"],
        val_data_loader=DataLoader(
            Dataset(items, transform=pieces["preprocessing"]), batch_size=1, num_workers=0
        ),
        network=network,
        inferer=pieces["inferer"],
        prepare_batch=pieces["prepare_batch"],
        postprocessing=pieces["postprocessing"],
        amp=pieces["amp"],
        amp_kwargs=pieces["amp_kwargs"],
    )
    rows: list[dict[str, Any]] = []

    def collect(engine: Any) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch
        metas = batch if isinstance(batch, list) else decollate_batch(batch, detach=True)
        for out, meta in zip(outputs, metas):
            pred = np.asarray(out["pred"].detach().cpu())[0] > 0.5
            if keep_pred is not None:
                keep_pred.append(pred)
            truth = np.asarray(out["label"].detach().cpu())[0] > 0.5
            case = str(meta["case"])
            index = np.asarray(meta["slice_index"]).reshape(-1)
            degraded = np.asarray(meta["degraded"]).reshape(-1)
            positions = np.asarray(meta["positions"]).reshape(len(index), -1)
            for k in range(pred.shape[0]):
                i = int(index[k])
                rows.append(
                    {
                        **label,
                        "case": case,
                        "slice": i,
                        "position_um": round(float(np.ravel(positions[k])[0]), 4),
                        "damage_kind": kinds[(case, i)],
                        "degraded": int(degraded[k]),
                        "truth_empty": int(not truth[k].any()),
                        "pred_empty": int(not pred[k].any()),
                        "dice": empty_rule_dice(pred[k], truth[k]),
                    }
                )

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    evaluator.run()
    return rows


_DETERMINISM = "$monai.utils.set_determinism(seed=0)"


def _seeded_initialize(files: Sequence[Path], seed: int) -> list[str]:
    """The config's ``initialize`` list with its ``set_determinism(seed=0)`` set to the cell's seed.

    The network is built while the workflow initialises, right after that list runs, so the seed
    must be in it (setting it afterwards leaves every seed with seed 0's initial weights).

    Raises:
        ValueError: the config no longer seeds in ``initialize`` (the study cannot seed it then).
    """
    initialize = None
    for path in files:  # the last file that sets it wins, as in MONAI's config merge
        content = json.loads(Path(path).read_text())
        if "initialize" in content:
            initialize = content["initialize"]
    if not isinstance(initialize, list) or _DETERMINISM not in initialize:
        raise ValueError(
            f"{[p.name for p in files]}: 'initialize' has no {_DETERMINISM!r}; the study seeds each cell by "
            "replacing it, so add it back or update pathseqsam.compare.study"
        )
    return [f"$monai.utils.set_determinism(seed={int(seed)})" if e == _DETERMINISM else e for e in initialize]


def _time_iterations(engine: Any) -> list[float]:
    """Wall time of each iteration of ``engine`` (filled while it runs)."""
    from ignite.engine import Events

    times: list[float] = []
    start = [0.0]
    engine.add_event_handler(Events.ITERATION_STARTED, lambda _: start.__setitem__(0, time.perf_counter()))
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda _: times.append(time.perf_counter() - start[0])
    )
    return times


def arm_workflow(
    settings: StudySettings,
    arm: str,
    seed: int,
    data: dict[str, Any],
    work: Path,
    configs: str | Path,
    device: str | None = None,
) -> tuple[Any, list[Path]]:
    """The arm's initialised training workflow (``train.json`` + its overlay + the study's overrides,
    seeded), with ``work`` emptied first as its scratch folder.

    Returns:
        ``(workflow, config files)``: ``train.json`` first, then the arm's overlays.

    Raises:
        ValueError: ``arm`` is not a variant of ``configs``.
    """
    from pathseqsam.compare.runner import RunSettings, _workflow

    configs = Path(configs)
    variants = discover_variants(configs)
    if arm not in variants:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(variants)}")
    shutil.rmtree(work, ignore_errors=True)  # scratch of an interrupted attempt: start over
    work.mkdir(parents=True)
    files = [configs / "train.json", *variants[arm].overlays]
    overrides = _overrides(settings, configs, data["train"][seed], work, device)
    overrides["initialize"] = _seeded_initialize(files, seed)
    return _workflow(RunSettings(configs_dir=configs, out_dir=work), files, overrides), files


def run_cell(
    settings: StudySettings,
    arm: str,
    seed: int,
    data: dict[str, Any],
    out_dir: str | Path,
    configs: str | Path,
    device: str | None = None,
    test_sets: Sequence[str] | None = None,
    test_limit: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one (arm, seed) and evaluate its final weights on the test sets.

    Args:
        settings: the grid.
        arm: a variant name (``pathseqsam`` also yields the control's rows).
        seed: training seed (training data and initialisation).
        data: from :func:`prepare_data`.
        out_dir: the study folder (its ``work/`` holds the cell's scratch files until it finishes).
        configs: the bundle's ``configs`` folder.
        device: ``cpu``, ``cuda``, ``cuda:N`` (None: the config's default).
        test_sets: evaluate these sets only (default: all of the grid's); for cost measurements.
        test_limit: evaluate the first N cases of each set only; for cost measurements.

    Returns:
        ``(record, rows)``: timings, iterations, parameters; one row per evaluated slice.
    """
    import gc

    import torch

    from pathseqsam.compare.runner import count_parameters

    work = Path(out_dir) / "work" / f"{arm}__seed{seed}"
    workflow, files = arm_workflow(settings, arm, seed, data, work, configs, device)
    network = workflow.parser.get_parsed_content("network")
    trainable, total = count_parameters(network)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    step_times = _time_iterations(trainer)
    t0 = time.perf_counter()
    workflow.run()
    train_seconds = time.perf_counter() - t0
    iterations = int(trainer.state.iteration)
    pieces = eval_pieces(workflow.parser.get_parsed_content)
    weights = Path(out_dir) / "models" / f"{arm}__seed{seed}.pt"
    if test_limit is None:
        atomic_torch_save(network.state_dict(), weights)

    network.eval()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    slices = 0
    with torch.no_grad():
        for name in test_sets or settings.test_sets:
            datalist = data["test"][name]
            items = load_datalist(datalist, "test")[: test_limit or None]
            kinds = _damage_lookup(datalist)
            rows += _evaluate(pieces, network, items, {"arm": arm, "seed": int(seed), "dial": name}, kinds)
            slices += sum(len(it["image"]) for it in items)
            if arm == CONTROL_OF and settings.shuffled_control:
                label = {"arm": CONTROL_ARM, "seed": int(seed), "dial": name}
                rows += _evaluate(pieces, network, _shuffled(items), label, kinds)
                slices += sum(len(it["image"]) for it in items)
            if arm == CONTROL_OF and settings.compression_control is not None:
                plain = network.settings  # the same weights, memory pooled to the budget
                network.settings = replace(plain, memory_token_um=tuple(settings.compression_control))
                try:
                    label = {"arm": COMPRESSED_ARM, "seed": int(seed), "dial": name}
                    rows += _evaluate(pieces, network, items, label, kinds)
                finally:
                    network.settings = plain
                slices += sum(len(it["image"]) for it in items)
    eval_seconds = time.perf_counter() - t0
    workflow.finalize()
    del workflow, trainer, network, pieces
    gc.collect()
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "arm": arm,
        "seed": int(seed),
        "overlays": [p.name for p in files[1:]],
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "iterations": iterations,
        # the median iteration: the cost estimate's unit (robust to start-up and to a busy machine)
        "iteration_seconds_median": float(np.median(step_times)) if step_times else None,
        "evaluated_slices": slices,
        "params_trainable": trainable,
        "params_total": total,
        "torch_threads": torch.get_num_threads(),
        "weights": None if test_limit is not None else str(weights.relative_to(out_dir)),
    }
    return record, rows


# --------------------------------------------------------------------------- cost


def _slices_per_cell(settings: StudySettings, arm: str) -> int:
    per_set = settings.test_cases * settings.sections
    factor = 1
    if arm == CONTROL_OF:
        factor += int(settings.shuffled_control) + int(settings.compression_control is not None)
    return factor * per_set * len(settings.test_sets)


def estimate_cost(
    settings: StudySettings, out_dir: str | Path, configs: str | Path, device: str | None = None
) -> dict[str, Any]:
    """Measure each arm's unit costs on a small slice of the real setting and extrapolate the grid.

    The measurement uses the grid's image size, window and batch: 6 training cases (2 windows each:
    6 iterations of one epoch, whose median is the unit; the first iteration's start-up is left out,
    data loading is in; one warm-up probe first, not counted) and 1 test case of the all-dials set (its time per slice includes the
    control's shuffled pass for ``pathseqsam``, counted as slices too). Generation time is measured on those 5 cases.
    Cost of a cell = ``epochs * iterations_per_epoch * seconds per iteration + evaluated slices *
    seconds per slice``; the grid adds data generation (``seeds * train_cases + sets * test_cases``
    cases).

    Returns:
        The measurements and the estimate (also written to ``<out_dir>/cost.json``).
    """
    calib_dir = Path(out_dir) / "calibration"
    probe = replace(
        settings,
        seeds=(0,),
        reference_seeds=(),
        train_cases=6,
        test_cases=1,
        epochs=1,
        windows_per_case=2,
        test_sets=("all",),
    )
    t0 = time.perf_counter()
    data = prepare_data(probe, calib_dir)
    generation_per_case = (time.perf_counter() - t0) / (probe.train_cases + probe.test_cases)
    arms = list(dict.fromkeys([*settings.arms, *settings.references]))
    units: dict[str, dict[str, float]] = {}
    # a first run in a fresh process pays one-off costs (thread pools, allocator, file cache) that a
    # grid pays once: a warm-up probe of the first arm is run and not counted
    run_cell(probe, arms[0], 0, data, calib_dir, configs, device, test_limit=1)
    for arm in arms:
        record, _ = run_cell(probe, arm, 0, data, calib_dir, configs, device, test_limit=1)
        units[arm] = {
            "seconds_per_iteration": record["iteration_seconds_median"],
            "seconds_per_slice": record["eval_seconds"] / max(record["evaluated_slices"], 1),
        }
        _say(
            f"cost probe {arm}: {units[arm]['seconds_per_iteration']:.2f} s/iteration, "
            f"{units[arm]['seconds_per_slice']:.3f} s/slice"
        )
    iterations = settings.epochs * settings.iterations_per_epoch
    cells = {}
    for arm, s in settings.cells():
        u = units[arm]
        cells[f"{arm}__seed{s}"] = (
            iterations * u["seconds_per_iteration"] + _slices_per_cell(settings, arm) * u["seconds_per_slice"]
        )
    n_cases = (
        len({*settings.seeds, *settings.reference_seeds}) * settings.train_cases
        + len(settings.test_sets) * settings.test_cases
    )
    generation = n_cases * generation_per_case
    estimate = {
        "settings": _settings_record(settings),
        "generation_seconds_per_case": generation_per_case,
        "units": units,
        "iterations_per_cell": iterations,
        "cell_seconds": cells,
        "generation_seconds": generation,
        "total_seconds": generation + sum(cells.values()),
    }
    atomic_write_json(Path(out_dir) / "cost.json", estimate)
    shutil.rmtree(calib_dir, ignore_errors=True)
    return estimate


def _print_cost(estimate: dict[str, Any]) -> None:
    per_arm: dict[str, list[float]] = {}
    for key, seconds in estimate["cell_seconds"].items():
        per_arm.setdefault(key.split("__seed")[0], []).append(seconds)
    _say(
        f"estimated cost: data generation {estimate['generation_seconds'] / 60:.0f} min "
        f"({estimate['generation_seconds_per_case']:.1f} s/case), {estimate['iterations_per_cell']} training iterations per cell"
    )
    for arm, values in per_arm.items():
        _say(f"  {arm:16s} {len(values)} cells x {values[0] / 60:.1f} min")
    _say(f"  total about {estimate['total_seconds'] / 3600:.1f} h on this machine, as measured now")


# --------------------------------------------------------------------------- the grid


def _settings_record(settings: StudySettings) -> dict[str, Any]:
    record = asdict(settings)
    record["test_sets"] = {name: TEST_SETS[name].label() for name in settings.test_sets}
    record["train_dials"] = TRAIN_DIALS.label()
    return json.loads(json.dumps(record))  # as a cell file stores it (lists, not tuples)


def run_study(
    settings: StudySettings,
    out_dir: str | Path,
    configs: str | Path,
    csv_path: str | Path,
    device: str | None = None,
    max_cells: int | None = None,
    estimate: bool = True,
    estimate_only: bool = False,
    repo_root: str | Path | None = None,
    cells_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) the grid: finished cells are skipped, new ones saved as they finish.

    Args:
        settings: the grid.
        out_dir: study folder.
        configs: the bundle's ``configs`` folder.
        csv_path: where the gathered ``cells.csv.gz`` goes (rewritten after every finished cell).
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (the config's default).
        max_cells: compute at most this many new cells, then stop (a partial grid).
        estimate: measure and print the cost first.
        estimate_only: print the cost and stop.
        repo_root: the tree whose code is fingerprinted (default: the one holding ``configs``).
        cells_dir: the cell store (default ``<out_dir>/cells``). The full grid keeps it in the
            repository, so a grid longer than one session resumes on another machine.

    Returns:
        ``{"computed": [...], "skipped": [...], "remaining": [...], "csv": path, "estimate": ...}``.

    Raises:
        CellMismatchError: a finished cell was made by other code, data or settings.
    """
    settings.check()
    out_dir, configs = Path(out_dir).absolute(), Path(configs).absolute()
    store = Path(cells_dir).absolute() if cells_dir is not None else out_dir / "cells"
    root = Path(repo_root) if repo_root is not None else configs.parents[1]
    expected_code = code_fingerprint(root)
    cells = settings.cells()
    done = {key for key in cells if cell_path(store, *key).is_file()}
    # refuse mixed code before any work: every finished cell must come from this code and settings
    for key in sorted(done):
        record, _ = read_cell(cell_path(store, *key))
        check_cell(
            cell_path(store, *key),
            record,
            {"code_sha256": expected_code, "settings": _settings_record(settings)},
        )
    cost = None
    if estimate and (len(done) < len(cells) or estimate_only):
        cost = estimate_cost(settings, out_dir, configs, device)
        _print_cost(cost)
        if estimate_only:
            return {
                "computed": [],
                "skipped": sorted(done),
                "remaining": [c for c in cells if c not in done],
                "csv": None,
                "estimate": cost,
            }
    data = prepare_data(settings, out_dir)
    computed, skipped = [], []
    started, spent = time.perf_counter(), []
    for n, (arm, seed) in enumerate(cells, 1):
        path = cell_path(store, arm, seed)
        if path.is_file():
            record, _ = read_cell(path)
            check_cell(path, record, {"data_sha256": data["data_sha256"][seed]})
            skipped.append((arm, seed))
            _say(f"cell {n}/{len(cells)} {arm} seed {seed}: finished earlier, skipped")
            continue
        if max_cells is not None and len(computed) >= max_cells:
            break
        _say(f"cell {n}/{len(cells)} {arm} seed {seed}: training")
        t0 = time.perf_counter()
        record, rows = run_cell(settings, arm, seed, data, out_dir, configs, device)
        record.update(
            commit=git_commit(root),
            code_sha256=expected_code,
            data_sha256=data["data_sha256"][seed],
            settings=_settings_record(settings),
            finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        write_cell(path, record, rows)
        computed.append((arm, seed))
        spent.append(time.perf_counter() - t0)
        _gather(settings, store, csv_path)
        left = [c for c in cells if not cell_path(store, *c).is_file()]
        eta = _eta(left, computed, spent, cost)
        _say(
            f"cell {n}/{len(cells)} {arm} seed {seed}: done in {spent[-1] / 60:.1f} min "
            f"({len(cells) - len(left)}/{len(cells)} finished; {len(left)} left, ETA {eta})"
        )
    remaining = [c for c in cells if not cell_path(store, *c).is_file()]
    csv_file = _gather(settings, store, csv_path)
    _say(f"{len(computed)} cells computed, {len(skipped)} skipped, {len(remaining)} left; rows in {csv_file}")
    _say(f"elapsed {(time.perf_counter() - started) / 60:.1f} min")
    return {
        "computed": computed,
        "skipped": skipped,
        "remaining": remaining,
        "csv": csv_file,
        "estimate": cost,
    }


def _eta(
    left: list[tuple[str, int]],
    computed: list[tuple[str, int]],
    spent: list[float],
    cost: dict[str, Any] | None,
) -> str:
    if not left:
        return "0 min"
    if cost is not None:  # the estimate per cell, scaled by how this run compares to it so far
        predicted = sum(cost["cell_seconds"].get(f"{a}__seed{s}", 0.0) for a, s in computed)
        ratio = sum(spent) / predicted if predicted > 0 else 1.0
        seconds = ratio * sum(cost["cell_seconds"].get(f"{a}__seed{s}", 0.0) for a, s in left)
    else:
        seconds = len(left) * sum(spent) / len(spent)
    return f"{seconds / 3600:.1f} h" if seconds > 5400 else f"{seconds / 60:.0f} min"


def _gather(settings: StudySettings, store: Path, csv_path: str | Path) -> Path:
    rows: list[dict[str, Any]] = []
    for key in settings.cells():
        path = cell_path(store, *key)
        if path.is_file():
            rows += read_cell(path)[1]
    return write_cells_csv(csv_path, rows)
