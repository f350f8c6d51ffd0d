"""Distance-aware cross-slice attention (PathSeqSAM Eq. 1).

Eq. 1 weighs the attention of slice ``i`` to the tokens of memory slice ``j`` by the physical
distance between them::

    alpha_ij = softmax_j( sim(F_i, F_j) * phi(d_ij) ),   phi(d) = exp(-lambda * d**2)

with ``sim`` SAM2's scaled dot product and ``lambda`` one learnable positive scalar.

Because ``phi_j`` is a per-key factor, ``softmax((q . k_j / sqrt(c)) * phi_j)`` equals
``softmax(q . (phi_j * k_j) / sqrt(c))``: multiplying each memory key (after RoPE) by the
``phi`` of the slice it comes from is Eq. 1 exactly, and keeps PyTorch's fused
``scaled_dot_product_attention`` kernel (no explicit ``[Nq, Nk]`` logit matrix). Scaling the
queries cannot express a per-key factor.

The multiplicative form is a per-slice *temperature*: logits of far slices shrink towards 0, so a
far slice can *gain* weight when the near logits are negative. ``mode="additive"`` offers the other
reading (a logit bias ``-lambda * d**2`` through SDPA's ``attn_mask``), which always down-weights
far slices; ``mode="none"`` leaves SAM2's attention untouched (ablation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention
from torch import Tensor, nn

from pathseqsam.modeling.slide_memory import axial_rope_at

__all__ = [
    "DISTANCE_MODES",
    "DistanceAwareRoPEAttention",
    "DistanceKernel",
    "estimate_distances_from_features",
    "pairwise_distances",
]

DISTANCE_MODES = ("multiplicative", "additive", "none")


class DistanceKernel(nn.Module):
    """Holds the ONE learnable ``lambda`` of Eq. 1 and turns distances into ``phi`` or a logit bias.

    ``lambda`` is kept positive by a softplus parametrisation (``lambda = softplus(raw)``), so the
    optimiser can never flip the kernel into one that favours far slices.

    Args:
        mode: ``"multiplicative"`` (Eq. 1, default), ``"additive"`` or ``"none"``.
        init_lambda: initial ``lambda`` (paper: 0.1), in 1 / unit**2 of the distance unit.
    """

    def __init__(self, mode: str = "multiplicative", init_lambda: float = 0.1) -> None:
        super().__init__()
        if mode not in DISTANCE_MODES:
            raise ValueError(f"distance_mode must be one of {DISTANCE_MODES}, got {mode!r}")
        if not init_lambda > 0:
            raise ValueError(f"distance lambda must be > 0, got {init_lambda}")
        self.mode = mode
        # inverse softplus, so that softplus(raw) == init_lambda exactly
        raw = init_lambda + math.log(-math.expm1(-init_lambda))
        self.raw_lambda = nn.Parameter(torch.tensor(float(raw)))
        # In "none" mode lambda is unused: freeze it so DDP and optimisers do not see a dead parameter.
        self.raw_lambda.requires_grad_(mode != "none")

    @property
    def lam(self) -> Tensor:
        """The positive ``lambda`` (a 0-d tensor that carries gradient)."""
        return F.softplus(self.raw_lambda)

    def phi(self, d: Tensor) -> Tensor:
        """``exp(-lambda * d**2)`` for distances ``d`` (any shape)."""
        return torch.exp(-self.lam * d.float() ** 2)

    def bias(self, d: Tensor) -> Tensor:
        """Additive logit bias ``-lambda * d**2``."""
        return -self.lam * d.float() ** 2

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, lambda={self.lam.item():.4g}"


class DistanceAwareRoPEAttention(RoPEAttention):
    """SAM2's ``RoPEAttention`` with a per-key factor (Eq. 1), a per-key logit bias, and keys at
    their own positions.

    The factor/bias for the current call is set by :meth:`key_weighting`; outside that context,
    or with ``None``, it is SAM2's attention unchanged. ``key_xy`` places the rotary keys at given
    token positions of the query's grid instead of SAM2's repeat of the query grid (whole-slide
    tiles: a memory tile's keys sit at its offset, :mod:`pathseqsam.modeling.slide_memory`). It adds
    no parameters, so SAM2 checkpoints load into it as into ``RoPEAttention``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._key_scale: Tensor | None = None
        self._key_bias: Tensor | None = None
        self._key_xy: Tensor | None = None

    @contextmanager
    def key_weighting(
        self, scale: Tensor | None = None, bias: Tensor | None = None, key_xy: Tensor | None = None
    ) -> Iterator[None]:
        """Inside: ``scale`` multiplies keys and ``bias`` is added to the logits (both ``[B, Nk]``);
        ``key_xy`` ``[B, Nk_rope, 2]`` gives the ``(x, y)`` token position at which each rotary key is
        rotated (Nk_rope: the keys before ``num_k_exclude_rope``)."""
        self._key_scale, self._key_bias, self._key_xy = scale, bias, key_xy
        try:
            yield
        finally:
            self._key_scale, self._key_bias, self._key_xy = None, None, None

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        # Same steps as RoPEAttention.forward; the only change is the key weighting before SDPA.
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)

        w = h = math.sqrt(q.shape[-2])
        self.freqs_cis = self.freqs_cis.to(q.device)
        if self.freqs_cis.shape[0] != q.shape[-2]:
            self.freqs_cis = self.compute_cis(end_x=w, end_y=h).to(q.device)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError("cross-attention with different q/k lengths needs rope_k_repeat=True")
        num_k_rope = k.size(-2) - num_k_exclude_rope
        if self._key_xy is None:
            q, k_rope = apply_rotary_enc(
                q, k[:, :, :num_k_rope], freqs_cis=self.freqs_cis, repeat_freqs_k=self.rope_k_repeat
            )
        else:  # queries on their grid as in SAM2; every key at its own position
            q, _ = apply_rotary_enc(q, k[:, :, :0], freqs_cis=self.freqs_cis)
            k_rope = self._rotate_keys_at(k[:, :, :num_k_rope], self._key_xy)
        k = torch.cat([k_rope, k[:, :, num_k_rope:]], dim=2)

        attn_mask = None
        if self._key_scale is not None:
            self._check(self._key_scale, k)
            # [B, Nk] -> [B, 1, Nk, 1]; cast so that bf16 autocast keeps one dtype in SDPA
            k = k * self._key_scale[:, None, :, None].to(k.dtype)
        if self._key_bias is not None:
            self._check(self._key_bias, k)
            attn_mask = self._key_bias[:, None, None, :].to(q.dtype)

        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.out_proj(self._recombine_heads(out))

    def _rotate_keys_at(self, k: Tensor, key_xy: Tensor) -> Tensor:
        """Rotate ``k`` ``[B, heads, Nk, d]`` by SAM2's axial RoPE at ``key_xy`` ``[B, Nk, 2]``."""
        if key_xy.shape != (k.shape[0], k.shape[2], 2):
            raise ValueError(
                f"key_xy has shape {tuple(key_xy.shape)}, expected [batch, rotary keys, 2] = {(k.shape[0], k.shape[2], 2)}"
            )
        cis = axial_rope_at(
            key_xy[..., 0], key_xy[..., 1], dim=k.shape[-1], theta=self.compute_cis.keywords["theta"]
        )  # [B, Nk, d / 2]
        k_c = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
        return torch.view_as_real(k_c * cis[:, None]).flatten(3).type_as(k)

    @staticmethod
    def _check(weight: Tensor, k: Tensor) -> None:
        if weight.shape != (k.shape[0], k.shape[2]):
            raise ValueError(
                f"key weighting has shape {tuple(weight.shape)}, expected [batch, keys] = {(k.shape[0], k.shape[2])}"
            )


