"""Distance-aware memory compression: far memory slices cost fewer tokens.

Memory cross-attention pays for every token of every memory slice (4,096 per slice for SAM2 at
1024 px). PathSeqSAM knows how far each selected memory slice is, so it can spend tokens where they
matter: with ``memory_token_um = (8, 16, 32)`` the nearest memory slice keeps tokens of 8 um, the
next 16 um (2 x 2 pooling at 8 um native), the rest 32 um (4 x 4), and so on; the last value
applies to every slice beyond. Budgets are micrometres per token, not pooling factors, so the same
setting means the same thing at any resolution.

Training-free by construction: features and their position encodings are average-pooled *before*
the key/value projections (a pooled token is the mean of the tokens it replaces, which the
projections map to the mean key and value), and every pooled key is rotated by RoPE at its block's
centre (:meth:`~pathseqsam.modeling.distance_attention.DistanceAwareRoPEAttention.forward`'s
``key_xy``), since pooled keys break SAM2's assumption that keys repeat the query grid. At the
native budget (factor 1 everywhere) the result equals the uncompressed memory (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pathseqsam.modeling.slide_memory import grid_token_positions

__all__ = ["NATIVE_TOKEN_PX", "compress_slots", "grid_key_xy", "pool_factors", "token_budget_um"]

NATIVE_TOKEN_PX = 16  # SAM2's memory features sit on the image encoder's stride-16 grid


def token_budget_um(model_mpp_um: float, multiples: tuple[int, ...] = (1, 4)) -> list[float]:
    """A memory token budget in micrometres: the native token size times ``multiples``.

    The bundle's default, ``(1, 4)``, is the setting whose cost and quality were measured
    (``docs/experiments/memory_cost/``): the nearest memory slice at its native tokens, every other
    one pooled 4 x 4. Written in micrometres from the working resolution, so it stays that setting
    when ``model_mpp_um`` changes.

    Args:
        model_mpp_um: the network's working resolution, micrometres per pixel.
        multiples: pooling factor per distance rank, nearest first (the last for every slice beyond).

    Returns:
        ``memory_token_um``: micrometres per memory token, nearest first.

    Raises:
        ValueError: a resolution that is not positive, or a multiple below 1.
    """
    if model_mpp_um is None or not float(model_mpp_um) > 0:
        raise ValueError(f"model_mpp_um must be positive micrometres per pixel, got {model_mpp_um}")
    if not multiples or any(int(m) != m or m < 1 for m in multiples):
        raise ValueError(f"multiples must be whole pooling factors >= 1, got {multiples}")
    native = NATIVE_TOKEN_PX * float(model_mpp_um)
    return [native * int(m) for m in multiples]


def pool_factors(
    token_um: tuple[float, ...], native_um: float, slots: int, grid: tuple[int, int]
) -> list[int]:
    """Pooling factor of each memory slot, nearest first.

    Args:
        token_um: micrometres per token by distance rank (the last value for every slot beyond).
        native_um: micrometres per token of the stride-16 grid.
        slots: memory slices selected.
        grid: ``(h, w)`` of the token grid.

    Returns:
        One factor per slot, each dividing ``h`` and ``w``.

    Raises:
        ValueError: a budget finer than the native token, or a factor that does not divide the grid.
    """
    out = []
    for i in range(slots):
        um = float(token_um[min(i, len(token_um) - 1)])
        k = round(um / native_um)
        if k < 1:
            raise ValueError(
                f"memory_token_um {um:g} is finer than the network's native token of {native_um:g} um"
            )
        if grid[0] % k or grid[1] % k:
            raise ValueError(
                f"memory_token_um {um:g} pools {k} x {k} native tokens ({native_um:g} um), which does not divide "
                f"the {grid[0]} x {grid[1]} token grid: choose a budget of native x a divisor of {grid[0]}"
            )
        out.append(k)
    return out


def compress_slots(
    tensors: list[Tensor], key_xy: Tensor, factors: list[int], grid: tuple[int, int]
) -> tuple[list[Tensor], Tensor, list[int]]:
    """Average-pool each memory slot by its factor.

    Args:
        tensors: ``[B, M, h * w, C_i]`` per-token tensors (features, position encodings), row-major.
        key_xy: ``[B, M, h * w, 2]`` each token's RoPE position in the query's grid.
        factors: pooling factor per slot (:func:`pool_factors`).
        grid: ``(h, w)``.

    Returns:
        ``(pooled tensors [B, N, C_i], pooled key_xy [B, N, 2] at block centres, tokens per slot)``.
    """
    h, w = grid
    pooled: list[list[Tensor]] = [[] for _ in tensors]
    xy, counts = [], []
    for m, k in enumerate(factors):
        for i, x in enumerate(tensors):
            pooled[i].append(_pool(x[:, m], k, h, w))
        xy.append(_pool(key_xy[:, m].float(), k, h, w))  # the mean position: the block's centre
        counts.append((h // k) * (w // k))
    return [torch.cat(p, dim=1) for p in pooled], torch.cat(xy, dim=1), counts


def _pool(x: Tensor, k: int, h: int, w: int) -> Tensor:
    """``[B, h * w, C]`` -> ``[B, (h / k) * (w / k), C]`` by k x k averages (row-major kept)."""
    if k == 1:
        return x
    b, _, c = x.shape
    grid = x.transpose(1, 2).reshape(b, c, h, w)
    return F.avg_pool2d(grid, k).flatten(2).transpose(1, 2)


def grid_key_xy(h: int, w: int, batch: int, slots: int, device: torch.device | None = None) -> Tensor:
    """``[B, M, h * w, 2]`` the query grid's own positions for every slot (sections: no offset)."""
    gx, gy = grid_token_positions(h, w, device)
    return torch.stack([gx, gy], dim=-1).expand(batch, slots, -1, -1)
