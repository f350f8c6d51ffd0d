"""The mechanisms study's harness: the smoke grid runs, a partial grid resumes without recomputing
finished cells, cells from other code are refused, and the per-slice score follows the empty-truth
rule. CI tests the harness, never the figures."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from pathseqsam.compare.cells import CELL_COLUMNS, cell_path, read_cell, read_cells_csv, write_cell
from pathseqsam.compare.study import CONTROL_ARM, SMOKE, empty_rule_dice
from pathseqsam.compare.study_cli import main


def test_empty_rule_dice_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 pixels, 4 shared
    assert empty_rule_dice(pred, truth) == pytest.approx(2 * 4 / 10)
    assert empty_rule_dice(np.zeros((4, 4)), truth) == 0.0
    assert empty_rule_dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # empty truth, empty prediction
    assert empty_rule_dice(pred, np.zeros((4, 4))) == 0.0  # empty truth, something predicted


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke grid interrupted after its first cell (a partial grid), then rerun to the end."""
    out = tmp_path_factory.mktemp("study") / "smoke"
    assert main(["--smoke", "--out", str(out), "--no-estimate", "--max-cells", "1"]) == 0
    first = cell_path(out / "cells", *SMOKE.cells()[0])
    assert first.is_file() and len(list((out / "cells").glob("*.json.gz"))) == 1
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()
    assert main(["--smoke", "--out", str(out), "--no-estimate"]) == 0
    return out, first, stamp, content


def test_partial_grid_resumes_without_recomputing(smoke, capsys):
    out, first, stamp, content = smoke
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content  # not recomputed
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(
        f"{arm}__seed{seed}.json.gz" for arm, seed in SMOKE.cells()
    )
    # a third run has nothing left to do: every cell is skipped, none rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert main(["--smoke", "--out", str(out), "--no-estimate"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(SMOKE.cells())


def test_cells_and_csv_hold_every_slice_once(smoke):
    out = smoke[0]
    rows = read_cells_csv(out / "cells.csv.gz")
    with gzip.open(out / "cells.csv.gz", "rt") as f:
        assert f.readline().strip().split(",") == list(CELL_COLUMNS)
    arms = sorted({*SMOKE.arms, CONTROL_ARM})
    assert sorted({r["arm"] for r in rows}) == arms
    slices_per_set = SMOKE.test_cases * SMOKE.sections
    for arm in arms:
        for seed in SMOKE.seeds:
            for dial in SMOKE.test_sets:
                keys = [
                    (r["case"], r["slice"])
                    for r in rows
                    if (r["arm"], r["seed"], r["dial"]) == (arm, seed, dial)
                ]
                assert len(keys) == len(set(keys)) == slices_per_set
    for r in rows:  # the empty-truth rule, and Dice within [0, 1]
        assert 0.0 <= r["dice"] <= 1.0
        if r["truth_empty"]:
            assert r["dice"] == (1.0 if r["pred_empty"] else 0.0)
        assert (r["damage_kind"] == "none") == (r["degraded"] == 0)
    # the flags and damage kinds are the test set's own, from its synthetic_meta.json
    meta = json.loads((out / "data" / "test_all" / "synthetic_meta.json").read_text())
    truth = {
        (c["case"], i): "+".join(d["kinds"]) or "none"
        for c in meta["case_meta"]
        for i, d in enumerate(c["damage"])
    }
    for r in rows:
        if r["dial"] == "all":
            assert r["damage_kind"] == truth[(r["case"], r["slice"])]
    # the control sees the same slices with permuted positions
    own = {
        (r["seed"], r["dial"], r["case"], r["slice"]): r["position_um"]
        for r in rows
        if r["arm"] == "pathseqsam"
    }
    shuffled = {
        (r["seed"], r["dial"], r["case"], r["slice"]): r["position_um"]
        for r in rows
        if r["arm"] == CONTROL_ARM
    }
    assert own.keys() == shuffled.keys() and own != shuffled


def test_records_name_the_code_and_a_resume_refuses_other_code(smoke, capsys):
    out, first = smoke[0], smoke[1]
    record, rows = read_cell(first)
    assert len(record["code_sha256"]) == 64 and record["commit"]
    assert record["iterations"] == SMOKE.epochs * SMOKE.iterations_per_epoch
    assert record["train_seconds"] > 0 and record["eval_seconds"] > 0
    write_cell(first, {**record, "code_sha256": "0" * 64}, rows)
    assert main(["--smoke", "--out", str(out), "--no-estimate"]) == 2
    err = capsys.readouterr().err
    assert str(first) in err and "never mixes cells from different model/training code" in err
    write_cell(first, record, rows)  # put it back for the other tests


def test_report_from_the_smoke_rows(smoke, capsys):
    out = smoke[0]
    assert main(["--smoke", "--out", str(out), "--report-only"]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    assert "# Mechanisms study: report" in (out / "report.md").read_text()
    assert main(["--smoke", "--out", str(out / "none"), "--report-only"]) == 2


def test_the_seed_sets_the_initial_weights(smoke):
    """The network is built while the workflow initialises: the cell's seed must be in force then."""
    from pathlib import Path

    import torch

    from pathseqsam.compare.runner import RunSettings, _workflow
    from pathseqsam.compare.study import _overrides, _seeded_initialize

    configs = Path(__file__).resolve().parents[2] / "bundle" / "configs"
    datalist = smoke[0] / "data" / "train_seed0" / "study_train.json"
    weights = []
    for seed in (0, 1, 0):
        overrides = _overrides(SMOKE, configs, datalist, smoke[0] / "probe", None)
        overrides["initialize"] = _seeded_initialize([configs / "train.json"], seed)
        workflow = _workflow(
            RunSettings(configs_dir=configs, out_dir=smoke[0] / "probe"), [configs / "train.json"], overrides
        )
        net = workflow.parser.get_parsed_content("network")
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters() if p.requires_grad]))
    assert not torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    with pytest.raises(ValueError, match=re.escape("has no '$monai.utils.set_determinism(seed=0)'")):
        _seeded_initialize([configs / "evaluate.json"], 1)


