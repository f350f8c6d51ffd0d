"""The whole-slide sequence benchmark: a slide's tiles as one sequence against per-tile inference.

The protocol is ``docs/experiments/wsi_sequence/protocol.md``; this module runs it in cells that
resume, as the mechanism study does (:mod:`pathseqsam.compare.cells`). A cell is one trained
(arm, seed): ``train.json`` + ``train_wsi.json`` on the seed's training slides (tile blocks, no
validation, the final weights kept), then the slide command (:class:`~pathseqsam.wsi.segment.SlideSegmenter`)
on every test slide. The ``sequence`` cell also evaluates the control: the same model with the tile
positions permuted among a slide's tiles.

Per slide two masks are scored: the slide command's own output (Gaussian blending, its cleaning),
and KPIs Task 2's rules on the same tile predictions (each tile's binary mask votes, a pixel is kept
with at least two votes, components under 5,000 um^2 removed, greedy IoU >= 0.5 matching, Dice 1
when both masks are empty).

Layout of ``out_dir``::

    data/train_seed<k>/, data/test_ell<e>/   generated once (KPIs Task 2 layout)
    work/<arm>__seed<k>/                      a cell's scratch (training run, slide outputs)
    models/<arm>__seed<k>.pt                  each cell's final weights
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_torch_save, atomic_write
from pathseqsam.compare.cells import check_cell, code_fingerprint, git_commit, read_cell, write_cell

__all__ = [
    "ARMS",
    "COMPRESSED_ARM",
    "CONTROL_ARM",
    "GRID",
    "SLIDE_COLUMNS",
    "SMOKE",
    "WsiSequenceSettings",
    "kpis_mask",
    "run_benchmark",
]

ARMS = ("sequence", "per_tile")
CONTROL_ARM = "sequence_shuffled"
COMPRESSED_ARM = "sequence_compressed"
SHUFFLE_SEED = 7000
KPIS_MIN_OBJECT_UM2 = 5000.0  # the challenge's 20,000 px at 20x (0.5 um/px)
KPIS_MIN_VOTES = 2
SLIDE_COLUMNS = ("arm", "seed", "ell", "slide", "dice", "f1", "dice_kpis", "f1_kpis", "tiles", "seconds")
CODE_PATHS_EXTRA = ("pathseqsam/wsi", "pathseqsam/compare/wsi_sequence.py", "bundle/configs/train_wsi.json")


@dataclass(frozen=True)
class WsiSequenceSettings:
    """The benchmark's grid (the protocol's numbers).

    Attributes:
        arms: trained arms (the control is evaluated with ``sequence``).
        seeds: training seeds, paired across arms.
        ells: correlation lengths in tile strides.
        test_slides: held-out slides per ``ell`` (the same scenes at every ``ell``).
        train_slides: training slides per seed (an equal share per ``ell``).
        slide_px: level-0 side of every slide.
        slide_mpp_um: level-0 micrometres per pixel.
        image_size: the network's input side.
        model_mpp_um: the working resolution (tile = ``image_size * model_mpp_um``).
        rows: block rows.
        cols: block columns.
        blocks_per_slide: training blocks drawn per slide per epoch.
        batch_size: blocks per iteration.
        epochs: training epochs (cosine schedule over them).
        overrides: further plain config overrides (the smoke grid's tiny model).
        compression: evaluate each trained ``sequence`` model again with memory compression at this
            budget (``memory_token_um``) as arm ``sequence_compressed``; None: not.
    """

    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    ells: tuple[float, ...] = (0.0, 0.5, 2.0, math.inf)
    test_slides: int = 10
    train_slides: int = 8
    slide_px: int = 4096
    slide_mpp_um: float = 0.5
    image_size: int = 128
    model_mpp_um: float = 2.0
    rows: int = 3
    cols: int = 4
    blocks_per_slide: int = 3
    batch_size: int = 2
    epochs: int = 40
    overrides: dict[str, Any] = field(default_factory=dict)
    compression: tuple[float, ...] | None = (32.0, 128.0)

    @property
    def tile_um(self) -> float:
        return self.image_size * self.model_mpp_um

    @property
    def stride_um(self) -> float:
        return self.tile_um / 2.0

    def cells(self) -> list[tuple[str, int]]:
        """``(arm, seed)`` seed by seed, so a partial run stays paired."""
        return [(arm, s) for s in self.seeds for arm in self.arms]


GRID = WsiSequenceSettings()
SMOKE = WsiSequenceSettings(
    seeds=(0,),
    ells=(0.0, math.inf),
    test_slides=1,
    train_slides=2,
    slide_px=1024,
    slide_mpp_um=1.0,
    rows=2,
    cols=2,
    blocks_per_slide=1,
    epochs=1,
    overrides={"sam2_checkpoint": None},
)


def _say(message: str) -> None:
    print(f"[wsi-sequence {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _ell_name(ell: float) -> str:
    return "inf" if math.isinf(ell) else f"{ell:g}"


# --------------------------------------------------------------------------- data


def prepare_slides(settings: WsiSequenceSettings, out_dir: Path) -> dict[str, Any]:
    """Write (once) the training slides of every seed and the test slides of every ``ell``."""
    from pathseqsam.synthetic.slides import ensure_synthetic_task2

    data = out_dir / "data"
    train, test = {}, {}
    for s in settings.seeds:
        root = data / f"train_seed{s}"
        ells = [settings.ells[i % len(settings.ells)] for i in range(settings.train_slides)]
        _say(f"training slides of seed {s}: {root}")
        train[s] = ensure_synthetic_task2(
            root,
            settings.train_slides,
            settings.slide_px,
            settings.slide_mpp_um,
            8000 + 100 * s,
            ells,
            settings.stride_um,
        )
    for ell in settings.ells:
        root = data / f"test_ell{_ell_name(ell)}"
        _say(f"test slides at ell {_ell_name(ell)}: {root}")
        test[_ell_name(ell)] = ensure_synthetic_task2(
            root,
            settings.test_slides,
            settings.slide_px,
            settings.slide_mpp_um,
            9000,
            ell,
            settings.stride_um,
        )
    return {"train": train, "test": test}


# --------------------------------------------------------------------------- scoring


def kpis_mask(votes: np.ndarray, mpp_um: float) -> np.ndarray:
    """KPIs Task 2's slide mask from per-tile votes: >= 2 votes, components under 5,000 um^2 removed."""
    from scipy import ndimage

    mask = votes >= KPIS_MIN_VOTES
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())[1:] * mpp_um**2
    keep = np.concatenate([[False], areas >= KPIS_MIN_OBJECT_UM2])
    return keep[labels]


