"""Slide evaluation: KPIs Task 2 reader, scores of mask TIFFs, slides.csv / summary.json."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import tifffile

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.wsi.evaluate import SlideEvaluator, score_mask_files
from pathseqsam.wsi.kpis import kpis_task2_pairs, pair_slides_with_masks
from pathseqsam.wsi.reader import SlideError
from tests.wsi.slide_helpers import ColourOracle
from tests.wsi.test_slide_metrics import _reference


@pytest.fixture(scope="module")
def task2_root(tmp_path_factory, slide_files):
    """The session's synthetic slide in the KPIs Task 2 layout."""
    root = tmp_path_factory.mktemp("kpis")
    folder = root / "Task2_WSI_level" / "synthetic"
    folder.mkdir(parents=True)
    shutil.copy(slide_files["slide"], folder / "syn_00_wsi.tiff")
    shutil.copy(slide_files["mask"], folder / "syn_00_mask.tiff")
    return root


def test_kpis_task2_reader(tmp_path, task2_root):
    pairs = kpis_task2_pairs(task2_root)
    folder = task2_root / "Task2_WSI_level" / "synthetic"
    assert pairs == [
        {
            "slide": str(folder / "syn_00_wsi.tiff"),
            "mask": str(folder / "syn_00_mask.tiff"),
            "class": "synthetic",
            "id": "syn_00",
        }
    ]
    lonely = tmp_path / "Task2_WSI_level" / "DN"
    lonely.mkdir(parents=True)
    (lonely / "11_22_wsi.tiff").write_bytes(b"x")
    with pytest.raises(
        SequenceDataError,
        match=r"11_22_wsi\.tiff: no ground-truth mask beside it \(expected 11_22_mask\.tiff\)",
    ):
        kpis_task2_pairs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SequenceDataError, match=r"empty: no <class>/<id>_wsi\.tiff slides"):
        kpis_task2_pairs(empty)


def test_pairing_by_name():
    pairs = pair_slides_with_masks(["/a/s1.svs", "/a/12_3_wsi.tiff"], ["/m/12_3_mask.tiff", "/m/s1_mask.tif"])
    assert [p["mask"] for p in pairs] == ["/m/s1_mask.tif", "/m/12_3_mask.tiff"]
    with pytest.raises(SequenceDataError, match=r"s2\.svs: no mask named s2_mask"):
        pair_slides_with_masks(["/a/s2.svs"], ["/m/s1_mask.tif"])


def test_scores_of_mask_files_equal_an_independent_computation(tmp_path, slide_files):
    gt = tifffile.imread(slide_files["mask"], key=0) > 0
    # a prediction with known faults: shifted, three objects erased, one blob added
    pred = np.roll(gt, (3, -2), axis=(0, 1))
    from scipy import ndimage

    labels, n = ndimage.label(pred, np.ones((3, 3)))
    pred[np.isin(labels, [1, 2, 3])] = False
    pred[100:140, 100:140] = True
    path = tmp_path / "pred.tif"
    tifffile.imwrite(path, pred.astype(np.uint8) * 255, tile=(256, 256), photometric="minisblack")
    got = score_mask_files(path, slide_files["mask"], band_pixels=2048 * 100)  # 100-row bands
    iou = _reference(pred, gt)
    tp = int((iou >= 0.5).sum())
    assert got["dice"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
    assert (got["n_pred"], got["n_gt"], got["tp"]) == (iou.shape[0], iou.shape[1], tp)
    assert got["n_gt"] == n and got["tp"] == n - 3 and got["fp"] == 1


def test_mask_size_mismatch_is_named(tmp_path, slide_files):
    small = tmp_path / "small_mask.tif"
    tifffile.imwrite(small, np.zeros((1000, 2048), np.uint8), tile=(256, 256))
    with pytest.raises(
        SlideError,
        match=r"small_mask\.tif: ground-truth mask is 2048x1000 px but the prediction .* is 2048x2048 px",
    ):
        score_mask_files(slide_files["mask"], small)


def test_evaluator_writes_csv_and_summary(tmp_path, task2_root, scene):
    out = tmp_path / "eval"
    summary = SlideEvaluator(ColourOracle(), out, dataset_dir=task2_root, model_mpp_um=2.0).run()
    rows = list(csv.DictReader((out / "slides.csv").open()))
    assert [(r["slide"].split("/")[-1], r["mode"]) for r in rows] == [
        ("syn_00_wsi.tiff", "sequence"),
        ("syn_00_wsi.tiff", "per_tile"),
        ("mean", "sequence"),
        ("mean", "per_tile"),
    ]
    assert json.loads((out / "summary.json").read_text()) == summary
    # the CSV's numbers are the scores of the written mask.tif, recomputed here independently
    for mode in ("sequence", "per_tile"):
        pred = tifffile.imread(out / f"predictions_{mode}" / "syn_00_wsi" / "mask.tif", key=0) > 0
        gt = tifffile.imread(task2_root / "Task2_WSI_level" / "synthetic" / "syn_00_mask.tiff", key=0) > 0
        dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
        row = next(r for r in rows if r["mode"] == mode and r["slide"] != "mean")
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-6)
        assert dice > 0.95
        n = len(scene.glomeruli)
        assert int(row["n_gt"]) == n and int(row["tp"]) == n and float(row["f1"]) == 1.0
        assert summary["mean"][mode]["dice"] == pytest.approx(dice)


def test_evaluator_needs_a_dataset():
    with pytest.raises(ValueError, match="give dataset_dir"):
        SlideEvaluator(ColourOracle(), "out")
    with pytest.raises(ValueError, match="give both slides and masks"):
        SlideEvaluator(ColourOracle(), "out", slides="a*.svs", dataset_dir="x")
    with pytest.raises(ValueError, match="modes must be a non-empty list"):
        SlideEvaluator(ColourOracle(), "out", dataset_dir="x", modes=["both"])
