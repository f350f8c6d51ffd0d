"""The whole-slide sequence benchmark: KPIs Task 2 scoring rules, vote stitching, the resumable grid."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pathseqsam.compare.cells import read_cell
from pathseqsam.compare.wsi_sequence import SLIDE_COLUMNS, SMOKE, _segmenter_class, _truth_at, kpis_mask
from pathseqsam.compare.wsi_sequence_cli import main
from pathseqsam.wsi.metrics import SlideScorer
from tests.wsi.slide_helpers import ColourOracle


def test_kpis_mask_keeps_two_votes_and_objects_of_5000_um2():
    votes = np.zeros((200, 200), np.uint8)
    votes[10:50, 10:50] = 2  # 1600 px at 2 um/px: 6400 um^2, kept
    votes[100:140, 100:140] = 1  # one vote only: dropped
    votes[150:180, 10:40] = 3  # 900 px: 3600 um^2 < 5000, dropped
    mask = kpis_mask(votes, mpp_um=2.0)
    assert mask[10:50, 10:50].all() and mask.sum() == 1600
    assert kpis_mask(votes, mpp_um=4.0).sum() == 1600 + 900  # at 4 um/px the 900 px are 14,400 um^2


def test_votes_count_the_tiles_and_reproduce_the_truth(tmp_path, slide_files):
    """The colour oracle through the benchmark's segmenter: interior pixels get 2-4 tile votes (50 %
    overlap), and the KPIs mask scores against the truth as the slide command's own mask does."""
    seg = _segmenter_class()(ColourOracle(), tmp_path, model_mpp_um=2.0, image_size=128, shard=False)
    seg.segment(slide_files["slide"])
    votes = seg.votes
    assert votes.shape == (1024, 1024) and votes.max() <= 4
    tissue = votes > 0
    assert (votes[tissue] >= 1).all() and (
        votes[256:768, 256:768][tissue[256:768, 256:768]] >= 2
    ).mean() > 0.99
    scorer = SlideScorer()
    scorer.update(kpis_mask(votes, 2.0), _truth_at(slide_files["mask"], 2.0, votes.shape))
    kpis = scorer.result()
    assert kpis["dice"] > 0.9 and kpis["f1_kpis"] > 0.9


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsi_sequence") / "smoke"
    assert main(["--smoke", "--out", str(out), "--max-cells", "1"]) == 0
    first = out / "cells" / "sequence__seed0.json.gz"
    content = first.read_bytes()
    assert main(["--smoke", "--out", str(out)]) == 0
    return out, first, content


def test_grid_resumes_and_writes_the_rows_and_the_report(smoke):
    out, first, content = smoke
    assert first.read_bytes() == content  # finished cells are not recomputed
    rows = list(csv.DictReader((out / "slides.csv").open()))
    assert tuple(rows[0]) == SLIDE_COLUMNS
    arms = sorted({r["arm"] for r in rows})
    assert arms == ["per_tile", "sequence", "sequence_compressed", "sequence_shuffled"]
    assert len(rows) == 4 * len(SMOKE.seeds) * len(SMOKE.ells) * SMOKE.test_slides
    assert all(int(r["tiles"]) > 0 and 0.0 <= float(r["dice_kpis"]) <= 1.0 for r in rows)
    record, cell_rows = read_cell(first)
    assert record["arm"] == "sequence" and len(cell_rows) == 3 * len(SMOKE.ells)  # arm, control, compressed
    report = json.loads((out / "report.json").read_text())
    assert set(report["per_ell"]) == {"0", "inf"} and (out / "report.png").stat().st_size > 1000
    # the throughput is recomputed from the rows: tiles / network seconds per arm
    seq = [r for r in rows if r["arm"] == "sequence"]
    expected = sum(int(r["tiles"]) for r in seq) / sum(float(r["seconds"]) for r in seq)
    assert report["throughput"]["sequence"] == pytest.approx(expected, rel=1e-6)


def test_report_only_needs_the_csv(tmp_path, smoke):
    out, _, _ = smoke
    csv_copy = tmp_path / "slides.csv"
    csv_copy.write_text((out / "slides.csv").read_text())
    assert main(["--report-only", "--csv", str(csv_copy)]) == 0
    assert (tmp_path / "report.md").read_text().startswith("# Whole-slide sequence benchmark: report")
    assert main(["--report-only", "--csv", str(tmp_path / "missing.csv")]) == 2
