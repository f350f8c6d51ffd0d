"""Distance-aware memory compression: native budget = no compression; pooled keys at block centres."""

from __future__ import annotations

import math

import pytest
import torch

import pathseqsam.modeling.distance_attention as distance_attention
from pathseqsam import build_pathseqsam
from pathseqsam.modeling.memory_compression import compress_slots, grid_key_xy, pool_factors

NATIVE_UM = 32.0  # tiny at 128 px and 2 um/px: a 256 um field on an 8 x 8 token grid


def _net(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_pathseqsam(model="tiny", image_size=128, lora_rank=0, model_mpp_um=2.0, **kw).eval()


def _images(n: int) -> torch.Tensor:
    return torch.randn(2, 3, n, 128, 128, generator=torch.Generator().manual_seed(4))


def test_pooled_tokens_are_block_means_at_block_centres():
    h = w = 4
    feats = torch.randn(1, 2, h * w, 3)
    xy = grid_key_xy(h, w, 1, 2) + torch.tensor([0.0, 0.0, 10.0, -2.0]).reshape(1, 2, 1, 2)  # slot 1 shifted
    (pooled,), pxy, counts = compress_slots([feats], xy, [1, 2], (h, w))
    assert counts == [16, 4] and pooled.shape == (1, 20, 3)
    assert torch.equal(pooled[:, :16], feats[:, 0])  # factor 1: untouched
    grid = feats[0, 1].reshape(h, w, 3)
    for by in range(2):
        for bx in range(2):
            block = grid[2 * by : 2 * by + 2, 2 * bx : 2 * bx + 2].reshape(4, 3).mean(0)
            assert torch.allclose(pooled[0, 16 + 2 * by + bx], block, atol=1e-6)
            assert torch.allclose(
                pxy[0, 16 + 2 * by + bx], torch.tensor([2 * bx + 0.5 + 10.0, 2 * by + 0.5 - 2.0])
            )


def test_budgets_are_micrometres_and_must_fit_the_grid():
    assert pool_factors((32, 64, 128), NATIVE_UM, 5, (8, 8)) == [1, 2, 4, 4, 4]
    with pytest.raises(ValueError, match="finer than the network's native token of 32 um"):
        pool_factors((8,), NATIVE_UM, 1, (8, 8))
    with pytest.raises(
        ValueError, match=r"pools 3 x 3 native tokens .* does not divide the 8 x 8 token grid"
    ):
        pool_factors((96,), NATIVE_UM, 1, (8, 8))


@pytest.mark.parametrize("coords", ["sequence", "slide"])
def test_native_budget_equals_no_compression(coords):
    """At the native budget every factor is 1 and the keys go through the block-centre RoPE path: the
    outputs equal today's memory to 1e-5 (sections with Eq. 1 and Eq. 2; slide tiles)."""
    if coords == "sequence":
        pos = torch.tensor([[0.0, 4.0, 9.0, 11.0, 30.0, 34.0]]).expand(2, -1)
    else:
        pos = torch.tensor(
            [[[x * 128.0, y * 128.0] for y in range(2) for x in (range(3) if y == 0 else (2, 1, 0))]]
        )
    base = _net(memory_coordinates=coords)
    native = _net(memory_coordinates=coords, memory_token_um=(NATIVE_UM,))
    native.load_state_dict(base.state_dict())
    images = _images(6)[:1] if coords == "slide" else _images(6)
    with torch.no_grad():
        a = base(images, positions=pos[:1] if coords == "slide" else pos, return_aux=True)
        b = native(images, positions=pos[:1] if coords == "slide" else pos, return_aux=True)
    assert (a["object_score_logits"] - b["object_score_logits"]).abs().max() < 1e-5
    assert (a["iou_predictions"] - b["iou_predictions"]).abs().max() < 1e-5


def test_compressed_memory_uses_fewer_keys_nearest_first(monkeypatch):
    seen: list[int] = []
    real = distance_attention.F.scaled_dot_product_attention

    class Functional:
        @staticmethod
        def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0):
            seen.append(k.shape[-2])
            return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)

        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

    monkeypatch.setattr(distance_attention, "F", Functional())
    pos = torch.tensor([[0.0, 4.0, 9.0, 11.0, 30.0, 34.0, 35.0]]).expand(2, -1)
    net = _net(memory_token_um=(32, 64, 128))
    with torch.no_grad():
        aux = net(_images(7), positions=pos, return_aux=True)
    # the last slice reads 5 slices (K = 5): 64 + 16 + 4 + 4 + 4 tokens, plus the pointer tokens
    ptr_tokens = seen[-1] - (64 + 16 + 3 * 4)
    assert ptr_tokens == 5 * (net.hidden_dim // net.mem_dim)
    mem = aux["memory_indices"][0, -1]
    dist = [abs(34.0 + 1.0 - pos[0, j].item()) for j in mem.tolist() if j >= 0]
    assert dist == sorted(dist)  # nearest first: the nearest slice keeps full resolution
    assert math.isfinite(aux["object_score_logits"].sum().item())


def test_token_budget_is_native_times_the_pooling_factors():
    from pathseqsam import token_budget_um

    assert token_budget_um(2.0) == [32.0, 128.0]  # 16 px stride x 2 um/px, then 4 x 4
    assert token_budget_um(0.5, (1, 2, 4)) == [8.0, 16.0, 32.0]
    # the budget the bundle writes pools exactly as the measured setting: native, then 4 x 4
    assert pool_factors(tuple(token_budget_um(0.5)), 8.0, 3, (64, 64)) == [1, 4, 4]
    with pytest.raises(ValueError, match="model_mpp_um must be positive"):
        token_budget_um(0.0)
    with pytest.raises(ValueError, match="whole pooling factors >= 1"):
        token_budget_um(2.0, (1, 1.5))
