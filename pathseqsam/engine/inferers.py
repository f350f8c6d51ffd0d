"""Test-time ensembling of slice sequences: in-plane mirrors and both slice orders."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from torch import Tensor

__all__ = ["SequenceEnsembleInferer"]


class SequenceEnsembleInferer(Inferer):
    """Average a sequence segmenter's foreground probabilities over in-plane mirrors (and both slice orders).

    In-plane mirroring is nnU-Net's test-time augmentation. Optionally the sequence also runs back to
    front: serial sections have no direction in time, and run front to back a slice only has memory
    of the slices before it; the backward pass gives it the slices after it. Each pass runs
    ``inferer`` (e.g. MONAI's ``SlidingWindowInferer``) on a transformed input, the output is
    transformed back, the sigmoid probabilities of all passes are averaged and returned as logits,
    so the usual sigmoid + 0.5 threshold post-processing applies unchanged. Costs
    ``2^len(mirror_axes)`` passes, twice that when ``bidirectional``. Measured on the synthetic
    comparison set (``docs/experiments/2026-12-01-comparison.md``): the mirrors gained about 1 Dice point, the backward
    pass about 0.2, so it is off by default.

    Args:
        inferer: inner inferer; MONAI's ``SimpleInferer`` when None.
        mirror_axes: in-plane axes of the ``[B, C, N, H, W]`` input to mirror (``-1``/``4`` width,
            ``-2``/``3`` height); every subset is one pass; ``()`` for none.
        bidirectional: also run every mirror with the slice order (and the ``positions``) reversed.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` before the logit.

    Raises:
        ValueError: a mirror axis that is not in-plane, or a repeated one.
    """

    def __init__(
        self,
        inferer: Inferer | None = None,
        mirror_axes: Sequence[int] = (-1, -2),
        bidirectional: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        axes = [int(a) + 5 if int(a) < 0 else int(a) for a in mirror_axes]
        if any(a not in (3, 4) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(
                f"mirror_axes must be distinct in-plane axes of [B, C, N, H, W] (-1/4 width, -2/3 height), "
                f"got {tuple(mirror_axes)}"
            )
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.mirrors = [
            tuple(c) for k in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), k)
        ]
        self.bidirectional = bidirectional
        self.eps = eps

    @property
    def num_passes(self) -> int:
        """Network passes per call."""
        return len(self.mirrors) * (2 if self.bidirectional else 1)

    def __call__(self, inputs: Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Tensor:
        """Ensembled mask logits.

        Args:
            inputs: ``[B, C, N, H, W]`` slice sequences.
            network: the sequence network (e.g. PathSeqSAM); called through ``inferer``.
            *args: passed on to ``inferer``.
            **kwargs: passed on to ``inferer`` (and from there to the network); ``positions``
                (``[B, N]`` or ``[B, N, D]``) is reversed with the slices.

        Returns:
            ``[B, 1, N, H, W]`` logits of the averaged probabilities (float32).

        Raises:
            ValueError: not a 5-D input, ``return_aux`` asked for (training), or ``prompts`` given
                (their pixel coordinates and slice indices are not transformed).
        """
        if inputs.ndim != 5:
            raise ValueError(
                f"SequenceEnsembleInferer expects [B, C, N, H, W] inputs, got shape {tuple(inputs.shape)}"
            )
        if kwargs.get("return_aux"):
            raise ValueError(
                "SequenceEnsembleInferer is for evaluation and inference; training needs return_aux=False"
            )
        if kwargs.get("prompts") is not None:
            raise ValueError(
                "SequenceEnsembleInferer does not transform prompts (pixel coordinates, slice indices): "
                "run prompted inference with the plain inferer"
            )
        positions = kwargs.get("positions")
        total: Tensor | None = None
        for mirror in self.mirrors:
            for reverse in (False, True) if self.bidirectional else (False,):
                x, kw = inputs, dict(kwargs)
                if mirror:
                    x = torch.flip(x, mirror)
                if reverse:
                    x = torch.flip(x, (2,))
                    if isinstance(positions, Tensor):
                        kw["positions"] = torch.flip(positions, (1,))
                out = self.inferer(x, network, *args, **kw)
                if reverse:
                    out = torch.flip(out, (2,))
                if mirror:
                    out = torch.flip(out, mirror)
                prob = torch.sigmoid(out.float())
                total = prob if total is None else total + prob
        assert total is not None  # at least the identity pass
        return torch.logit((total / self.num_passes).clamp(self.eps, 1.0 - self.eps))
