"""The shipped CPU-pretrained tiny SAM2: its bytes match its record, and the bundle's default job
starts from it with the paper's recipe (encoder frozen except rank-8 LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from pathseqsam.modeling.build import instantiate_sam2
from pathseqsam.pretrain.report import sha256_of

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "bundle" / "pretrained" / "sam2_tiny_pretrained.pt"
RECORD = SHIPPED.with_suffix(".json")
MAX_BYTES = 8 * 1024 * 1024


def test_shipped_checkpoint_matches_its_record_and_is_small():
    record = json.loads(RECORD.read_text())
    assert record["file"] == SHIPPED.name
    assert SHIPPED.stat().st_size == record["bytes"] <= MAX_BYTES
    assert sha256_of(SHIPPED) == record["sha256"]
    assert record["command"].startswith("python scripts/pretrain_tiny_sam2.py")
    assert len(record["commit"].split()[0]) == 40


def test_default_job_starts_from_it_with_a_frozen_encoder_and_lora():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT / "bundle"), "dataset_dir": "/nonexistent"})
    assert Path(parser.get_parsed_content("sam2_checkpoint")).resolve() == SHIPPED
    net = parser.get_parsed_content("network_def")
    saved = torch.load(SHIPPED, map_location="cpu", weights_only=True)["model"]
    # SAM2's key names; every weight lands where it was saved (LoRA wraps the attention projections)
    reference = instantiate_sam2("tiny", 128, pathseqsam_class=False).state_dict()
    assert set(saved) == set(reference)
    state = net.state_dict()
    for key in (
        "sam_mask_decoder.iou_prediction_head.layers.0.weight",
        "memory_attention.layers.0.self_attn.q_proj.weight",
    ):
        assert torch.equal(state[key], saved[key]), key
    qkv = "image_encoder.trunk.blocks.0.attn.qkv"
    assert torch.equal(state[f"{qkv}.base_layer.weight"], saved[f"{qkv}.weight"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not any(n.startswith("image_encoder.") and "lora_" not in n for n in trainable)
    assert any(n.startswith("sam_mask_decoder.") for n in trainable)
    assert any(n.startswith("memory_attention.") for n in trainable)
    # without it (random init, the override) the whole encoder trains
    parser.update({"sam2_checkpoint": None})
    parser.parse()
    net = parser.get_parsed_content("network_def")
    assert net.image_encoder.trunk.blocks[0].attn.qkv.base_layer.weight.requires_grad