class _VoteTee:
    """Stands in for the slide command's blender: passes each tile on and counts its binary votes."""

    def __init__(self, blender: Any, shape: tuple[int, int], threshold: float) -> None:
        self.blender = blender
        self.votes = np.zeros(shape, np.uint8)
        self.threshold = threshold

    def add(self, y0: int, x0: int, prob: np.ndarray) -> None:
        self.blender.add(y0, x0, prob)
        h = min(prob.shape[0], self.votes.shape[0] - y0)
        w = min(prob.shape[1], self.votes.shape[1] - x0)
        self.votes[y0 : y0 + h, x0 : x0 + w] += (prob[:h, :w] > self.threshold).astype(np.uint8)


def _segmenter_class() -> type:
    from pathseqsam.wsi.segment import SlideSegmenter

    class BenchmarkSegmenter(SlideSegmenter):
        """The slide command, recording the tile votes and, for the control, shuffling positions."""

        shuffle_key: int | None = None
        votes: np.ndarray | None = None

        def _infer_tiles(self, slide, tiles, blender, timings, progress=None):
            tee = _VoteTee(blender, blender.shape, self.settings.threshold)
            super()._infer_tiles(slide, tiles, tee, timings, progress)
            self.votes = tee.votes

        def _tile_logits(self, slide, tiles, positions, timings):
            if self.shuffle_key is not None:
                order = np.random.default_rng([SHUFFLE_SEED, self.shuffle_key]).permutation(len(tiles))
                positions = positions[:, order]
            return super()._tile_logits(slide, tiles, positions, timings)

    return BenchmarkSegmenter


