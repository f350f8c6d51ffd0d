"""The network's working resolution (micrometres per pixel), saved with its weights and checked on load.

A network learns tissue at one scale: glomeruli of 150 um are 75 px wide at 2 um/px and 300 px at
0.5 um/px. :func:`attach_model_mpp` registers the bundle's ``model_mpp_um`` as a persistent buffer,
so it travels in every state dict (``model.pt``, ``checkpoint_epoch=N.pt``, exports) without any
change to the savers, and a load-time hook refuses a state dict trained at another resolution. A
state dict that carries none fails a strict load as a missing key ``model_mpp_um`` (with a warning
that says why). Official SAM2 checkpoints are loaded before the
buffer exists (:func:`pathseqsam.build_pathseqsam`), so they are unaffected.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["MODEL_MPP_KEY", "attach_model_mpp", "model_mpp_um_of"]

MODEL_MPP_KEY = "model_mpp_um"
_REL_TOL = 1e-3  # 0.25 vs 0.2502 um/px is the same resolution; 0.25 vs 0.5 is not


def _check_on_load(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Refuse a state dict trained at another resolution (before any weight is copied)."""
    key = prefix + MODEL_MPP_KEY
    if key not in state_dict:
        return  # reported as a missing key (torch's strict check) and by _explain_missing
    own = float(getattr(module, MODEL_MPP_KEY))
    saved = float(torch.as_tensor(state_dict[key]).double())
    if not math.isclose(saved, own, rel_tol=_REL_TOL):
        raise ValueError(
            f"the checkpoint was trained at model_mpp_um={saved:g} um/px but this network is configured "
            f"for model_mpp_um={own:g} um/px; set model_mpp_um to {saved:g} (e.g. '--model_mpp_um {saved:g}' "
            f"on the bundle command line) or use a checkpoint trained at {own:g} um/px"
        )


def _explain_missing(module: nn.Module, incompatible: Any) -> None:
    """Say what a missing ``model_mpp_um`` means (torch's strict load then fails on the key)."""
    if MODEL_MPP_KEY in incompatible.missing_keys:
        warnings.warn(
            f"the state dict has no '{MODEL_MPP_KEY}': it does not say at which resolution the network was "
            f"trained (this network works at {float(getattr(module, MODEL_MPP_KEY)):g} um/px). Checkpoints "
            "from bundle >= 0.5.0 carry it; official SAM2 weights go through build_pathseqsam(checkpoint=...)",
            stacklevel=3,
        )


def attach_model_mpp(net: nn.Module, model_mpp_um: float) -> nn.Module:
    """Register ``model_mpp_um`` on ``net`` as a persistent buffer, checked whenever a state dict loads.

    Args:
        net: the network (PathSeqSAM, or a baseline wrapped in ``SliceWise``).
        model_mpp_um: micrometres per pixel of the images the network sees.

    Returns:
        ``net`` (modified in place).

    Raises:
        ValueError: not a positive finite number, or ``net`` already has another value.
    """
    value = float(model_mpp_um)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"model_mpp_um must be a positive number of micrometres per pixel, got {model_mpp_um!r}"
        )
    if hasattr(net, MODEL_MPP_KEY):
        raise ValueError(f"{type(net).__name__} already has a {MODEL_MPP_KEY} ({model_mpp_um_of(net)})")
    net.register_buffer(MODEL_MPP_KEY, torch.tensor(value, dtype=torch.float64), persistent=True)
    net.register_load_state_dict_pre_hook(_check_on_load)
    net.register_load_state_dict_post_hook(_explain_missing)
    return net


def model_mpp_um_of(net: nn.Module) -> float | None:
    """The working resolution a network carries (None when it has none)."""
    value = getattr(net, MODEL_MPP_KEY, None)
    return None if value is None else float(value)
