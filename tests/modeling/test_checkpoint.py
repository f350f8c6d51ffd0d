"""Official SAM2.1 configs build and load checkpoints written from stock SAM2; bad files are named."""

from __future__ import annotations

import pytest
import torch
from sam2.build_sam import build_sam2

from pathseqsam import build_pathseqsam
from pathseqsam.modeling.build import MODEL_CONFIGS
from pathseqsam.modeling.lora import trainable_summary

# Rank-8 LoRA parameter counts of the official configs (shared/notes/sam2.md, measured with peft)
# and SAM2's own parameter counts (hiera_t 38.9 M, s 46 M, b+ 80.8 M, l 224.4 M).
OFFICIAL = {
    "sam2.1_hiera_t": (38.9e6, 220_416),
    "sam2.1_hiera_s": (46.0e6, None),
    "sam2.1_hiera_b+": (80.8e6, 509_824),
    "sam2.1_hiera_l": (224.4e6, 1_305_216),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_config_builds_and_loads_stock_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    stock = build_sam2(MODEL_CONFIGS[name], None, device="cpu", mode="eval", apply_postprocessing=False)
    ckpt = tmp_path / f"{name}.pt"
    torch.save({"model": stock.state_dict()}, ckpt)

    # different image size on purpose: keys and shapes do not depend on it
    net = build_pathseqsam(model=name, image_size=512, checkpoint=ckpt, lora_rank=8)
    params, lora = OFFICIAL[name]
    counts = trainable_summary(net)
    assert abs(counts["total"] - counts["lora"] - params) / params < 0.01
    if lora is not None:
        assert counts["lora"] == lora
    stock_state = stock.state_dict()
    own = net.state_dict()
    for key in ("sam_mask_decoder.iou_prediction_head.layers.0.weight", "maskmem_tpos_enc", "no_mem_embed"):
        assert torch.equal(own[key], stock_state[key]), key
    # LoRA-wrapped layers keep the stock weights as their base layer
    assert torch.equal(
        own["image_encoder.trunk.blocks.0.attn.qkv.base_layer.weight"],
        stock_state["image_encoder.trunk.blocks.0.attn.qkv.weight"],
    )
    assert net.distance_kernel.lam.item() == pytest.approx(0.1)


@pytest.fixture
def tiny_state(make_tiny):
    return make_tiny(lora_rank=0).state_dict()


def test_wrong_keys_are_named(tiny_state, tmp_path, make_tiny):
    state = dict(tiny_state)
    state["sam_mask_decoder.extra_head.weight"] = torch.zeros(1)
    del state["no_mem_embed"]
    path = tmp_path / "keys.pt"
    torch.save({"model": state}, path)
    with pytest.raises(
        ValueError, match=r"1 missing keys: no_mem_embed.*1 unexpected keys: sam_mask_decoder\.extra_head"
    ):
        make_tiny(checkpoint=path)


def test_wrong_shapes_are_named(tiny_state, tmp_path, make_tiny):
    state = dict(tiny_state)
    state["no_mem_embed"] = torch.zeros(1, 1, 7)
    path = tmp_path / "shapes.pt"
    torch.save({"model": state}, path)
    with pytest.raises(
        ValueError, match=r"shape mismatches: no_mem_embed: checkpoint \(1, 1, 7\) vs model \(1, 1, 64\)"
    ):
        make_tiny(checkpoint=path)


def test_official_checkpoint_into_wrong_config_is_refused(tmp_path, make_tiny):
    stock = build_sam2(MODEL_CONFIGS["sam2.1_hiera_t"], None, device="cpu", apply_postprocessing=False)
    path = tmp_path / "t.pt"
    torch.save({"model": stock.state_dict()}, path)
    with pytest.raises(ValueError, match="does not match this model"):
        make_tiny(checkpoint=path)


def test_not_a_dict_and_corrupt_and_missing_files(tmp_path, make_tiny):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="expected a dict"):
        make_tiny(checkpoint=path)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.pt: cannot be read"):
        make_tiny(checkpoint=bad)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"a": [1, 2]}}, nested)
    with pytest.raises(ValueError, match="non-tensor entries: a"):
        make_tiny(checkpoint=nested)
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        make_tiny(checkpoint=tmp_path / "nope.pt")


def test_bare_state_dict_and_new_keys_missing_are_accepted(tiny_state, tmp_path, make_tiny):
    state = {k: v for k, v in tiny_state.items() if k != "distance_kernel.raw_lambda"}
    path = tmp_path / "bare.pt"
    torch.save(state, path)
    net = make_tiny(seed=9, checkpoint=path, lora_rank=0)
    assert torch.equal(net.state_dict()["no_mem_embed"], tiny_state["no_mem_embed"])
