"""Helpers for the whole-slide tests: a colour-threshold stand-in for the network.

``ColourOracle`` has the network's streaming interface and marks glomerulus-coloured pixels (the
synthetic slides draw glomeruli dark purple: green < 110 of 255); with it the pipeline's reading,
tiling, stitching, cleaning and outputs must reproduce the slide's known mask, which a random tiny
model cannot show. It records the positions it was given, to check the sequence's positions.
"""

from __future__ import annotations

import torch

from pathseqsam import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD


class ColourOracle(torch.nn.Module):
    def __init__(self, image_size: int = 128) -> None:
        super().__init__()
        self.image_size = image_size
        self.distance_unit_um = 5.0
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen_positions = None
        self.seen_units = []

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, H, W] normalised
        mean = torch.tensor(SAM2_PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SAM2_PIXEL_STD).view(1, 3, 1, 1)
        green = (x * std + mean)[:, 1:2] * 255.0
        return (110.0 - green) / 5.0  # [B, 1, H, W]

    def iter_slices(self, images, positions=None, prompts=None, return_aux=False):
        for t in range(images.shape[2]):
            yield {"logits": self._logits(images[:, :, t])}

    def iter_slice_stream(self, chunks, positions, num_slices, return_aux=False):
        self.seen_positions = positions.clone()
        self.seen_units.append(self.distance_unit_um)
        count = 0
        for chunk in chunks:
            for t in range(chunk.shape[2]):
                count += 1
                yield {"logits": self._logits(chunk[:, :, t])}
        assert count == num_slices