def pairwise_distances(query_pos: Tensor, key_pos: Tensor, unit_um: float) -> Tensor:
    """Euclidean distance between the current slice and memory slices, in units of ``unit_um``.

    Args:
        query_pos: ``[B, D]`` position of the current slice in micrometres (NaN where unknown).
        key_pos: ``[B, M, D]`` positions of the memory slices.
        unit_um: micrometres per distance unit.

    Returns:
        ``[B, M]`` distances; NaN where either position is unknown.
    """
    return torch.linalg.vector_norm(key_pos - query_pos[:, None, :], dim=-1) / unit_um


def estimate_distances_from_features(
    query_desc: Tensor, key_desc: Tensor, adjacent_dissimilarity: Tensor, eps: float = 1e-6
) -> Tensor:
    """Distances estimated from feature similarity, for slices whose positions are missing.

    The estimator: ``d_tj = (1 - cos(F_t, F_j)) / mean_k(1 - cos(F_k, F_{k-1}))``, the feature
    dissimilarity of the pair divided by the mean dissimilarity of consecutive slices seen so far.
    Consecutive slices therefore sit about 1 unit apart (so ``distance_unit_um`` should be the
    typical slice spacing, which makes measured and estimated distances comparable), near-duplicates
    near 0, and a slice unlike the current one far away. Callers pass detached features: the
    estimate is a measurement, not something to learn through.

    Args:
        query_desc: ``[B, C]`` L2-normalised descriptor of the current slice.
        key_desc: ``[B, M, C]`` L2-normalised descriptors of the memory slices.
        adjacent_dissimilarity: ``[B]`` mean ``1 - cos`` between consecutive processed slices.
        eps: floor for the normaliser (a sequence of identical slices).

    Returns:
        ``[B, M]`` estimated distances in units.
    """
    cos = (key_desc * query_desc[:, None, :]).sum(-1)
    return (1.0 - cos).clamp_min(0.0) / adjacent_dissimilarity.clamp_min(eps)[:, None]
