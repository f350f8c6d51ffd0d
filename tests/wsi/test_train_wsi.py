"""Training on tile blocks (``train_wsi.json``): blocks as inference tiles them, split by slide."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_task2
from pathseqsam.wsi.blocks import (
    LoadSlideBlockd,
    RandSlideBlockd,
    slide_block_datalist,
    training_slides,
    valid_blocks,
)
from tests.bundle_paths import LOGGING, META
from tests.wsi.test_bundle_wsi import CONFIGS

MPP, SIZE = 1.0, 1024  # 1 x 1 mm slides at 1 um/px: a 7 x 7 grid of 256 um tiles every 128 um


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    write_synthetic_task2(
        root, n_slides=3, size_px=SIZE, mpp_um=MPP, seed=11, ell_strides=[2.0, 0.0, math.inf]
    )
    return root


def test_valid_blocks_hold_tissue_tiles_only():
    tissue = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1]], bool)
    assert valid_blocks(tissue, 2, 2) == [[0, 0], [1, 0], [1, 1]]
    assert valid_blocks(tissue, 3, 3) == [] and valid_blocks(tissue, 4, 1) == []


def test_datalist_splits_by_slide_and_blocks_are_read_like_inference(slides):
    split = slide_block_datalist(slides, model_mpp_um=2.0, image_size=128, rows=3, cols=4, val_fraction=0.34)
    train_ids = {it["id"] for it in split["training"]}
    val_ids = {it["id"] for it in split["validation"]}
    assert len(train_ids) == 2 and len(val_ids) == 1 and not train_ids & val_ids  # by slide, never by tile
    everything = slide_block_datalist(
        slides, model_mpp_um=2.0, image_size=128, rows=3, cols=4, val_fraction=0.0
    )
    assert len(everything["training"]) == 3 and everything["validation"] == []
    item = split["training"][0]
    pick = RandSlideBlockd()
    pick.set_random_state(0)
    sample = LoadSlideBlockd(3, 4, model_mpp_um=2.0)(pick(item))
    assert sample["image"].shape == (3, 12, 128, 128) and sample["label"].shape == (1, 12, 128, 128)
    # serpentine over the block, positions the tile centres: the tile above is in every sample
    pos = sample["positions"]
    assert torch.equal(pos[4], pos[3] + torch.tensor([0.0, 128.0]))  # row 2 starts under row 1's end
    assert torch.equal(pos[1] - pos[0], torch.tensor([128.0, 0.0])) and torch.equal(
        pos[5] - pos[4], torch.tensor([-128.0, 0.0])
    )
    # the label is the scene's own mask at those places (independent: the analytic scene, not the TIFF)
    scene = make_slide_scene(SIZE, SIZE, MPP, n_glomeruli=60, seed=11 + int(item["id"][-2:]))
    for t, (cx, cy) in enumerate(pos.tolist()):
        x0, y0 = (cx - 128.0) / MPP, (cy - 128.0) / MPP
        _, truth = scene.render(x0 / 2.0, y0 / 2.0, 128, 128, downsample=2.0, mask_only=True)
        agree = (sample["label"][0, t].numpy() == truth).mean()
        assert agree > 0.97, (t, agree)
    assert sample["label"].sum() > 0  # the block holds glomeruli to learn from


def test_only_the_demo_folder_is_ever_written(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        "pathseqsam.synthetic.slides.ensure_synthetic_task2",
        lambda root, **kw: calls.append((root, kw)) or str(root),
    )
    demo = tmp_path / "bundle" / "data" / "synthetic_wsi_train"
    assert training_slides(demo, demo) == str(demo)
    assert calls and calls[0][0] == demo and calls[0][1]["ell_strides"] == (0.0, 0.5, 2.0, math.inf)
    with pytest.raises(FileNotFoundError, match=r"slides_dir .*mine does not exist: give a KPIs Task 2 root"):
        training_slides(tmp_path / "mine", demo)
    assert len(calls) == 1 and not (tmp_path / "mine").exists()


@pytest.mark.parametrize("arm", ["sequence", "per_tile"])
def test_train_wsi_trains_on_tile_blocks(tmp_path, slides, arm):
    """The documented overlay, CI-sized: 2 x 2 blocks, one epoch; the per-tile arm is the same job with
    memory_selection none."""
    overrides = {"memory_selection": "none"} if arm == "per_tile" else {}
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "train_wsi.json")],
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        ckpt_dir=str(tmp_path / "models" / "wsi"),
        output_dir=str(tmp_path / "eval" / "wsi_training"),
        demo_slides_dir=str(tmp_path / "data" / "synthetic_wsi_train"),
        slides_dir=str(slides),
        block_rows=2,
        block_cols=2,
        blocks_per_slide=1,
        val_fraction=0.34,
        **{"train#trainer#max_epochs": 1},
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    state = torch.load(tmp_path / "models" / "wsi" / "model.pt", map_location="cpu", weights_only=True)
    assert "slide_distance_kernel.raw_lambda" in state  # a slide-coordinate network was trained
    assert float(state["model_mpp_um"]) == 2.0
    assert (tmp_path / "eval" / "wsi_training" / "curves.csv").is_file()
    assert not (tmp_path / "data").exists()  # not the demo folder: nothing generated
