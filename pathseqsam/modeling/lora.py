"""LoRA (peft) on the Hiera image encoder's attention, which parameters train, and export.

LoRA goes on ``image_encoder.trunk.blocks.<i>.attn.qkv`` and ``.attn.proj`` of every Hiera block,
exactly those: peft's plain ``target_modules=["qkv", "proj"]`` would also hit the stage-transition
projections, the patch-embed conv and the memory encoder's Identity ``fuser.proj``, hence the
full-match regex. The rest of the image encoder stays frozen; everything after it trains.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path

import peft
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from pathseqsam.atomic import atomic_torch_save
from pathseqsam.modeling.network import MEMORY_ONLY_PARAMETERS

__all__ = [
    "LORA_TARGET_REGEX",
    "apply_lora",
    "configure_trainable",
    "export_sam2_checkpoint",
    "lora_module_names",
    "merge_lora",
    "merged_state_dict",
    "trainable_summary",
]

LORA_TARGET_REGEX = r".*image_encoder\.trunk\.blocks\.\d+\.attn\.(qkv|proj)"


def apply_lora(
    model: nn.Module, rank: int = 8, alpha: float | None = None, dropout: float = 0.0
) -> nn.Module:
    """Inject rank-``rank`` LoRA adapters into the Hiera attention projections, in place.

    Load pretrained SAM2 weights BEFORE calling this (the wrapped layers' keys become
    ``...qkv.base_layer.weight``). peft freezes every other parameter; call
    :func:`configure_trainable` afterwards.

    Args:
        model: a PathSeqSAM / SAM2Base module.
        rank: LoRA rank r (paper: 8).
        alpha: LoRA alpha (scaling alpha / r); default ``2 * rank``.
        dropout: dropout on the LoRA branch.

    Returns:
        The same module, with adapters.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else 2 * rank),
        lora_dropout=dropout,
        target_modules=LORA_TARGET_REGEX,
    )
    return peft.inject_adapter_in_model(config, model)


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the modules carrying LoRA adapters."""
    return [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def configure_trainable(
    model: nn.Module, train_image_encoder: bool = False, frozen: Iterable[str] = ()
) -> None:
    """Set ``requires_grad``: image encoder frozen except LoRA, everything else trainable.

    Parameters a setting makes unused stay frozen: lambda with ``distance_mode="none"``, the memory
    path (:data:`~pathseqsam.modeling.network.MEMORY_ONLY_PARAMETERS`) with ``memory_selection="none"``.

    Args:
        model: the network (with or without LoRA).
        train_image_encoder: fine-tune the whole image encoder instead (no LoRA needed).
        frozen: extra name prefixes to freeze (e.g. ``["sam_prompt_encoder"]``).
    """
    frozen = tuple(frozen)
    for name, p in model.named_parameters():
        if "lora_" in name:
            trainable = True
        elif name.startswith("image_encoder."):
            trainable = train_image_encoder
        else:
            trainable = True
        if frozen and name.startswith(frozen):
            trainable = False
        if name.endswith("distance_kernel.raw_lambda") and getattr(model, "distance_mode", None) == "none":
            trainable = False  # unused in the "none" ablation
        if getattr(model, "memory_selection", None) == "none" and name.startswith(MEMORY_ONLY_PARAMETERS):
            trainable = False  # no memory: these never reach the mask logits
        p.requires_grad_(trainable)


def trainable_summary(model: nn.Module) -> dict[str, float | int]:
    """Counts of parameters: ``total``, ``trainable``, ``lora``, and ``trainable_fraction``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return {
        "total": total,
        "trainable": trainable,
        "lora": lora,
        "trainable_fraction": trainable / max(total, 1),
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and remove the wrappers, in place.

    Afterwards the module has plain SAM2 parameter names (``...attn.qkv.weight``) again.
    """
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, m in wrapped:
        m.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.get_base_layer())
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with LoRA merged (the model itself is left untouched)."""
    return merge_lora(copy.deepcopy(model)).state_dict()


def export_sam2_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{"model": state_dict}`` with LoRA merged, in SAM2's checkpoint format, atomically.

    The file loads with ``build_pathseqsam(checkpoint=path, ...)`` (and its SAM2 keys with SAM2's
    own ``build_sam2``, which must be told to ignore the extra distance-kernel key).

    Args:
        model: the trained network.
        path: destination ``.pt``.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(model).items()}
    atomic_torch_save({"model": state}, path)
    return path
