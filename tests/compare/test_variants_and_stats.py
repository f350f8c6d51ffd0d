"""Comparison building blocks: variant overlays, per-patch tables, summaries, paired differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from pathseqsam.compare.report import comparisons, report_rows, write_report_md
from pathseqsam.compare.stats import (
    PatchTable,
    damage_kinds,
    paired_difference,
    read_per_patch,
    variant_summary,
)
from pathseqsam.compare.variants import DEFAULT_VARIANTS, discover_variants, select_variants
from pathseqsam.engine.per_patch_saver import PER_PATCH_COLUMNS

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"

# what each overlay must change, read back from the built network and loss
EXPECTED = {
    "pathseqsam": {"memory_selection": "topk", "distance_mode": "multiplicative", "memory_k": 5},
    "sam2_per_slice": {"memory_selection": "none"},
    "sam2_memory": {"memory_selection": "last", "distance_mode": "none"},
    "distance_additive": {"distance_mode": "additive", "memory_selection": "topk"},
    "distance_none": {"distance_mode": "none", "memory_selection": "topk"},
    "memory_last": {"memory_selection": "last", "distance_mode": "multiplicative"},
    "memory_k1": {"memory_k": 1},
    "memory_k3": {"memory_k": 3},
    "memory_k7": {"memory_k": 7},
}


def test_discovery_finds_every_overlay_and_defaults_are_table1():
    variants = discover_variants(CONFIGS)
    assert next(iter(variants)) == "pathseqsam"
    assert {"dynunet", "swinunetr", "sam2_per_slice", "sam2_memory"} == {
        v.name for v in variants.values() if v.group == "baselines"
    }
    assert {
        "distance_additive",
        "distance_none",
        "memory_last",
        "memory_k1",
        "memory_k3",
        "memory_k7",
        "consistency_off",
        "lora_off",
        "encoder_full",
        "random_init",
    } == {v.name for v in variants.values() if v.group == "ablations"}
    assert [v.name for v in select_variants(variants, None)] == list(DEFAULT_VARIANTS)
    chosen = select_variants(variants, ["memory_k3", "baselines", "memory_k3"])
    assert [v.name for v in chosen][:2] == ["memory_k3", "dynunet"] and len(chosen) == 5
    with pytest.raises(ValueError, match="unknown variant 'k9'; known: pathseqsam"):
        select_variants(variants, ["k9"])


def test_bad_overlays_are_named(tmp_path):
    (tmp_path / "train.json").write_text("{}")
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "x.json").write_text('{"memory_k": 2}')
    with pytest.raises(ValueError, match=r"x.json: overlay has no '_comment'"):
        discover_variants(tmp_path)
    (tmp_path / "ablations" / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x\.json: not valid JSON"):
        discover_variants(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train\.json not found"):
        discover_variants(tmp_path / "nowhere")


def _parsed(variant, key: str):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *[str(p) for p in variant.overlays]])
    parser.update({"image_size": 64, "dataset_dir": "/nonexistent"})
    return parser.get_parsed_content(key)


@pytest.mark.parametrize("name", sorted(discover_variants(CONFIGS)))
def test_each_overlay_builds_what_it_says(name):
    variant = discover_variants(CONFIGS)[name]
    torch.manual_seed(0)
    net = _parsed(variant, "network_def")
    loss = _parsed(variant, "loss")
    if name in ("dynunet", "swinunetr"):
        assert type(net).__name__ == "SliceWise"
        assert type(net.net).__name__ == {"dynunet": "DynUNet", "swinunetr": "SwinUNETR"}[name]
        assert loss.weights == {"dice": 1.0, "bce": 0.5, "consistency": 0.0, "object": 0.0, "iou": 0.0}
        out = net(torch.randn(1, 3, 2, 64, 64), return_aux=True)
        assert loss(out, torch.zeros(1, 1, 2, 64, 64)).isfinite()
        return
    for attr, value in EXPECTED.get(name, {}).items():
        assert getattr(net, attr) == value, (name, attr)
    expected_consistency = 0.0 if name == "consistency_off" else 0.2
    assert loss.weights["consistency"] == expected_consistency
    encoder_trains = any(
        p.requires_grad
        for n, p in net.named_parameters()
        if n.startswith("image_encoder.") and "lora_" not in n
    )
    lora = [n for n, _ in net.named_parameters() if "lora_" in n]
    if name == "lora_off":  # pretrained encoder frozen, nothing added
        assert not lora and not encoder_trains
    elif name == "encoder_full":  # pretrained encoder fine-tuned in full
        assert not lora and encoder_trains
    elif name == "random_init":  # no checkpoint: the random encoder trains in full (LoRA kept)
        assert lora and encoder_trains
    else:  # the paper's recipe from the bundle's pretrained checkpoint: frozen encoder + LoRA
        assert lora and not encoder_trains


def _write_table(path: Path, rows: list[dict]) -> Path:
    lines = [",".join(PER_PATCH_COLUMNS)]
    for r in rows:
        lines.append(",".join(str(r.get(c, "")) for c in PER_PATCH_COLUMNS))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tables_summaries_and_paired_differences(tmp_path):
    rows_a = [
        {
            "patch": "c/0",
            "case": "c",
            "slice_index": 0,
            "degraded": 0,
            "dice": 0.9,
            "tp": 1,
            "fp": 0,
            "fn": 0,
        },
        {
            "patch": "c/1",
            "case": "c",
            "slice_index": 1,
            "degraded": 1,
            "dice": 0.5,
            "tp": 0,
            "fp": 1,
            "fn": 1,
        },
        {
            "patch": "c/2",
            "case": "c",
            "slice_index": 2,
            "degraded": 0,
            "dice": "nan",
            "tp": 0,
            "fp": 2,
            "fn": 0,
        },
        {
            "patch": "c/3",
            "case": "c",
            "slice_index": 3,
            "degraded": 1,
            "dice": 0.7,
            "tp": 1,
            "fp": 0,
            "fn": 0,
        },
    ]
    rows_b = [dict(r, dice=d) for r, d in zip(rows_a, [0.8, 0.6, "nan", 0.3])]
    meta = tmp_path / "synthetic_meta.json"
    meta.write_text(
        json.dumps(
            {"case_meta": [{"case": "c", "damage": [{"kinds": []}, {"kinds": ["fold"]}, {"kinds": []}, {}]}]}
        )
    )
    kinds = damage_kinds(meta)
    assert kinds == {("c", 1): ["fold"]}
    a = read_per_patch(_write_table(tmp_path / "a.csv", rows_a), kinds)
    b = read_per_patch(_write_table(tmp_path / "b.csv", rows_b), kinds)
    assert a.quality == [("clean",), ("fold",), ("clean",), ("degraded",)]
    s = variant_summary(a)
    assert s["all"]["mean"] == pytest.approx(np.mean([0.9, 0.5, 0.7]))
    assert s["all"]["std"] == pytest.approx(np.std([0.9, 0.5, 0.7]))
    assert s["degraded"]["mean"] == pytest.approx(0.6) and s["degraded"]["count"] == 2
    assert s["clean"]["mean"] == pytest.approx(0.9) and s["clean"]["count"] == 1
    assert s["object_f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 1))

    d = paired_difference(a.dice, b.dice)
    diffs = np.array([0.1, -0.1, 0.4])
    assert d["n"] == 3 and (d["wins"], d["losses"], d["ties"]) == (2, 1, 0)
    assert d["mean"] == pytest.approx(diffs.mean()) and d["sd"] == pytest.approx(diffs.std())
    # the percentile bootstrap of the mean lies within the range of the differences and brackets the mean
    assert diffs.min() <= d["ci_low"] <= d["mean"] <= d["ci_high"] <= diffs.max()
    assert paired_difference(a.dice, b.dice) == d  # seeded: reports are reproducible
    gains = comparisons("a", {"a": a, "b": b}, ["b"])
    assert gains[0]["degraded"]["n"] == 2 and gains[0]["degraded"]["mean"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="different patches"):
        comparisons("a", {"a": a, "b": read_per_patch(_write_table(tmp_path / "c.csv", rows_a[:3]))}, ["b"])

    rows = report_rows(
        [{"variant": "a", "group": "method", "overlays": [], "description": "A", "epochs": 3}], {"a": a}
    )
    assert rows[0]["degraded_dice_n"] == 2 and rows[0]["epochs"] == 3 and rows[0]["train_seconds"] is None


def test_per_patch_table_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patch,dice\nx,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: not a per-patch table"):
        read_per_patch(bad)
    rows = [{"patch": "c/0", "case": "c", "slice_index": 0, "degraded": 0, "dice": "high", "tp": 1}]
    with pytest.raises(ValueError, match=r"t\.csv, line 2: column 'dice' is not a number: 'high'"):
        read_per_patch(_write_table(tmp_path / "t.csv", rows))


def _table(dice, degraded) -> PatchTable:
    n = len(dice)
    return PatchTable(
        patch=[f"c/{i}" for i in range(n)],
        case=["c"] * n,
        slice_index=np.arange(n),
        degraded=np.asarray(degraded, dtype=float),
        dice=np.asarray(dice, dtype=float),
        counts=np.ones((n, 3)),
        quality=[("clean",) if d == 0 else ("fold",) for d in degraded],
    )


def test_markdown_verdicts_say_what_the_numbers_support(tmp_path):
    rng = np.random.default_rng(0)
    degraded = [0, 1] * 10  # 10 degraded, 10 clean patches
    base = np.repeat(rng.uniform(0.5, 0.9, 10), 2)  # each clean patch paired with an equal degraded one
    tables = {
        "pathseqsam": _table(base + 0.05, degraded),  # better by 0.05 on every patch: resolved
        "sam2_per_slice": _table(base - np.where(np.array(degraded) == 1, 0.2, 0.0), degraded),
        "noisy": _table(base + rng.normal(0, 0.2, 20), degraded),  # no consistent difference
    }
    results = [
        {"variant": v, "group": "x", "overlays": [], "description": v, "epochs": 2, "max_epochs": 2}
        | {"stopped_by_budget": False, "train_seconds": 61.0, "eval_seconds": 1.0}
        | {"params_trainable": 10, "params_total": 20, "best_val_dice": None}
        for v in tables
    ]
    rows = report_rows(results, tables)
    gains = comparisons("pathseqsam", tables, ["sam2_per_slice", "noisy"])
    path = write_report_md(tmp_path / "r.md", rows, gains, "pathseqsam", {"command": "`x`"}, {"p": "p.png"})
    text = path.read_text()
    assert (
        "- all slices: pathseqsam gains 15.00 Dice points against sam2_per_slice (mean paired difference +15.00"
        in text
    )
    assert "the 95% interval excludes 0: a difference this run resolves" in text
    assert "the 95% interval includes 0: no difference this run can resolve" in text  # vs noisy
    assert "| 1 min 01 s | 10 / 20 |" in text and "| n/a | 2/2 |" in text  # best val Dice missing
    # the per-slice model's clean-vs-degraded gap: 0.2 by construction
    assert "a gap of 20.00 Dice points" in text
    # resolved but tiny: +0.2 Dice points on every patch
    tiny = {"pathseqsam": _table(base + 0.002, degraded), "noisy": _table(base, degraded)}
    text = write_report_md(
        tmp_path / "t.md", rows, comparisons("pathseqsam", tiny, ["noisy"]), "pathseqsam", {}, {}
    ).read_text()
    assert "the 95% interval excludes 0, but the difference is under 1 Dice point: negligible" in text
    few = comparisons(
        "pathseqsam", {k: _table(t.dice[:4], degraded[:4]) for k, t in tables.items()}, ["noisy"]
    )
    text = write_report_md(tmp_path / "f.md", rows, few, "pathseqsam", {}, {}).read_text()
    assert "too few patches (fewer than 10)" in text