def _truth_at(mask_path: str | Path, mpp_um: float, shape: tuple[int, int]) -> np.ndarray:
    from pathseqsam.wsi.reader import open_slide

    with open_slide(mask_path, require_mpp=False) as m:
        truth = m.read_overview(mpp_um)
    truth = (truth if truth.ndim == 2 else truth[..., 0]) >= 128
    out = np.zeros(shape, bool)
    h, w = min(shape[0], truth.shape[0]), min(shape[1], truth.shape[1])
    out[:h, :w] = truth[:h, :w]
    return out


def evaluate_slides(
    network: Any,
    settings: WsiSequenceSettings,
    test: dict[str, str],
    work: Path,
    label: dict[str, Any],
    shuffle: bool = False,
) -> list[dict[str, Any]]:
    """Segment every test slide with the slide command; one row per slide (:data:`SLIDE_COLUMNS`)."""
    from pathseqsam.wsi.evaluate import score_mask_files
    from pathseqsam.wsi.kpis import kpis_task2_pairs
    from pathseqsam.wsi.metrics import SlideScorer

    per_tile = label["arm"] == "per_tile"
    rows = []
    for ell, root in test.items():
        for k, pair in enumerate(kpis_task2_pairs(root)):
            segmenter = _segmenter_class()(
                network, work / "slides", shard=False, per_tile=per_tile, overwrite=True, chunk=8
            )
            segmenter.shuffle_key = k if shuffle else None
            summary = segmenter.segment(pair["slide"])
            own = score_mask_files(
                work / "slides" / Path(pair["slide"]).name.split(".")[0] / "mask.tif", pair["mask"]
            )
            mpp = segmenter.settings.model_mpp_um
            scorer = SlideScorer()
            scorer.update(
                kpis_mask(segmenter.votes, mpp), _truth_at(pair["mask"], mpp, segmenter.votes.shape)
            )
            kpis = scorer.result()
            rows.append(
                {
                    **label,
                    "ell": ell,
                    "slide": pair["id"],
                    "dice": own["dice"],
                    "f1": own["f1"],
                    "dice_kpis": kpis["dice"],
                    "f1_kpis": kpis["f1_kpis"],
                    "tiles": int(summary["tiles"]),
                    "seconds": round(float(summary["timings_s"].get("network_s", 0.0)), 3),
                }
            )
    return rows


# --------------------------------------------------------------------------- one cell


def _overrides(settings: WsiSequenceSettings, configs: Path, slides: str, work: Path, arm: str) -> dict:
    from pathseqsam.config_values import plain_value

    for name, value in (("configs", configs), ("slides", slides), ("out", work)):
        plain_value(str(value), name)  # folders never become config code
    return {
        "bundle_root": str(configs.parent),
        "slides_dir": slides,
        "demo_slides_dir": str(work / "no_demo"),  # never the bundle's demo folder: nothing generated
        "image_size": int(settings.image_size),
        "model_mpp_um": float(settings.model_mpp_um),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "max_minutes": None,
        "batch_size": int(settings.batch_size),
        "num_workers": 0,
        "block_rows": int(settings.rows),
        "block_cols": int(settings.cols),
        "blocks_per_slide": int(settings.blocks_per_slide),
        "val_fraction": 0.0,
        "train#trainer#max_epochs": int(settings.epochs),
        "val_interval": int(settings.epochs) + 1,  # never validate: the final weights are evaluated
        "device": "$torch.device('cpu')",
        **({"memory_selection": "none"} if arm == "per_tile" else {}),
        **settings.overrides,
    }


