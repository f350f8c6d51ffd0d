"""LoRA on exactly the Hiera attention projections; trainable split; merge-and-export round trip."""

from __future__ import annotations

import torch

from pathseqsam import build_pathseqsam, export_sam2_checkpoint, merge_lora
from pathseqsam.modeling.lora import lora_module_names, trainable_summary


def _attn_linears(net) -> list[str]:
    names = []
    for i, block in enumerate(net.image_encoder.trunk.blocks):
        for part in ("qkv", "proj"):
            assert isinstance(getattr(block.attn, part), torch.nn.Module)
            names.append(f"image_encoder.trunk.blocks.{i}.attn.{part}")
    return names


def test_lora_touches_exactly_hiera_attention(make_tiny):
    net = make_tiny(lora_rank=8)
    assert sorted(lora_module_names(net)) == sorted(_attn_linears(net))
    # rank-8 parameter count, computed from the wrapped layers' shapes: r * (in + out) per layer
    expected = 0
    for name in _attn_linears(net):
        base = net.get_submodule(name).get_base_layer()
        expected += 8 * (base.in_features + base.out_features)
    counts = trainable_summary(net)
    assert counts["lora"] == expected
    for name, p in net.named_parameters():
        if "lora_" in name:
            assert p.requires_grad, name
        elif name.startswith("image_encoder."):
            assert not p.requires_grad, name
        else:
            assert p.requires_grad, name  # memory attention/encoder, prompt encoder, decoder, lambda
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert counts["trainable"] == trainable
    assert abs(counts["trainable_fraction"] - trainable / counts["total"]) < 1e-12


def test_lora_off_freezes_encoder_and_frozen_prefixes(make_tiny):
    net = make_tiny(lora_rank=0, frozen=["sam_prompt_encoder"])
    assert lora_module_names(net) == []
    assert not any(p.requires_grad for n, p in net.named_parameters() if n.startswith("image_encoder."))
    assert not any(p.requires_grad for n, p in net.named_parameters() if n.startswith("sam_prompt_encoder."))
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith("sam_mask_decoder."))
    full = make_tiny(lora_rank=0, train_image_encoder=True)
    assert all(p.requires_grad for n, p in full.named_parameters() if n.startswith("image_encoder."))


def test_merge_and_export_round_trip(make_tiny, images, tmp_path):
    net = make_tiny(lora_rank=8).eval()
    with torch.no_grad():  # LoRA B starts at zero; give the adapters something to merge
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
        net.distance_kernel.raw_lambda.fill_(0.7)
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)  # masks visible
        positions = torch.tensor([[0.0, 4.0, 8.0, 12.0]] * 2)
        before = net(images, positions=positions, return_aux=True)
    assert (before["logits"] > -1000).all()

    path = export_sam2_checkpoint(net, tmp_path / "sub" / "merged.pt")
    state = torch.load(path, weights_only=True)["model"]
    assert not any("lora_" in k or "base_layer" in k for k in state)
    assert "image_encoder.trunk.blocks.0.attn.qkv.weight" in state
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["merged.pt"]  # atomic write left no temp file
    assert lora_module_names(net)  # the live model still has its adapters

    reloaded = build_pathseqsam(model="tiny", image_size=128, checkpoint=path, lora_rank=0).eval()
    merged = merge_lora(net)
    assert lora_module_names(merged) == []
    with torch.no_grad():
        after_merge = merged(images, positions=positions)
        after_reload = reloaded(images, positions=positions)
    assert (before["logits"] - after_merge).abs().max().item() < 1e-3
    assert (before["logits"] - after_reload).abs().max().item() < 1e-3
    assert reloaded.distance_kernel.lam.item() == net.distance_kernel.lam.item()
