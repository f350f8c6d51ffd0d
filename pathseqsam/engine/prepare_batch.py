"""Batch preparation: images and labels for the engine, positions (and prompts) for the network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["SequencePrepareBatch"]


class SequencePrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` on slice sequences.

    Returns ``(image, label, (), kwargs)``: MONAI's engines call ``inferer(image, network, **kwargs)``,
    and both ``SimpleInferer`` and ``SlidingWindowInferer`` pass the kwargs on to the network, so the
    physical ``positions`` (and optional ``prompts``) reach :meth:`PathSeqSAM.forward`.

    Args:
        return_aux: ask the network for its auxiliary outputs (training: the loss needs them).
        image_key: batch key of ``[B, 3, N, H, W]`` images.
        label_key: batch key of ``[B, 1, N, H, W]`` masks (may be absent for inference).
        positions_key: batch key of ``[B, N, D]`` positions in micrometres (optional).
        prompts_key: batch key of a prompts dict (optional).
    """

    def __init__(
        self,
        return_aux: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        positions_key: str = "positions",
        prompts_key: str = "prompts",
    ) -> None:
        self.return_aux = return_aux
        self.image_key, self.label_key = image_key, label_key
        self.positions_key, self.prompts_key = positions_key, prompts_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict[str, Any]]:
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no {self.image_key!r} (keys: {sorted(batchdata)})")

        def move(x: Any) -> Any:
            return (
                x.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(x, torch.Tensor) else x
            )

        image = move(batchdata[self.image_key])
        label = move(batchdata.get(self.label_key))
        net_kwargs: dict[str, Any] = {}
        if batchdata.get(self.positions_key) is not None:
            net_kwargs["positions"] = move(torch.as_tensor(batchdata[self.positions_key]).float())
        if batchdata.get(self.prompts_key) is not None:
            net_kwargs["prompts"] = {k: move(v) for k, v in batchdata[self.prompts_key].items()}
        if self.return_aux:
            net_kwargs["return_aux"] = True
        return image, label, (), net_kwargs
