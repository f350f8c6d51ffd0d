"""The mechanisms study's leakage check: can positions, truth or test cases reach a trained model?

The protocol (``docs/experiments/mechanisms/protocol.md``) says that a gain of Eq. 1 on the ``nulls``
set, where constant gaps leave distance nothing beyond the frame index, is first a reason to look
for leakage. This module looks, on the study's own generated data and saved weights:

- **test cases in training**: no test slice's pixels occur in any training set (decoded pixels,
  hashed), and no test case is the same tissue block as a training case (its glomeruli and tissue
  edge, from ``synthetic_meta.json``), whatever the dials did to its pixels;
- **positions**: the positions the model is given carry no damage information (the mean gap before
  a damaged slice against a clean one, per set), and on ``nulls`` every gap is the same;
- **truth**: a trained model's predictions are the same, bit for bit, when every label it could read
  is replaced by zeros.

Run it with ``python scripts/study_mechanisms.py --check-leakage``; it writes ``leakage.json`` beside
the cells' CSV.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.data.datalist import load_datalist
from pathseqsam.synthetic import SYNTHETIC_META

__all__ = [
    "TRUTH_ARMS",
    "block_identity",
    "check_leakage",
    "pixel_hashes",
    "position_damage_gaps",
    "truth_blind",
]


# the pair the protocol's leakage trigger compares (Eq. 1 alone against stock memory)
TRUTH_ARMS = ("sam2_memory", "memory_last")


def pixel_hashes(datalist: str | Path, split: str) -> dict[str, str]:
    """sha256 of every slice's decoded pixels -> ``"<case>/<slice>"`` (one split of a datalist)."""
    from PIL import Image

    out: dict[str, str] = {}
    for item in load_datalist(datalist, split):
        for i, path in enumerate(item["image"]):
            pixels = np.asarray(Image.open(path))
            out[hashlib.sha256(pixels.tobytes()).hexdigest()] = f"{item['case']}/{i}"
    return out


def block_identity(datalist: str | Path, split: str) -> dict[str, str]:
    """A key naming the tissue block (glomeruli and tissue edge) of each case in one split of a
    datalist -> the case id.

    Two cases with the same key are the same anatomy, however differently the dials cut, damaged or
    posed it."""
    cases = {str(item["case"]) for item in load_datalist(datalist, split)}
    meta = json.loads((Path(datalist).parent / SYNTHETIC_META).read_text())
    out = {}
    for case in meta["case_meta"]:
        if str(case["case"]) in cases:
            key = json.dumps([case["glomeruli"], case["tissue_edge"]], sort_keys=True)
            out[hashlib.sha256(key.encode()).hexdigest()] = str(case["case"])
    return out


def position_damage_gaps(datalist: str | Path, split: str) -> dict[str, float | None]:
    """The gaps the model is given, and whether they tell damaged slices from clean ones.

    Returns:
        ``gap_min_um``, ``gap_max_um``; ``gap_before_degraded_um`` and ``gap_before_clean_um`` (mean
        gap to the previous slice; slice 0 has none; None when no slice is of that kind);
        ``permutation_p``: two-sided p of their difference under 5,000 permutations of the damage
        flags over the gaps (rng seed 0; slices treated as exchangeable, so it errs towards small
        p when damage clusters within cases; None when one kind is missing).
    """
    gaps, before_bad, before_good = [], [], []
    for item in load_datalist(datalist, split):
        z = np.asarray(item["positions_um"], dtype=float).reshape(len(item["image"]), -1)[:, 0]
        degraded = np.asarray(item["degraded"], dtype=bool)
        g = np.diff(z)
        gaps.extend(g)
        before_bad.extend(g[degraded[1:]])
        before_good.extend(g[~degraded[1:]])
    p_value = None
    if before_bad and before_good:
        g = np.asarray(before_bad + before_good)
        bad = np.arange(len(g)) < len(before_bad)
        observed = abs(g[bad].mean() - g[~bad].mean())
        rng = np.random.default_rng(0)
        hits = 0
        for _ in range(5000):
            perm = rng.permutation(bad)
            hits += abs(g[perm].mean() - g[~perm].mean()) >= observed - 1e-12
        p_value = hits / 5000
    return {
        "gap_min_um": float(np.min(gaps)),
        "gap_max_um": float(np.max(gaps)),
        "gap_before_degraded_um": float(np.mean(before_bad)) if before_bad else None,
        "gap_before_clean_um": float(np.mean(before_good)) if before_good else None,
        "permutation_p": p_value,
    }


