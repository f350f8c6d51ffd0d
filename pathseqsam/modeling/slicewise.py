"""Run a 2D segmentation network on slice sequences, one slice at a time (baselines).

:class:`SliceWise` lets a plain 2D network (MONAI ``DynUNet``, ``SwinUNETR``, ...) stand in for
PathSeqSAM in the same bundle harness: the slice axis is folded into the batch, the 2D network sees
``[B * N, C, H, W]``, and its output is unfolded back to ``[B, 1, N, H, W]``. The same
``SequencePrepareBatch``, inferers, loss and per-patch metrics then apply unchanged. Slice
positions are accepted and ignored (a 2D network has no notion of neighbours); prompts are refused,
because silently ignoring a user's clicks would be wrong.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SliceWise"]


class SliceWise(nn.Module):
    """Apply a 2D network to every slice of ``[B, C, N, H, W]`` sequences independently.

    Args:
        net: a 2D network mapping ``[b, C, H, W]`` to ``[b, K, H, W]`` logits.
        slice_chunk: slices per call of ``net`` (bounds memory on long sequences); None = all at once.
    """

    def __init__(self, net: nn.Module, slice_chunk: int | None = None) -> None:
        super().__init__()
        if slice_chunk is not None and slice_chunk < 1:
            raise ValueError(f"slice_chunk must be >= 1 or None, got {slice_chunk}")
        self.net = net
        self.slice_chunk = slice_chunk

    def forward(
        self,
        images: Tensor,
        positions: Tensor | None = None,
        prompts: dict[str, Any] | None = None,
        return_aux: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Segment every slice on its own.

        Args:
            images: ``[B, C, N, H, W]`` sequences (or ``[B, C, H, W]`` single slices).
            positions: slice positions; ignored (accepted so the sequence harness can pass them).
            prompts: must be empty: a 2D baseline cannot take point or box prompts.
            return_aux: return ``{"logits": ...}`` (the training loss's input format) instead of
                the tensor.

        Returns:
            Logits ``[B, K, N, H, W]`` (``[B, K, H, W]`` for 4-D input), or a dict holding them.
        """
        del positions  # a per-slice network has no use for them
        if prompts:
            raise ValueError(
                f"{type(self.net).__name__} runs per slice without prompts; got prompts {sorted(prompts)}"
            )
        if not isinstance(images, Tensor) or images.ndim not in (4, 5):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be [B, C, N, H, W] or [B, C, H, W], got {shape}")
        if images.ndim == 4:
            logits = self._run(images)
        else:
            b, c, n, h, w = images.shape
            flat = images.transpose(1, 2).reshape(b * n, c, h, w)
            out = self._run(flat)
            logits = out.reshape(b, n, *out.shape[1:]).transpose(1, 2)
        return {"logits": logits} if return_aux else logits

    def _run(self, x: Tensor) -> Tensor:
        if self.slice_chunk is None or x.shape[0] <= self.slice_chunk:
            return self.net(x)
        return torch.cat([self.net(part) for part in x.split(self.slice_chunk)], dim=0)
