"""Memory in slide coordinates: whole-slide tiles remembered where they lie on the slide.

In a serial-section stack every memory frame covers the same field as the current slice, and SAM2's
memory attention assumes exactly that: its RoPE repeats the query's token grid for every memory
frame (``rope_k_repeat``) and the memory encoder's sine encoding is in each frame's own grid. On the
tiles of one slide that is wrong: the tile to the left lies half a tile to the left, yet SAM2 reads
it as if it lay under the current tile. With ``memory_coordinates="slide"``
(:class:`~pathseqsam.modeling.network.PathSeqSAM`) a memory tile's tokens sit at their slide
position instead:

* **RoPE at the tile offset.** For a memory tile whose centre lies ``(dx, dy)`` tokens from the
  current tile's, its key at grid ``(x, y)`` is rotated as if at ``(x + dx, y + dy)`` of the query's
  grid (:func:`axial_rope_at`, applied in
  :meth:`~pathseqsam.modeling.distance_attention.DistanceAwareRoPEAttention.forward`). Tokens that
  see the same tissue then share positions, whatever the tiles' offset.
* **Sine encoding at the same shifted coordinates** (:func:`shifted_sine_pe`), and one fixed
  temporal slot (the "previous frame" one) for every memory tile: a tile's slot says nothing on a
  slide.
* **Tokens outside the overlap are masked** (:func:`outside_overlap`). RoPE has no distance decay:
  a key 10 tokens away is not weaker than one under the query, and offsets beyond the grid's own
  span (``|dx| > w - 1``) were never seen by SAM2's pretrained memory attention. Masking keeps every
  relative offset inside the range SAM2 was trained on and keeps memory about the tissue under the
  current tile; the cost is that a glomerulus cut by the tile edge cannot be seen past the overlap.
* **Neighbours chosen in 2D** (:class:`SlideMemoryBank`): Eq. 2's candidates are segmented tiles
  within :data:`NEIGHBOUR_STRIDES` strides of the current one; an entry is evicted once it is
  farther than that from every tile still to come, so memory grows with the row length, not with
  the slide. Eq. 1's distance is in strides, with its own ``lambda_slide``.
* **No object pointers**: a pointer says "an object was present in that tile", which on the next
  tile (other tissue) is a leak, not context.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pathseqsam.modeling.adaptive_memory import MemoryBank, MemoryEntry, gather_entries

__all__ = [
    "MEMORY_COORDINATES",
    "NEIGHBOUR_STRIDES",
    "SlideMemoryBank",
    "axial_rope_at",
    "grid_token_positions",
    "last_needed",
    "outside_grid",
    "outside_overlap",
    "shifted_sine_pe",
    "token_offsets",
]

MEMORY_COORDINATES = ("sequence", "slide")
# a memory tile is a neighbour while its centre is at most 1.5 strides away: the 8 tiles around the
# current one (diagonals at sqrt(2)); at the default 50 % overlap these are the tiles that overlap it
NEIGHBOUR_STRIDES = 1.5


def grid_token_positions(h: int, w: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the ``h * w`` tokens of a grid in SAM2's flattening order (row-major)."""
    t = torch.arange(h * w, device=device, dtype=torch.float32)
    return t % w, torch.div(t, w, rounding_mode="floor")