def truth_blind(
    settings: Any,
    arm: str,
    seed: int,
    data: dict[str, Any],
    out_dir: str | Path,
    configs: str | Path,
    test_set: str = "nulls",
    cases: int = 4,
) -> dict[str, Any]:
    """Evaluate the saved weights of ``(arm, seed)`` on the first ``cases`` of ``test_set`` twice,
    with the true labels and with every label zeroed, through the arm's own evaluation pieces.

    Returns:
        ``{"arm", "seed", "test_set", "slices", "identical"}``: ``identical`` is True when every
        thresholded prediction is the same in both runs.

    Raises:
        FileNotFoundError: the cell's weights are not in ``out_dir/models`` (run its cell first).
    """
    import torch
    from monai.transforms import Compose, Lambdad

    from pathseqsam.compare.study import _evaluate, arm_workflow, eval_pieces

    weights = Path(out_dir) / "models" / f"{arm}__seed{seed}.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no saved weights for {arm} seed {seed}; run its cell first")
    work = Path(out_dir) / "work" / f"leakage_{arm}__seed{seed}"
    workflow, _ = arm_workflow(settings, arm, seed, data, work, configs)
    network = workflow.parser.get_parsed_content("network")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    pieces = eval_pieces(workflow.parser.get_parsed_content)
    datalist = data["test"][test_set]
    items = load_datalist(datalist, "test")[:cases]
    kinds = {(str(it["case"]), i): "?" for it in items for i in range(len(it["image"]))}
    preds: dict[str, list[np.ndarray]] = {"true": [], "zeroed": []}
    with torch.no_grad():
        _evaluate(pieces, network, items, {}, kinds, keep_pred=preds["true"])
        pieces["preprocessing"] = Compose(
            [pieces["preprocessing"], Lambdad("label", lambda x: x * 0)]  # no truth left to read
        )
        _evaluate(pieces, network, items, {}, kinds, keep_pred=preds["zeroed"])
    workflow.finalize()
    shutil.rmtree(work, ignore_errors=True)
    identical = len(preds["true"]) == len(preds["zeroed"]) and all(
        np.array_equal(a, b) for a, b in zip(preds["true"], preds["zeroed"])
    )
    return {
        "arm": arm,
        "seed": int(seed),
        "test_set": test_set,
        "slices": int(sum(p.shape[0] for p in preds["true"])),
        "identical": bool(identical),
    }


def check_leakage(
    settings: Any,
    data: dict[str, Any],
    out_dir: str | Path,
    configs: str | Path,
    arms: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All three checks on the study's data (from :func:`pathseqsam.compare.study.prepare_data`).

    ``arms`` are the trained arms whose saved weights the truth check evaluates (default: those of
    ``sam2_memory`` and ``memory_last``, the pair the protocol's trigger compares, that the grid has;
    else its first arm).

    Returns:
        ``{"shared_slices", "shared_blocks", "positions", "truth_blind", "clean"}``: the lists of test
        slices and test blocks also found in a training set (empty when clean), the gap statistics per
        set, the truth-blind result per arm, and whether every check passed.
    """
    train_pixels: dict[str, str] = {}
    train_blocks: dict[str, str] = {}
    positions: dict[str, dict[str, float]] = {}
    for s, datalist in sorted(data["train"].items()):
        train_pixels.update({h: f"train_seed{s}:{v}" for h, v in pixel_hashes(datalist, "training").items()})
        train_blocks.update(
            {h: f"train_seed{s}:{v}" for h, v in block_identity(datalist, "training").items()}
        )
        positions[f"train_seed{s}"] = position_damage_gaps(datalist, "training")
    shared_slices, shared_blocks = [], []
    for name, datalist in sorted(data["test"].items()):
        for h, where in pixel_hashes(datalist, "test").items():
            if h in train_pixels:
                shared_slices.append(f"test_{name}:{where} = {train_pixels[h]}")
        for h, case in block_identity(datalist, "test").items():
            if h in train_blocks:
                shared_blocks.append(f"test_{name}:{case} = {train_blocks[h]}")
        positions[f"test_{name}"] = position_damage_gaps(datalist, "test")
    if arms is None:
        arms = [a for a in TRUTH_ARMS if a in settings.arms] or list(settings.arms[:1])
    blind = [truth_blind(settings, arm, seed, data, out_dir, configs) for arm in arms]
    nulls = positions.get("test_nulls")
    constant_nulls = nulls is None or np.isclose(nulls["gap_min_um"], nulls["gap_max_um"])
    return {
        "shared_slices": shared_slices,
        "shared_blocks": shared_blocks,
        "positions": positions,
        "nulls_gaps_constant": bool(constant_nulls),
        "truth_blind": blind,
        "clean": not shared_slices
        and not shared_blocks
        and bool(constant_nulls)
        and all(b["identical"] for b in blind),
    }