def test_compression_grid_evaluates_the_trained_model_twice(tmp_path):
    """--grid compression: the full model trained once, evaluated without and with compression."""
    out = tmp_path / "cmp"
    assert main(["--grid", "compression", "--smoke", "--out", str(out), "--no-estimate"]) == 0
    rows = read_cells_csv(out / "cells.csv.gz")
    arms = {}
    for r in rows:
        arms.setdefault(r["arm"], []).append((r["seed"], r["dial"], r["case"], r["slice"]))
    assert set(arms) == {"pathseqsam", "pathseqsam_compressed"}
    assert sorted(arms["pathseqsam"]) == sorted(arms["pathseqsam_compressed"])  # the same slices, paired
    assert main(["--grid", "compression", "--report-only", "--csv", str(out / "cells.csv.gz")]) == 0
    assert (out / "report.md").read_text().startswith("# Distance-aware memory compression: quality")


@pytest.mark.parametrize(("loss", "may_change"), [(0.0, True), (0.02, False)])
def test_compression_decision_rule(tmp_path, loss, may_change):
    """The default may change only if the lower bound of (on - off) is >= -0.5 Dice points."""
    from pathseqsam.compare.cells import write_cells_csv
    from pathseqsam.compare.compression_report import build_compression_report

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        for case in range(20):
            base = rng.uniform(0.6, 0.9)
            for arm, shift in (("pathseqsam", 0.0), ("pathseqsam_compressed", -loss)):
                rows.append(
                    dict(arm=arm, seed=seed, dial="all", case=f"c{case}", slice=0, position_um=0.0,
                         damage_kind="none", degraded=0, truth_empty=0, pred_empty=0, dice=base + shift)
                )  # fmt: skip
    write_cells_csv(tmp_path / "cells.csv.gz", rows)
    figures = build_compression_report(tmp_path / "cells.csv.gz")
    diff = figures["sets"]["all"]["all slices"]["on - off"]
    assert diff["value"] == pytest.approx(-loss, abs=1e-9)
    assert figures["default_may_change"] is may_change


def test_leakage_check_passes_on_the_smoke_grid_and_reads_back(smoke, capsys):
    out = smoke[0]
    assert main(["--smoke", "--out", str(out), "--check-leakage"]) == 0
    result = json.loads((out / "leakage.json").read_text())
    assert result["shared_slices"] == [] and result["shared_blocks"] == []
    assert result["clean"] is True and result["nulls_gaps_constant"] is True
    (blind,) = result["truth_blind"]
    assert blind["arm"] == "sam2_memory" and blind["identical"] is True
    assert blind["slices"] == min(4, SMOKE.test_cases) * SMOKE.sections
    assert "clean" in capsys.readouterr().out


def test_leakage_check_finds_a_test_case_in_training(smoke, tmp_path):
    """A 'test set' made of training cases is found both by its pixels and by its tissue blocks."""
    from pathseqsam.compare.leakage import check_leakage
    from pathseqsam.data.datalist import load_datalist

    train = smoke[0] / "data" / "train_seed0" / "study_train.json"
    leaked = train.parent / "leaked_test.json"  # beside synthetic_meta.json, as a test set's datalist
    items = load_datalist(train, "training")[:1]
    leaked.write_text(json.dumps({"test": items}))
    try:
        result = check_leakage(
            SMOKE, {"train": {0: train}, "test": {"leak": leaked}}, smoke[0], None, arms=()
        )
    finally:
        leaked.unlink()
    case = items[0]["case"]
    assert result["clean"] is False
    assert f"test_leak:{case}/0 = train_seed0:{case}/0" in result["shared_slices"]
    assert result["shared_blocks"] == [f"test_leak:{case} = train_seed0:{case}"]


def test_position_gaps_by_hand(tmp_path):
    from PIL import Image

    from pathseqsam.compare.leakage import position_damage_gaps

    paths = []
    for i in range(4):
        p = tmp_path / f"s{i}.png"
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(p)
        paths.append(str(p))
    item = {
        "image": paths,
        "case": "c",
        "positions_um": [[0.0], [4.0], [20.0], [24.0]],
        "degraded": [0, 0, 1, 0],
    }
    (tmp_path / "d.json").write_text(json.dumps({"test": [item]}))
    gaps = position_damage_gaps(tmp_path / "d.json", "test")
    p = gaps.pop("permutation_p")
    assert gaps == {
        "gap_min_um": 4.0,
        "gap_max_um": 16.0,
        "gap_before_degraded_um": 16.0,
        "gap_before_clean_um": 4.0,
    }
    # one damaged gap of three: only 1 of 3 placements is as extreme
    assert p == pytest.approx(1 / 3, abs=0.03)