def axial_rope_at(x: Tensor, y: Tensor, dim: int, theta: float = 10000.0) -> Tensor:
    """SAM2's axial RoPE rotations (``compute_axial_cis``) at arbitrary token positions.

    SAM2 evaluates its frequencies on the integer grid ``0..w-1 x 0..h-1``; here at any ``(x, y)``
    (shifted, fractional), so that ``axial_rope_at(*grid_token_positions(h, w), dim)`` equals
    ``compute_axial_cis(dim, w, h)``.

    Args:
        x: token x positions, any shape ``S``.
        y: token y positions, same shape.
        dim: the per-head channel count (``internal_dim // num_heads``).
        theta: RoPE base.

    Returns:
        Complex ``[*S, dim // 2]`` rotations (x half, then y half, as SAM2 concatenates them).
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4, device=x.device)[: dim // 4].float() / dim))
    angle_x = x.float()[..., None] * freqs
    angle_y = y.float()[..., None] * freqs
    return torch.cat(
        [torch.polar(torch.ones_like(angle_x), angle_x), torch.polar(torch.ones_like(angle_y), angle_y)],
        dim=-1,
    )


def token_offsets(query_pos: Tensor, key_pos: Tensor, um_per_token: float) -> Tensor:
    """Offsets ``(dx, dy)`` in tokens of memory tiles relative to the current tile.

    Args:
        query_pos: ``[B, 2]`` the current tile's centre ``(x, y)`` in micrometres.
        key_pos: ``[B, M, 2]`` the memory tiles' centres.
        um_per_token: micrometres per token of the stride-16 grid.

    Returns:
        ``[B, M, 2]`` offsets in tokens.
    """
    return (key_pos[..., :2] - query_pos[:, None, :2]) / um_per_token


def outside_overlap(offsets: Tensor, h: int, w: int) -> Tensor:
    """Which memory tokens lie outside the current tile's grid once shifted by their tile's offset.

    Args:
        offsets: ``[B, M, 2]`` tile offsets in tokens (:func:`token_offsets`).
        h: grid rows.
        w: grid columns.

    Returns:
        ``[B, M, h * w]`` bool, True where the token falls outside ``[-0.5, w - 0.5) x [-0.5, h - 0.5)``
        (a token whose centre lands on another token's cell is inside).
    """
    gx, gy = grid_token_positions(h, w, offsets.device)
    return outside_grid(torch.stack([gx + offsets[..., 0:1], gy + offsets[..., 1:2]], dim=-1), h, w)


def outside_grid(key_xy: Tensor, h: int, w: int) -> Tensor:
    """True where a key's position ``(x, y)`` (``[..., 2]``, tokens of the query grid; a pooled
    block's centre) falls outside ``[-0.5, w - 0.5) x [-0.5, h - 0.5)``."""
    x, y = key_xy[..., 0], key_xy[..., 1]
    return (x < -0.5) | (x >= w - 0.5) | (y < -0.5) | (y >= h - 0.5)


def shifted_sine_pe(pe_module: torch.nn.Module, offsets: Tensor, h: int, w: int) -> Tensor:
    """The memory encoder's sine position encoding at shifted token positions.

    SAM2's ``PositionEmbeddingSine`` (``normalize=True``) puts token ``(x, y)`` of an ``h x w`` grid at
    ``((x + 1) / w, (y + 1) / h) * scale``; a memory tile at offset ``(dx, dy)`` gets it at
    ``(x + 1 + dx, y + 1 + dy)``, through the module's own ``_encode_xy``.

    Args:
        pe_module: the memory encoder's ``position_encoding``.
        offsets: ``[B, M, 2]`` tile offsets in tokens.
        h: grid rows.
        w: grid columns.

    Returns:
        ``[B, M, h * w, C]`` encodings (``C`` the module's width; ``(pos_y, pos_x)`` as SAM2 orders them).
    """
    if not getattr(pe_module, "normalize", False) or not hasattr(pe_module, "_encode_xy"):
        raise ValueError(
            "memory_coordinates='slide' needs SAM2's PositionEmbeddingSine(normalize=True) as the memory "
            f"encoder's position encoding, got {type(pe_module).__name__}"
        )
    eps = 1e-6  # SAM2's normaliser: (i + 1) / (n + eps)
    gx, gy = grid_token_positions(h, w, offsets.device)
    x = (gx + 1 + offsets[..., 0:1]) / (w + eps)  # [B, M, hw]
    y = (gy + 1 + offsets[..., 1:2]) / (h + eps)
    pos_x, pos_y = pe_module._encode_xy(x.flatten(), y.flatten())
    return torch.cat([pos_y, pos_x], dim=-1).reshape(*x.shape, -1)


class SlideMemoryBank(MemoryBank):
    """The memory bank of a tile sequence: neighbours on the slide, evicted once out of reach.

    Entries are kept while some tile still to come lies within ``reach`` strides of them; when none
    does they can never be a neighbour again and are dropped. With tiles in rows (serpentine order)
    that leaves about the previous row and the current one: memory grows with the row length, not
    with the slide.

    Args:
        positions: ``[B, N, 2]`` centres ``(x, y)`` of every tile of the sequence, in micrometres.
        stride_um: the tile stride (the distance unit).
        reach: neighbour radius in strides.
    """

    def __init__(self, positions: Tensor, stride_um: float, reach: float = NEIGHBOUR_STRIDES) -> None:
        super().__init__(pool_size=1)
        if (
            positions.ndim != 3
            or positions.shape[-1] < 2
            or not bool(torch.isfinite(positions[..., :2]).all())
        ):
            raise ValueError(
                "memory_coordinates='slide' needs every tile's centre (x, y) in micrometres: positions "
                f"[B, N, 2] without NaN, got shape {tuple(positions.shape)}"
                + ("" if positions.ndim != 3 or positions.shape[-1] < 2 else " with NaN")
            )
        if not stride_um > 0:
            raise ValueError(f"slide stride must be > 0 um, got {stride_um}")
        self.positions = positions[..., :2].float()
        self.stride_um = float(stride_um)
        self.reach = float(reach)
        self.last_needed = last_needed(self.positions, self.reach * self.stride_um + 1e-3)

    def add(self, entry: MemoryEntry) -> None:
        """Store a segmented tile; then drop the entries no later tile can reach."""
        self.entries.append(entry)
        t = entry.index
        self.entries = [e for e in self.entries if self.last_needed[e.index] > t]

    def neighbours(self, t: int) -> Tensor:
        """``[B, P]`` bool: the entries within ``reach`` strides of tile ``t``."""
        here = self.positions[:, t]  # [B, 2]
        d = torch.linalg.vector_norm(self.stack("position")[..., :2].float() - here[:, None], dim=-1)
        return d <= self.reach * self.stride_um + 1e-3

    def stride_distances(self, t: int, sel: Tensor) -> Tensor:
        """``[B, M]`` distances in strides from tile ``t`` to the selected entries."""
        pos = gather_entries(self.stack("position")[..., :2].float(), sel)
        return torch.linalg.vector_norm(pos - self.positions[:, t, None], dim=-1) / self.stride_um


def last_needed(positions: Tensor, radius_um: float) -> list[int]:
    """For every tile ``j``, the last index ``i`` of a tile within ``radius_um`` of it (``j`` itself
    included): after tile ``i``, tile ``j`` is no one's neighbour any more.

    A spatial hash with cells of ``radius_um`` finds every pair within the radius among the 3 x 3
    cells around a tile, so the cost is linear in the number of tiles (a slide has tens of
    thousands), not quadratic. Batch elements are merged: a tile is needed while any element needs it.

    Args:
        positions: ``[B, N, 2]`` tile centres in micrometres.
        radius_um: the neighbour radius.

    Returns:
        ``N`` indices.
    """
    pos = positions.detach().double().cpu().numpy()
    bsz, n = pos.shape[:2]
    out = list(range(n))
    for b in range(bsz):
        cells: dict[tuple[int, int], list[int]] = {}
        keys = [(int(x // radius_um), int(y // radius_um)) for x, y in pos[b]]
        for i, key in enumerate(keys):
            cells.setdefault(key, []).append(i)
        for j, (cx, cy) in enumerate(keys):
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for i in cells.get((cx + dx, cy + dy), ()):
                        if i > out[j] and ((pos[b, i] - pos[b, j]) ** 2).sum() <= radius_um**2:
                            out[j] = i
    return out
