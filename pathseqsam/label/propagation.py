"""Interactive segmentation of a sequence: prompts on some slices, propagated in both directions.

PathSeqSAM runs through a sequence in one direction, each slice remembering earlier ones. From
prompted slices ``S`` (first ``s0``, last ``s1``) two passes run, both with all prompts:

* forward over slices ``s0, s0 + 1, ..., N - 1``;
* backward over slices ``s1, s1 - 1, ..., 0`` (the sequence reversed: distances are absolute, so the
  distance-aware memory works the same way).

Slice ``t`` takes the forward result when only the forward pass reached it (``t > s1``), the
backward result when only the backward pass did (``t < s0``), and in between the result of the pass
whose last prompted slice before ``t`` (in that pass's order) is nearer; ties and prompted slices go
to the forward pass. With one prompted slice ``p`` that is simply: forward for ``t >= p``, backward
for ``t < p``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["prompted_slices", "propagate_both_ways", "select_prompts"]


def prompted_slices(prompts: dict[str, Tensor]) -> list[int]:
    """Sorted indices of slices that carry a click or a box (in any batch element)."""
    found: set[int] = set()
    if prompts.get("point_labels") is not None:
        found |= set(torch.nonzero((prompts["point_labels"] >= 0).any(dim=2).any(dim=0)).flatten().tolist())
    if prompts.get("boxes") is not None:
        found |= set(torch.nonzero(torch.isfinite(prompts["boxes"]).all(dim=2).any(dim=0)).flatten().tolist())
    return sorted(found)


def select_prompts(prompts: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """The prompts of slices ``index`` (in that order), for a sub-sequence ``images[:, :, index]``."""
    return {key: value.index_select(1, index.to(value.device)) for key, value in prompts.items()}


def _choose_forward(t: int, prompted: Sequence[int]) -> bool:
    before = [s for s in prompted if s <= t]
    after = [s for s in prompted if s >= t]
    if not after:
        return True
    if not before:
        return False
    return t - before[-1] <= after[0] - t


def propagate_both_ways(
    network: nn.Module, images: Tensor, positions: Tensor | None, prompts: dict[str, Tensor]
) -> Tensor:
    """Segment every slice from the prompted ones, forwards and backwards (see the module docstring).

    Args:
        network: a :class:`pathseqsam.PathSeqSAM` (or anything with its ``forward`` signature).
        images: ``[B, 3, N, H, W]`` normalised images.
        positions: ``[B, N]`` / ``[B, N, D]`` micrometres, or None.
        prompts: ``point_coords``/``point_labels``/``boxes`` for all N slices (see
            :meth:`PathSeqSAM.forward`).

    Returns:
        Mask logits ``[B, 1, N, H, W]``.

    Raises:
        ValueError: no slice carries a prompt.
    """
    n = images.shape[2]
    prompted = prompted_slices(prompts)
    if not prompted:
        raise ValueError("propagate_both_ways needs at least one prompted slice")
    s0, s1 = prompted[0], prompted[-1]
    device = images.device
    fwd_idx = torch.arange(s0, n, device=device)
    fwd = network(
        images.index_select(2, fwd_idx),
        positions=None if positions is None else positions.index_select(1, fwd_idx),
        prompts=select_prompts(prompts, fwd_idx),
    )
    out = fwd.new_empty((*fwd.shape[:2], n, *fwd.shape[3:]))
    out[:, :, s0:] = fwd
    if s0 > 0 or s1 > s0:
        bwd_idx = torch.arange(s1, -1, -1, device=device)
        bwd = network(
            images.index_select(2, bwd_idx),
            positions=None if positions is None else positions.index_select(1, bwd_idx),
            prompts=select_prompts(prompts, bwd_idx),
        ).flip(2)  # back to slice order 0..s1
        for t in range(s1 + 1):
            if not _choose_forward(t, prompted):
                out[:, :, t] = bwd[:, :, t]
    return out
