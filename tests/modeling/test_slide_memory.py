"""Memory in slide coordinates: keys at their tile's offset, no pointer leak, neighbours in 2D."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from sam2.modeling.position_encoding import PositionEmbeddingSine, compute_axial_cis

import pathseqsam.modeling.distance_attention as distance_attention
from pathseqsam import build_pathseqsam
from pathseqsam.modeling.adaptive_memory import MemoryEntry
from pathseqsam.modeling.distance_attention import DistanceAwareRoPEAttention
from pathseqsam.modeling.network import SLIDE_LAMBDA_KEY
from pathseqsam.modeling.slide_memory import (
    SlideMemoryBank,
    axial_rope_at,
    grid_token_positions,
    outside_overlap,
    shifted_sine_pe,
    token_offsets,
)

SIDE = 6  # 6 x 6 token grid
HEADS, DIM, KV = 2, 32, 16


def serpentine(rows: int, cols: int, stride: float = 128.0) -> torch.Tensor:
    """``[1, rows * cols, 2]`` tile centres in serpentine order."""
    pos = []
    for r in range(rows):
        for c in range(cols) if r % 2 == 0 else range(cols - 1, -1, -1):
            pos.append((stride * (c + 1), stride * (r + 1)))
    return torch.tensor(pos, dtype=torch.float32)[None]


def test_rope_at_grid_positions_is_sam2s():
    x, y = grid_token_positions(5, 7)
    ours = axial_rope_at(x, y, dim=16)
    assert torch.allclose(
        torch.view_as_real(ours), torch.view_as_real(compute_axial_cis(16, 7, 5)), atol=1e-6
    )


def test_shifted_sine_pe_at_zero_offset_is_the_encoders():
    pe = PositionEmbeddingSine(num_pos_feats=64, normalize=True, warmup_cache=False)
    ours = shifted_sine_pe(pe, torch.zeros(1, 1, 2), 4, 5)[0, 0]  # [20, 64]
    sam2 = pe(torch.zeros(1, 1, 4, 5))[0].flatten(1).T  # [C, H, W] -> [HW, C]
    assert torch.allclose(ours, sam2, atol=1e-6)
    # a tile one token to the right: its column x sits where the current tile's column x + 1 is
    shifted = shifted_sine_pe(pe, torch.tensor([[[1.0, 0.0]]]), 4, 5)[0, 0].reshape(4, 5, -1)
    assert torch.allclose(shifted[:, :4], ours.reshape(4, 5, -1)[:, 1:], atol=1e-6)


def test_outside_overlap_marks_the_tokens_past_the_tile():
    hidden = outside_overlap(torch.tensor([[[2.0, -1.0]]]), 4, 4)[0, 0].reshape(4, 4)
    # a tile 2 tokens right and 1 up: its columns 2, 3 and its row 0 fall outside
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, 2:] = True
    expected[0, :] = True
    assert torch.equal(hidden, expected)


def _capture_logits(monkeypatch) -> list[torch.Tensor]:
    """Record ``q k^T / sqrt(d) + mask`` of every SDPA call made by DistanceAwareRoPEAttention."""
    seen: list[torch.Tensor] = []
    real = distance_attention.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0):
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        seen.append(logits if attn_mask is None else logits + attn_mask)
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)

    class Functional:  # torch.nn.functional as DistanceAwareRoPEAttention sees it, with SDPA spied on
        scaled_dot_product_attention = staticmethod(spy)

        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

    monkeypatch.setattr(distance_attention, "F", Functional())
    return seen


def test_overlap_logits_equal_the_aligned_case(monkeypatch):
    """A memory tile at offset (dx, dy): the logit of each query with each overlapping key equals the
    logit of the same query with the same key placed, SAM2's way, at its aligned grid position."""
    torch.manual_seed(0)
    attn = DistanceAwareRoPEAttention(
        embedding_dim=DIM, num_heads=HEADS, kv_in_dim=KV, rope_k_repeat=True, feat_sizes=(SIDE, SIDE)
    ).eval()
    dx, dy = 2, -1
    q = torch.randn(1, SIDE * SIDE, DIM)
    k_tile = torch.randn(1, SIDE * SIDE, KV)  # the memory tile's tokens in its own grid
    gx, gy = grid_token_positions(SIDE, SIDE)
    ax, ay = gx + dx, gy + dy  # where they lie in the query's grid
    inside = (ax >= 0) & (ax < SIDE) & (ay >= 0) & (ay < SIDE)
    # the aligned memory frame: each overlapping token moved to its grid cell (others: noise)
    k_aligned = torch.randn(1, SIDE * SIDE, KV)
    target = (ay * SIDE + ax).long()
    k_aligned[0, target[inside]] = k_tile[0, inside]
    seen = _capture_logits(monkeypatch)
    with torch.no_grad():
        key_xy = torch.stack([ax, ay], dim=-1)[None]
        with attn.key_weighting(key_xy=key_xy):
            attn(q, k_tile, k_tile)
        attn(q, k_aligned, k_aligned)
    slide, aligned = seen
    assert inside.sum() == (SIDE - 2) * (SIDE - 1)
    diff = slide[..., inside] - aligned[..., target[inside]]
    assert diff.abs().max() < 1e-5
    # and without the offset (SAM2's repeated grid) they differ: the test can fail
    seen.clear()
    with torch.no_grad():
        attn(q, k_tile, k_tile)
    assert (seen[0][..., inside] - aligned[..., target[inside]]).abs().max() > 1e-2


