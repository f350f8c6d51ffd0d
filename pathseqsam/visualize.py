"""Pictures people look at: mask overlays with contours, per slice and as strips.

Pixel-level drawing (numpy + Pillow), so full-resolution 2048 px overlays stay fast; curves and
contact sheets use matplotlib elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from pathseqsam import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from pathseqsam.atomic import atomic_write

__all__ = ["PRED_COLOUR", "TRUTH_COLOUR", "denormalise", "overlay", "overlay_strip", "save_rgb"]

PRED_COLOUR = (0, 230, 0)  # green
TRUTH_COLOUR = (255, 220, 0)  # yellow


def denormalise(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """SAM2-normalised ``[3, H, W]`` -> uint8 ``[H, W, 3]``."""
    x = np.asarray(torch.as_tensor(image).float().cpu())
    mean = np.asarray(SAM2_PIXEL_MEAN, np.float32)[:, None, None]
    std = np.asarray(SAM2_PIXEL_STD, np.float32)[:, None, None]
    return (np.clip(x * std + mean, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    mask = mask > 0
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def overlay(rgb: np.ndarray, pred: np.ndarray | None = None, truth: np.ndarray | None = None) -> np.ndarray:
    """Draw contours on an RGB image: prediction green (with a light fill), ground truth yellow.

    Args:
        rgb: uint8 ``[H, W, 3]``.
        pred: binary ``[H, W]``.
        truth: binary ``[H, W]``.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    out = rgb.astype(np.float32).copy()
    width = max(1, round(max(rgb.shape[:2]) / 256))
    if pred is not None:
        fill = np.asarray(pred) > 0
        out[fill] = 0.75 * out[fill] + 0.25 * np.asarray(PRED_COLOUR, np.float32)
    if truth is not None:
        out[_contour(np.asarray(truth), width)] = TRUTH_COLOUR
    if pred is not None:
        out[_contour(np.asarray(pred), width)] = PRED_COLOUR
    return out.round().astype(np.uint8)


def save_rgb(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save uint8 ``[H, W]`` or ``[H, W, 3]`` as PNG, atomically."""
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def overlay_strip(
    image: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor | None, path: str | os.PathLike
) -> Path:
    """One PNG: the slices of a sequence side by side with contours.

    Args:
        image: SAM2-normalised ``[3, N, H, W]``.
        pred: binary ``[N, H, W]``.
        truth: binary ``[N, H, W]`` or None.
        path: destination.

    Returns:
        The path written.
    """
    tiles = []
    for t in range(image.shape[1]):
        gt = None if truth is None else np.asarray(truth[t].cpu())
        tiles.append(overlay(denormalise(image[:, t]), np.asarray(pred[t].cpu()), gt))
        tiles.append(np.full((tiles[-1].shape[0], 4, 3), 255, np.uint8))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_rgb(np.concatenate(tiles[:-1], axis=1), path)
