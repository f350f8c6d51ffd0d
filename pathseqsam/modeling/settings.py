"""The network's own settings (what PathSeqSAM adds to SAM2), declared and documented once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pathseqsam.modeling.distance_attention import DISTANCE_MODES
from pathseqsam.modeling.slide_memory import MEMORY_COORDINATES

__all__ = ["MEMORY_SELECTIONS", "PathSeqSAMSettings"]

MEMORY_SELECTIONS = ("topk", "last", "none")


@dataclass(frozen=True)
class PathSeqSAMSettings:
    """Memory and distance settings of :class:`~pathseqsam.modeling.network.PathSeqSAM`.

    :func:`pathseqsam.build_pathseqsam` takes every field as a keyword argument (the bundle's
    ``network_def`` names them there) and ``PathSeqSAM`` stores them as attributes of the same names.

    Attributes:
        memory_k: K of Eq. 2, the number of earlier slices kept in memory (paper: 5).
        memory_selection: ``"topk"`` (Eq. 2: the K earlier slices with the highest
            ``cos(F_j, F_t) * Conf(y_j)``), ``"last"`` (SAM2's stock memory exactly: the first slice as
            the initial conditioning frame, prompted slices, the last ``num_maskmem - 1`` frames and
            the last ``max_obj_ptrs_in_encoder - 1`` object pointers; the baseline of the ablations) or ``"none"`` (every slice segmented on its own as a first
            frame: SAM2 per slice; memory-only parameters are then frozen and ``memory_k`` and the
            distance settings unused).
        memory_pool_size: candidate slices kept in the memory bank; bounds memory for long sequences
            (at least K and SAM2's own frame and pointer counts).
        distance_mode: ``"multiplicative"`` (Eq. 1: attention logits times ``phi(d)``), ``"additive"``
            (``-lambda d^2`` added to the logits) or ``"none"`` (SAM2's attention).
        distance_unit_um: micrometres per distance unit of ``phi(d) = exp(-lambda d^2)``: the typical
            spacing of consecutive slices (serial sections: a few um; KPIs patches: patch size x
            microns per pixel; whole-slide tiles: the tile stride).
        distance_lambda_init: initial lambda (paper: 0.1); lambda is learnt.
        multimask_output: force SAM2's 3-mask output on (True) or off (False); None keeps SAM2's rule.
        encoder_chunk: slices per image-encoder call; 1 keeps inference memory flat in the sequence
            length, larger values batch the encoder (faster training on a GPU).
        memory_coordinates: ``"sequence"`` (serial sections, KPIs patches: every memory frame covers
            the current field, SAM2's own assumption) or ``"slide"`` (the tiles of one slide: memory
            tiles sit at their offset on the slide, neighbours are chosen in 2D, no object pointers,
            Eq. 1's distance is in tile strides with its own ``lambda_slide``; see
            :mod:`~pathseqsam.modeling.slide_memory`). Positions must then be tile centres ``(x, y)``.
        mask_outside_overlap: in slide coordinates, mask memory tokens that fall outside the current
            tile (why: :mod:`~pathseqsam.modeling.slide_memory`).
        slide_tile_um: tile side in micrometres for slide coordinates; None: the field of view
            ``image_size * model_mpp_um``. The slide command passes its own.
        slide_stride_um: tile stride, the distance unit in slide coordinates; None: half the tile.
        memory_token_um: distance-aware memory compression (off: None): micrometres per memory token
            by distance rank, nearest first, the last value for every slice beyond (e.g.
            ``(8, 16, 32)`` at 8 um native tokens: full resolution, 2 x 2, then 4 x 4 pooling;
            :mod:`~pathseqsam.modeling.memory_compression`). Training-free.
    """

    memory_k: int = 5
    memory_selection: str = "topk"
    memory_pool_size: int = 16
    distance_mode: str = "multiplicative"
    distance_unit_um: float = 4.0
    distance_lambda_init: float = 0.1
    multimask_output: bool | None = None
    encoder_chunk: int = 1
    memory_coordinates: str = "sequence"
    mask_outside_overlap: bool = True
    slide_tile_um: float | None = None
    slide_stride_um: float | None = None
    memory_token_um: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.memory_selection not in MEMORY_SELECTIONS:
            raise ValueError(
                f"memory_selection must be one of {MEMORY_SELECTIONS}, got {self.memory_selection!r}"
            )
        if self.distance_mode not in DISTANCE_MODES:
            raise ValueError(f"distance_mode must be one of {DISTANCE_MODES}, got {self.distance_mode!r}")
        if self.memory_k < 1:
            raise ValueError(f"memory_k must be >= 1, got {self.memory_k}")
        if not self.distance_unit_um > 0:
            raise ValueError(f"distance_unit_um must be > 0, got {self.distance_unit_um}")
        if self.encoder_chunk < 1:
            raise ValueError(f"encoder_chunk must be >= 1, got {self.encoder_chunk}")
        if self.memory_coordinates not in MEMORY_COORDINATES:
            raise ValueError(
                f"memory_coordinates must be one of {MEMORY_COORDINATES}, got {self.memory_coordinates!r}"
            )
        if self.memory_token_um is not None:
            budget = tuple(float(v) for v in self.memory_token_um)  # a config's JSON list is fine
            if not budget or not all(v > 0 for v in budget):
                raise ValueError(
                    f"memory_token_um must be positive micrometres per token, got {self.memory_token_um}"
                )
            object.__setattr__(self, "memory_token_um", budget)
        for name in ("slide_tile_um", "slide_stride_um"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 um or None, got {value}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (the keyword arguments that :func:`build_pathseqsam` forwards here)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[PathSeqSAMSettings, dict[str, Any]]:
        """Split keyword arguments into these settings and the rest (SAM2's own arguments)."""
        own = {k: v for k, v in kwargs.items() if k in cls.names()}
        rest = {k: v for k, v in kwargs.items() if k not in own}
        return cls(**own), rest

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain keyword arguments."""
        return asdict(self)