def _net(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_pathseqsam(model="tiny", image_size=64, lora_rank=0, model_mpp_um=2.0, **kw).eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, n, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("masked", [True, False])
def test_tokens_outside_the_overlap_are_masked_or_kept(masked, monkeypatch):
    """With mask_outside_overlap, memory tokens past the current tile get a -inf logit; without, none."""
    net = _net(memory_coordinates="slide", mask_outside_overlap=masked)
    pos = serpentine(1, 2, stride=64.0)  # tile 128 um (64 px at 2 um/px), stride 64 um: half a tile
    seen = _capture_logits(monkeypatch)
    with torch.no_grad():
        net(_images(2), positions=pos)
    # tile 1 reads tile 0, which lies 2 tokens (of 4) to its left: columns 0-1 of tile 0 are outside
    logits = seen[-1][0, 0]  # [Nq, Nk] of the last memory layer's cross-attention, for tile 1
    assert logits.shape == (16, 16)
    gx, _ = grid_token_positions(4, 4)
    outside = (gx - 2) < -0.5
    assert bool(torch.isinf(logits[:, outside]).all()) == masked
    assert torch.isfinite(logits[:, ~outside]).all()


def test_object_score_does_not_depend_on_the_previous_pointer():
    """Presence must not leak across tiles: scramble every object pointer; slide-mode scores stay,
    sequence-mode scores (which read pointers) move."""
    pos = serpentine(2, 3, stride=64.0)
    images = _images(6, seed=2)
    for coords, leaks in (("slide", False), ("sequence", True)):
        net = _net(memory_coordinates=coords)
        head = net.sam_mask_decoder.pred_obj_score_head.layers[-1]
        with torch.no_grad():
            # about half the tiles say "object": pointers are then real, not SAM2's no-object pointer
            head.weight.mul_(30.0)
            head.bias.sub_(net(images, positions=pos, return_aux=True)["object_score_logits"].median())
            base = net(images, positions=pos, return_aux=True)["object_score_logits"]
            assert (base > 0).any() and (base < 0).any()
            hook = net.obj_ptr_proj.register_forward_hook(lambda m, i, o: torch.randn_like(o) * 10)
            try:
                moved = net(images, positions=pos, return_aux=True)["object_score_logits"]
            finally:
                hook.remove()
        changed = (moved[:, 1:] - base[:, 1:]).abs().max().item() > 1e-4
        assert changed == leaks, coords


def _entry(index: int, pos: torch.Tensor) -> MemoryEntry:
    z = torch.zeros(1, 1)
    return MemoryEntry(index, z, z, z, z, torch.zeros(1), pos[:, index], torch.zeros(1, dtype=torch.bool))


@pytest.mark.parametrize("cols", [3, 12, 64])
def test_neighbours_in_2d_and_memory_bounded_by_the_row(cols):
    rows = 4
    pos = serpentine(rows, cols)
    bank = SlideMemoryBank(pos, stride_um=128.0)
    largest = 0
    grid = {(round(p[0].item() / 128) - 1, round(p[1].item() / 128) - 1): i for i, p in enumerate(pos[0])}
    for t in range(rows * cols):
        if len(bank):
            near = bank.neighbours(t)[0]
            held = {e.index for e, n in zip(bank.entries, near.tolist()) if n}
            c, r = round(pos[0, t, 0].item() / 128) - 1, round(pos[0, t, 1].item() / 128) - 1
            done = {grid[(c + i, r + j)] for i in (-1, 0, 1) for j in (-1, 0, 1) if (c + i, r + j) in grid}
            # exactly the 8-neighbourhood's segmented tiles: the tile above included, however long the row
            assert held == {i for i in done if i < t}
            if r > 0:
                assert grid[(c, r - 1)] in held
        bank.add(_entry(t, pos))
        largest = max(largest, len(bank))
    assert largest <= cols + 3  # the row above and the current one, not the slide


def test_slide_lambda_is_its_own_and_used_in_slide_mode():
    pos = serpentine(2, 2, stride=64.0)
    images = _images(4, seed=3)
    net = _net(memory_coordinates="slide")

    def scores() -> torch.Tensor:  # what memory attention hands the decoder, for every tile
        seen: list[torch.Tensor] = []
        hook = net.memory_attention.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            net(images, positions=pos)
        finally:
            hook.remove()
        return torch.cat(seen)

    with torch.no_grad():
        base = scores()
        net.distance_kernel.raw_lambda.fill_(5.0)  # the section lambda: unused on tiles
        same = scores()
        net.slide_distance_kernel.raw_lambda.fill_(5.0)
        moved = scores()
    assert torch.equal(base, same)
    assert (moved - base).abs().max() > 1e-3  # random weights attend almost uniformly: small but real
    assert torch.isclose(_net(memory_coordinates="slide").slide_distance_kernel.lam, torch.tensor(0.1))


def test_sequence_weights_load_into_a_slide_network(caplog):
    seq = _net()
    slide = _net(memory_coordinates="slide")
    with caplog.at_level(logging.WARNING):
        slide.load_state_dict(seq.state_dict(), strict=True)
    assert "lambda_slide starts at 0.1" in caplog.text
    assert SLIDE_LAMBDA_KEY in slide.state_dict() and SLIDE_LAMBDA_KEY not in seq.state_dict()


def test_slide_mode_needs_tile_centres():
    net = _net(memory_coordinates="slide")
    with pytest.raises(ValueError, match=r"tile's centre \(x, y\).*without NaN"):
        net(_images(2), positions=torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="positions \\[B, N, 2\\]"):
        net(_images(2), positions=torch.zeros(1, 2))


def test_token_offsets_in_tokens():
    off = token_offsets(torch.tensor([[100.0, 50.0]]), torch.tensor([[[132.0, 18.0]]]), um_per_token=16.0)
    assert torch.allclose(off, torch.tensor([[[2.0, -2.0]]]))


def test_tiles_alone_need_no_positions():
    """Per-tile inference (one-tile sequences, or no memory) with a slide-coordinate network."""
    net = _net(memory_coordinates="slide")
    with torch.no_grad():
        alone = net(_images(1)[:, :, 0])  # [B, 3, H, W]: a single tile, no positions
        none = _net(memory_coordinates="slide", memory_selection="none")(_images(3))
    assert alone.shape == (1, 1, 64, 64) and none.shape == (1, 1, 3, 64, 64)


def test_eviction_matches_brute_force_on_shuffled_positions():
    """The spatial-hash eviction keeps exactly the entries some later tile can still reach."""
    pos = serpentine(5, 9)
    pos = pos[
        :, torch.randperm(pos.shape[1], generator=torch.Generator().manual_seed(0))
    ]  # the control's case
    bank = SlideMemoryBank(pos, stride_um=128.0)
    reach = 1.5 * 128.0 + 1e-3
    for t in range(pos.shape[1]):
        bank.add(_entry(t, pos))
        later = pos[0, t + 1 :]
        expected = {
            j
            for j in range(t + 1)
            if len(later) and bool((torch.linalg.vector_norm(later - pos[0, j], dim=-1) <= reach).any())
        }
        assert {e.index for e in bank.entries} == expected, t