def run_cell(
    settings: WsiSequenceSettings, arm: str, seed: int, data: dict[str, Any], out_dir: Path, configs: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one (arm, seed) on tile blocks and evaluate it (and, for ``sequence``, the control)."""
    import gc

    import torch

    from pathseqsam.compare.runner import RunSettings, _workflow
    from pathseqsam.compare.study import _seeded_initialize

    work = out_dir / "work" / f"{arm}__seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files = [configs / "train.json", configs / "train_wsi.json"]
    overrides = _overrides(settings, configs, data["train"][seed], work, arm)
    overrides["initialize"] = _seeded_initialize(files, seed)
    workflow = _workflow(RunSettings(configs_dir=configs, out_dir=work), files, overrides)
    network = workflow.parser.get_parsed_content("network")
    t0 = time.perf_counter()
    workflow.run()
    train_seconds = time.perf_counter() - t0
    iterations = int(workflow.parser.get_parsed_content("train#trainer").state.iteration)
    atomic_torch_save(network.state_dict(), out_dir / "models" / f"{arm}__seed{seed}.pt")
    network.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        rows = evaluate_slides(network, settings, data["test"], work, {"arm": arm, "seed": int(seed)})
        if arm == "sequence":
            rows += evaluate_slides(
                network, settings, data["test"], work, {"arm": CONTROL_ARM, "seed": int(seed)}, shuffle=True
            )
        if arm == "sequence" and settings.compression is not None:
            plain = network.settings  # the same weights, memory pooled to the budget (training-free)
            network.settings = replace(plain, memory_token_um=tuple(settings.compression))
            try:
                rows += evaluate_slides(
                    network, settings, data["test"], work, {"arm": COMPRESSED_ARM, "seed": int(seed)}
                )
            finally:
                network.settings = plain
    eval_seconds = time.perf_counter() - t0
    workflow.finalize()
    del workflow, network
    gc.collect()
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "arm": arm,
        "seed": int(seed),
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "iterations": iterations,
        "torch_threads": torch.get_num_threads(),
    }
    return record, rows


# --------------------------------------------------------------------------- the grid


def _settings_record(settings: WsiSequenceSettings) -> dict[str, Any]:
    record = asdict(settings)
    record["ells"] = [_ell_name(e) for e in settings.ells]
    return json.loads(json.dumps(record))  # as a saved cell reads it back (lists, not tuples)


def write_slides_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``slides.csv``: one row per (arm, seed, ell, slide), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(SLIDE_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    data = text.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_text(data))


def run_benchmark(
    settings: WsiSequenceSettings,
    out_dir: str | Path,
    configs: str | Path,
    cells_dir: str | Path,
    csv_path: str | Path,
    max_cells: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the grid; finished cells are skipped and cells from other code refused.

    Returns:
        ``{"computed": [...], "skipped": [...], "remaining": [...], "csv": path}``.
    """
    out_dir, configs, store = Path(out_dir).absolute(), Path(configs).absolute(), Path(cells_dir).absolute()
    root = configs.parents[1]
    from pathseqsam.compare.cells import CODE_PATHS

    expected = {
        "code_sha256": code_fingerprint(root, (*CODE_PATHS, *CODE_PATHS_EXTRA)),
        "settings": _settings_record(settings),
    }
    cells = settings.cells()
    path_of = {c: store / f"{c[0]}__seed{c[1]}.json.gz" for c in cells}
    for key in cells:
        if path_of[key].is_file():
            check_cell(path_of[key], read_cell(path_of[key])[0], expected)
    data = prepare_slides(settings, out_dir)
    computed, skipped, spent = [], [], []
    for n, (arm, seed) in enumerate(cells, 1):
        if path_of[(arm, seed)].is_file():
            skipped.append((arm, seed))
            continue
        if max_cells is not None and len(computed) >= max_cells:
            break
        _say(f"cell {n}/{len(cells)} {arm} seed {seed}: training")
        t0 = time.perf_counter()
        record, rows = run_cell(settings, arm, seed, data, out_dir, configs)
        record.update(
            expected, commit=git_commit(root), finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        write_cell(path_of[(arm, seed)], record, rows, SLIDE_COLUMNS)
        computed.append((arm, seed))
        spent.append(time.perf_counter() - t0)
        left = sum(not p.is_file() for p in path_of.values())
        _say(
            f"cell {n}/{len(cells)} {arm} seed {seed}: done in {spent[-1] / 60:.1f} min; "
            f"{left} left, ETA {left * np.mean(spent) / 60:.0f} min"
        )
    rows = [r for c in cells if path_of[c].is_file() for r in read_cell(path_of[c])[1]]
    csv_file = write_slides_csv(Path(csv_path), rows)
    remaining = [c for c in cells if not path_of[c].is_file()]
    _say(f"{len(computed)} cells computed, {len(skipped)} skipped, {len(remaining)} left; rows in {csv_file}")
    return {"computed": computed, "skipped": skipped, "remaining": remaining, "csv": csv_file}
