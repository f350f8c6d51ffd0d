"""Adaptive memory (PathSeqSAM Eq. 2) and the bounded memory bank it selects from.

SAM2 attends to the last ``num_maskmem - 1 = 6`` frames. In a slice sequence the most useful
earlier slice is not always the previous one (a section may be folded, torn or faded), so for
slice ``t`` PathSeqSAM keeps the top-K earlier slices by::

    score_j = cos(F_j, F_t) * Conf(y_j)

``F`` is the slice descriptor: the image encoder's top-level (stride-16) feature map, mean-pooled
over space and L2-normalised. ``Conf(y_j) = sigmoid(object_score_j) * clip(IoU_pred_j, 0, 1)``:
SAM2's object-score head says whether slice ``j`` contains glomeruli at all and its IoU head how
good the mask is, so a slice whose prediction SAM2 itself doubts is less likely to be remembered.
Prompted (conditioning) slices are always kept, as in SAM2.

The bank itself is bounded: it keeps the last ``pool_size`` un-prompted slices plus the prompted
ones, so memory and time per slice do not grow with the sequence length ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MemoryBank",
    "MemoryEntry",
    "adaptive_memory_scores",
    "gather_entries",
    "select_memory",
    "select_recent",
]


@dataclass
class MemoryEntry:
    """What one processed slice leaves behind for later slices (batch first).

    Attributes:
        index: the slice's index in the sequence.
        features: ``[B, HW, C_mem]`` SAM2 mask-memory features.
        pos_enc: ``[B, HW, C_mem]`` their spatial position encoding.
        obj_ptr: ``[B, C]`` SAM2 object pointer.
        descriptor: ``[B, C]`` L2-normalised pooled image features (detached).
        confidence: ``[B]`` ``Conf(y)`` in [0, 1] (detached).
        position: ``[B, D]`` position in micrometres (NaN where unknown).
        is_cond: ``[B]`` bool, the slice was prompted for that batch element.
    """

    index: int
    features: Tensor
    pos_enc: Tensor
    obj_ptr: Tensor
    descriptor: Tensor
    confidence: Tensor
    position: Tensor
    is_cond: Tensor


class MemoryBank:
    """Bounded store of :class:`MemoryEntry`: the last ``pool_size`` un-prompted slices + prompted ones.

    Args:
        pool_size: how many un-prompted slices to keep as candidates; must be at least the number
            of slices any selection asks for (K, SAM2's 6 recent frames, its object pointers).
    """

    def __init__(self, pool_size: int) -> None:
        if pool_size < 1:
            raise ValueError(f"memory pool_size must be >= 1, got {pool_size}")
        self.pool_size = pool_size
        self.entries: list[MemoryEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: MemoryEntry) -> None:
        self.entries.append(entry)
        plain = [i for i, e in enumerate(self.entries) if not bool(e.is_cond.any())]
        if len(plain) > self.pool_size:
            # evict the oldest un-prompted slice; prompted slices stay, as in SAM2
            del self.entries[plain[0]]

    def stack(self, field: str) -> Tensor:
        """Stack one field over entries along dim 1: ``[B, P, ...]``."""
        return torch.stack([getattr(e, field) for e in self.entries], dim=1)

    def gather(self, field: str, sel: Tensor) -> Tensor:
        """``stack(field)`` gathered at ``sel`` ``[B, M]`` without stacking the entries not selected
        (a slide's bank holds a row of tiles; copying all their features at every tile is waste)."""
        rows = sel.tolist()
        return torch.stack(
            [torch.stack([getattr(self.entries[j], field)[b] for j in row]) for b, row in enumerate(rows)]
        )

    @property
    def indices(self) -> Tensor:
        """``[P]`` slice indices of the entries (on the entries' device)."""
        device = self.entries[0].features.device
        return torch.tensor([e.index for e in self.entries], device=device)


def adaptive_memory_scores(query_desc: Tensor, key_desc: Tensor, confidence: Tensor) -> Tensor:
    """Eq. 2's ranking score ``cos(F_j, F_t) * Conf(y_j)``.

    Args:
        query_desc: ``[B, C]`` descriptor of the current slice ``t``.
        key_desc: ``[B, P, C]`` descriptors of the candidate slices.
        confidence: ``[B, P]`` confidences of the candidates.

    Returns:
        ``[B, P]`` scores.
    """
    cos = torch.nn.functional.cosine_similarity(key_desc, query_desc[:, None, :], dim=-1)
    return cos * confidence


def select_memory(scores: Tensor, is_cond: Tensor, k: int) -> Tensor:
    """Pick, per batch element, every prompted candidate plus the ``k`` best-scoring others.

    All batch elements get the same number ``M = min(P, k + max_b #prompted_b)`` of slices so the
    memory stays one rectangular tensor; an element with fewer prompted slices than another gets
    its next best-scoring slices in their place.

    Args:
        scores: ``[B, P]`` ranking scores (higher is better).
        is_cond: ``[B, P]`` bool, candidate was prompted for that element.
        k: number of un-prompted slices to keep.

    Returns:
        ``[B, M]`` long positions into the candidate axis, in ascending order.
    """
    if k < 1:
        raise ValueError(f"memory k must be >= 1, got {k}")
    num = min(scores.shape[1], k + int(is_cond.sum(1).max()))
    ranked = torch.where(is_cond, torch.full_like(scores, float("inf")), scores.float())
    return ranked.topk(num, dim=1).indices.sort(dim=1).values


def select_recent(indices: Tensor, is_cond: Tensor, t: int, window: int) -> tuple[Tensor, Tensor]:
    """SAM2's own memory frames for slice ``t``: every prompted candidate plus the others at most
    ``window`` slices before ``t`` (``SAM2Base._prepare_memory_conditioned_features``: conditioning
    frames, then frames ``t - window .. t - 1`` that are not conditioning frames).

    A prompted slice is kept however far back it is and takes no place of the window (SAM2 skips
    it there). Batch elements may keep different numbers of slices; the result is rectangular
    with a validity mask, which the caller turns into an attention mask.

    Args:
        indices: ``[P]`` slice indices of the candidates (all before ``t``).
        is_cond: ``[B, P]`` bool, candidate was prompted (a conditioning frame) for that element.
        t: index of the current slice.
        window: how many slices back un-prompted candidates are kept (SAM2: ``num_maskmem - 1``
            for spatial memories, ``max_obj_ptrs_in_encoder - 1`` for object pointers).

    Returns:
        ``[B, M]`` long positions into the candidate axis in ascending order, and ``[B, M]`` bool,
        False where an element keeps fewer than ``M`` slices (padding).
    """
    if window < 1:
        raise ValueError(f"memory window must be >= 1, got {window}")
    keep = is_cond | ((t - indices) <= window)[None, :]  # [B, P]
    num = max(int(keep.sum(1).max()), 1)
    ranked = torch.where(keep, indices.float()[None, :].expand_as(keep), float("-inf"))
    sel = ranked.topk(num, dim=1).indices.sort(dim=1).values
    return sel, gather_entries(keep, sel)


def gather_entries(stacked: Tensor, sel: Tensor) -> Tensor:
    """Gather ``stacked[b, sel[b, m], ...]`` -> ``[B, M, ...]``."""
    b = torch.arange(stacked.shape[0], device=stacked.device)[:, None]
    return stacked[b, sel]
