"""scripts/compare.py end to end: two variants, one epoch, 128 px, tiny models; report read back and
checked against the evaluator's own per-patch outputs (MetricsSaver), recomputed independently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathseqsam.compare.cli import main, parse_set
from pathseqsam.compare.report import REPORT_COLUMNS

SIZE = 128
BUNDLE_SETTINGS = ["window=2", "batch_size=2", "train#windows_per_case=1"]


def _cli(out: Path, dataset: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--dataset-dir", str(dataset), "--image-size", str(SIZE), *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from pathseqsam.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("compare") / "data"
    # one test case of 4 sections, 2 of them degraded (never two neighbours), all with a glomerulus
    generate_synthetic_dataset(
        out,
        cases=5,
        seed=0,
        image_size=SIZE,
        sections=4,
        contact_sheet=False,
        field_um=256.0,
        degraded_fraction=0.5,
    )
    return out


@pytest.fixture(scope="module")
def comparison(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "out"
    # evaluated on 3 fresh synthetic cases (the default evaluation set, made smaller)
    variants = ["--variants", "pathseqsam", "dynunet"]
    status = main(
        _cli(out, dataset, *variants, "--epochs", "1", "--eval-cases", "3", "--set", *BUNDLE_SETTINGS)
    )
    assert status == 0
    return out


def _report(out: Path) -> list[dict[str, str]]:
    with open(out / "report.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == REPORT_COLUMNS
        return list(reader)


def _metrics_saver(run: Path) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """The evaluator's own outputs: MetricsSaver's per-patch Dice and its metrics.csv."""
    with open(run / "eval" / "val_mean_dice_raw.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    with open(run / "eval" / "metrics.csv") as f:
        metrics = {k: float(v) for k, v in (line.strip().split(",") for line in f if line.strip())}
    return [r[0] for r in rows], np.array([float(r[1]) for r in rows]), metrics


def test_report_numbers_equal_the_evaluators(comparison):
    rows = _report(comparison)
    assert [r["variant"] for r in rows] == ["pathseqsam", "dynunet"]
    datalist = json.loads((comparison / "eval_data" / "datalist_eval.json").read_text())
    assert len(datalist["test"]) == 3
    flags = {
        f"{item['case']}/{Path(p).name}": d
        for item in datalist["test"]
        for p, d in zip(item["image"], item["degraded"])
    }
    for row in rows:
        names, dice, metrics = _metrics_saver(comparison / row["variant"])
        assert sorted(names) == sorted(flags)  # every patch of the evaluation set, once
        scored = np.isfinite(dice)  # patches without a glomerulus are left out of the Dice
        assert int(row["dice_n"]) == scored.sum() > 0
        assert float(row["dice_mean"]) == pytest.approx(np.nanmean(dice), rel=1e-4)
        assert float(row["dice_mean"]) == pytest.approx(metrics["val_mean_dice"], rel=1e-4)
        assert float(row["dice_sd"]) == pytest.approx(np.nanstd(dice), rel=1e-3, abs=1e-6)
        degraded = np.array([flags[n] == 1 for n in names])
        assert 0 < (degraded & scored).sum() < scored.sum()  # both kinds of slices are scored
        assert int(row["degraded_dice_n"]) == (degraded & scored).sum()
        assert float(row["degraded_dice_mean"]) == pytest.approx(np.nanmean(dice[degraded]), rel=1e-4)
        assert float(row["clean_dice_mean"]) == pytest.approx(np.nanmean(dice[~degraded]), rel=1e-4)
        assert float(row["object_f1"]) == pytest.approx(metrics["val_object_f1"], rel=1e-5, abs=1e-7)
        assert int(row["epochs"]) == 1 and row["stopped_by_budget"] == "False"
        assert float(row["train_seconds"]) > 0 and float(row["eval_seconds"]) > 0


def test_parameter_counts_match_the_networks(comparison):
    from pathseqsam import build_pathseqsam
    from pathseqsam.modeling.baselines import build_dynunet

    rows = {r["variant"]: r for r in _report(comparison)}
    dyn = sum(p.numel() for p in build_dynunet(SIZE, width="tiny").parameters())
    assert int(rows["dynunet"]["params_total"]) == int(rows["dynunet"]["params_trainable"]) == dyn
    net = build_pathseqsam(model="tiny", image_size=SIZE, train_image_encoder=True, model_mpp_um=2.0)
    assert int(rows["pathseqsam"]["params_total"]) == sum(p.numel() for p in net.parameters())
    # the evaluated model is the one training saved: load it back into the network
    state = torch.load(comparison / "pathseqsam" / "models" / "model.pt", weights_only=True)
    net.load_state_dict(state)


def test_markdown_report_and_plots(comparison):
    text = (comparison / "report.md").read_text()
    assert "| variant | Dice all | Dice degraded |" in text
    assert "`pathseqsam` vs `dynunet`:" in text and "degraded slices:" in text
    row = next(r for r in _report(comparison) if r["variant"] == "dynunet")
    assert f"{100 * float(row['dice_mean']):.2f} +- {100 * float(row['dice_sd']):.2f}" in text
    for name in ("dice_per_variant.png", "dice_vs_quality.png", "validation_curves.png"):
        path = comparison / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert f"`{name}`" in text
    assert not list(comparison.glob(".~*"))  # no temporary files left by the atomic writes


def test_report_only_rebuilds_the_same_table(comparison, dataset):
    before = (comparison / "report.csv").read_text()
    status = main(_cli(comparison, dataset, "--variants", "pathseqsam", "dynunet", "--report-only"))
    assert status == 0
    assert (comparison / "report.csv").read_text() == before
    text = (comparison / "report.md").read_text()
    assert "with --report-only" in text
    assert "--epochs 1 --eval-cases 3" in text  # the command of the run that trained the variants


def test_time_budget_stops_training_and_still_evaluates(dataset, tmp_path, capfd):
    out = tmp_path / "budget"
    # a foreign folder where a variant would write is refused, not deleted
    (out / "dynunet").mkdir(parents=True)
    (out / "dynunet" / "notes.txt").write_text("keep me")
    variants = ["--variants", "sam2_per_slice", "dynunet"]
    budget = ["--max-minutes", "0.0001", "--epochs", "3", "--eval-cases", "0"]
    status = main(_cli(out, dataset, *variants, *budget, "--set", *BUNDLE_SETTINGS))
    assert status == 1
    captured = capfd.readouterr()
    assert "is not a comparison output folder" in captured.err
    assert "failed variants: dynunet" in captured.out
    assert (out / "dynunet" / "notes.txt").read_text() == "keep me"
    (row,) = _report(out)
    assert not (out / "eval_data").exists()  # --eval-cases 0: the dataset's test split
    # stopped after its first iteration (an epoch has 2), validated, evaluated
    result = json.loads((out / "sam2_per_slice" / "result.json").read_text())
    assert result["iterations"] == 1 and result["epochs"] == 1 and result["stopped_by_budget"] is True
    assert row["variant"] == "sam2_per_slice" and row["stopped_by_budget"] == "True"
    assert (out / "sam2_per_slice" / "models" / "model.pt").is_file()
    assert "time budget" in (out / "report.md").read_text()


def test_command_line_errors():
    assert parse_set(["a=1", "b=x", "c#d=[1, 2]"]) == {"a": 1, "b": "x", "c#d": [1, 2]}
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        parse_set(["image_size"])
    with pytest.raises(ValueError, match="not both"):
        main(["--variants", "dynunet", "--max-minutes", "1", "--total-minutes", "2", "--report-only"])
    with pytest.raises(ValueError, match="unknown variant 'nnunet'"):
        main(["--variants", "nnunet"])


def test_evaluation_set_is_fresh_reused_and_only_for_synthetic_data(comparison, dataset, tmp_path):
    from pathseqsam.compare.evalset import make_eval_set, synthetic_settings

    eval_dir = comparison / "eval_data"
    source, made = synthetic_settings(dataset), synthetic_settings(eval_dir)
    assert made == {**source, "seed": source["seed"] + 1000, "cases": 3}
    first = Image.open(
        dataset / json.loads((dataset / "datalist.json").read_text())["training"][0]["image"][0]
    )
    fresh = Image.open(
        eval_dir / json.loads((eval_dir / "datalist_eval.json").read_text())["test"][0]["image"][0]
    )
    assert np.abs(np.asarray(first, float) - np.asarray(fresh, float)).mean() > 5  # other tissue
    stamp = (eval_dir / "datalist.json").stat().st_mtime_ns
    make_eval_set(dataset, eval_dir, 3)  # same settings: reused, not regenerated
    assert (eval_dir / "datalist.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        make_eval_set(tmp_path, tmp_path / "e", 3)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "datalist.json").write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(ValueError, match="--eval-cases needs a synthetic dataset"):
        main(_cli(tmp_path / "o", plain, "--variants", "dynunet", "--eval-cases", "2"))
    with pytest.raises(ValueError, match="add --eval-cases 0"):
        main(_cli(tmp_path / "o", dataset, "--variants", "dynunet", "--eval-split", "validation"))


def test_validation_curve_is_read_from_each_runs_curves_csv(comparison, tmp_path):
    from pathseqsam.compare.plots import read_validation_curve

    # the bundle's own curves.csv: one row per epoch, the metric on the epochs that validated
    path = comparison / "dynunet" / "eval" / "curves.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    expected = [(int(r[0]), float(r[2])) for r in rows if r[2].strip()]
    epochs, values = read_validation_curve(path)
    assert expected and list(zip(epochs.tolist(), values.tolist())) == expected
    bad = tmp_path / "curves.csv"
    bad.write_text("epoch,train_loss\n1,0.5\n")
    with pytest.raises(ValueError, match=r"curves.csv: expected columns 'epoch' and 'val_mean_dice'"):
        read_validation_curve(bad)
