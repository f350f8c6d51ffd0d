"""Loading official SAM2 / SAM2.1 checkpoints into PathSeqSAM, with errors that name the keys.

Official checkpoints (``sam2.1_hiera_tiny.pt`` ...) are ``{"model": state_dict}`` files read with
``torch.load(weights_only=True)`` (no pickled code is executed). PathSeqSAM adds parameters that
SAM2 does not have (the distance kernel's lambda); those, and only those, may be missing. A
checkpoint exported from a trained PathSeqSAM also carries its working resolution
(``model_mpp_um``); it is returned to the caller rather than loaded as a weight.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pathseqsam.modeling.resolution import MODEL_MPP_KEY

__all__ = ["PATHSEQSAM_NEW_KEYS", "load_sam2_checkpoint", "read_sam2_state_dict"]

# Parameters PathSeqSAM adds on top of SAM2; an official checkpoint does not have them.
PATHSEQSAM_NEW_KEYS = ("distance_kernel.raw_lambda", "slide_distance_kernel.raw_lambda")


def _short(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_sam2_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the state dict of a SAM2 checkpoint file.

    Args:
        path: a ``.pt`` holding ``{"model": state_dict}`` (official format) or a bare state dict.

    Returns:
        The state dict (name -> tensor).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be read safely, or does not hold a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        raise ValueError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({err})"
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: expected a dict {{'model': state_dict}} (official SAM2 format), got {type(obj).__name__}"
        )
    state = obj["model"] if "model" in obj else obj
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: 'model' must be a non-empty state dict, got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{path}: expected a state dict of tensors (or {{'model': state_dict}}); non-tensor entries: {_short(bad)}"
        )
    return dict(state)


def load_sam2_checkpoint(
    model: nn.Module, path: str | os.PathLike, allowed_missing: Iterable[str] = PATHSEQSAM_NEW_KEYS
) -> float | None:
    """Load a SAM2 checkpoint into ``model`` (before LoRA is injected), strictly but for new keys.

    Args:
        model: a PathSeqSAM (or SAM2Base) module whose parameter names are SAM2's.
        path: checkpoint file.
        allowed_missing: keys the model has and the checkpoint may lack.

    Returns:
        The checkpoint's ``model_mpp_um`` (an export of a trained PathSeqSAM), or None (official
        SAM2 weights carry none).

    Raises:
        ValueError: naming the unexpected, missing and shape-mismatched keys (nothing is loaded).
    """
    state = read_sam2_state_dict(path)
    mpp = state.pop(MODEL_MPP_KEY, None)
    own = {k: v for k, v in model.state_dict().items() if k != MODEL_MPP_KEY}
    missing = set(own) - set(state) - set(allowed_missing)
    unexpected = set(state) - set(own)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(
            f"{len(shapes)} shape mismatches: {'; '.join(shapes[:8])}" + (" ..." if len(shapes) > 8 else "")
        )
    if problems:
        raise ValueError(
            f"{path} does not match this model (wrong SAM2 config for the checkpoint?): "
            + " | ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    return None if mpp is None else float(mpp)
