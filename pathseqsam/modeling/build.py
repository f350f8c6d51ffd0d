"""Build PathSeqSAM from SAM2's own Hydra configs, optionally from an official checkpoint, with LoRA.

The official SAM2.1 configs are composed from the installed ``sam2`` package with two overrides:
the model class becomes :class:`~pathseqsam.modeling.network.PathSeqSAM` and the memory
cross-attention :class:`~pathseqsam.modeling.distance_attention.DistanceAwareRoPEAttention`
(neither adds SAM2 parameters, so official checkpoints load as they are). ``"tiny"`` is a
CPU-sized variant of ``sam2.1_hiera_t`` for tests and demos (about 1.3 M parameters).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from typing import Any

import torch

from pathseqsam.modeling.checkpoint import load_sam2_checkpoint
from pathseqsam.modeling.lora import apply_lora, configure_trainable, trainable_summary
from pathseqsam.modeling.network import PathSeqSAM
from pathseqsam.modeling.resolution import attach_model_mpp
from pathseqsam.modeling.settings import PathSeqSAMSettings

__all__ = ["MODEL_CONFIGS", "TINY_OVERRIDES", "build_pathseqsam", "instantiate_sam2", "sam2_hydra_overrides"]

logger = logging.getLogger(__name__)

# name -> SAM2 Hydra config (inside the sam2 package). SAM2.0 configs are accepted too.
MODEL_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
}

# A CPU-sized SAM2.1 (the overrides are checked against SAM2's constraints: channel list
# [8E, 4E, 2E, E], d_model divisible by 16, mem_dim dividing d_model, no global-attention block
# first in a stage). About 1.3 M parameters, 16 img/s training at 256 px on 2 cores.
TINY_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.d_model=64",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "++model.memory_attention.d_model=64",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=64",
    "++model.memory_attention.layer.dim_feedforward=128",
    "++model.memory_attention.layer.self_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.in_dim=64",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=64",
    "++model.memory_encoder.fuser.layer.dim=64",
    "++model.memory_encoder.fuser.num_layers=1",
)


def sam2_hydra_overrides(model: str, image_size: int, pathseqsam_class: bool = True) -> list[str]:
    """Hydra overrides turning a SAM2 config into a PathSeqSAM of ``image_size`` (public for the benchmark).

    Args:
        model: a key of :data:`MODEL_CONFIGS`.
        image_size: model input size; a multiple of 32 (SAM2's stride-16 features, 4x upsampled masks).
        pathseqsam_class: swap in PathSeqSAM and the distance-aware cross-attention.

    Returns:
        The override strings.
    """
    if model not in MODEL_CONFIGS:
        raise ValueError(f"model must be one of {sorted(MODEL_CONFIGS)}, got {model!r}")
    if image_size % 32 or image_size < 64:
        raise ValueError(
            f"image_size must be a multiple of 32 and >= 64 (SAM2's feature strides), got {image_size}"
        )
    feat = image_size // 16
    overrides = [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
        "++model.compile_image_encoder=false",
    ]
    if pathseqsam_class:
        overrides += [
            "++model._target_=pathseqsam.modeling.network.PathSeqSAM",
            "++model.memory_attention.layer.cross_attention._target_="
            "pathseqsam.modeling.distance_attention.DistanceAwareRoPEAttention",
        ]
    if model == "tiny":
        overrides += list(TINY_OVERRIDES)
    return overrides


def instantiate_sam2(
    model: str, image_size: int, pathseqsam_class: bool = True, **kwargs: Any
) -> torch.nn.Module:
    """Compose SAM2's Hydra config for ``model`` at ``image_size`` and instantiate it (random weights).

    Args:
        model: a key of :data:`MODEL_CONFIGS`.
        image_size: model input size (multiple of 32).
        pathseqsam_class: build PathSeqSAM (True) or SAM2's own ``SAM2Base`` (False, for comparisons).
        **kwargs: extra constructor arguments (PathSeqSAM's settings).

    Returns:
        The model.
    """
    import sam2  # noqa: F401  (initialises SAM2's Hydra config module)
    from hydra import compose
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = sam2_hydra_overrides(model, image_size, pathseqsam_class=pathseqsam_class)
    cfg = compose(config_name=MODEL_CONFIGS[model], overrides=overrides)
    OmegaConf.resolve(cfg)
    try:
        return instantiate(cfg.model, _recursive_=True, **kwargs)
    except InstantiationException as err:
        # Hydra wraps our own argument errors; surface them as they were raised
        if isinstance(err.__cause__, (ValueError, TypeError)):
            raise err.__cause__ from None
        raise


def build_pathseqsam(
    model: str = "sam2.1_hiera_t",
    image_size: int = 1024,
    checkpoint: str | os.PathLike | None = None,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    train_image_encoder: bool = False,
    frozen: Iterable[str] = (),
    device: str | torch.device | None = None,
    settings: PathSeqSAMSettings | None = None,
    model_mpp_um: float | None = None,
    **setting_overrides: Any,
) -> PathSeqSAM:
    """Build a PathSeqSAM network.

    Args:
        model: ``"sam2.1_hiera_t" | "sam2.1_hiera_s" | "sam2.1_hiera_b+" | "sam2.1_hiera_l"`` (or the
            SAM2.0 ``"sam2_hiera_*"``), or ``"tiny"`` (CPU-sized, random init, tests and demos).
        image_size: input size of the model (multiple of 32). Official weights were trained at
            1024 but load at any size (SAM2 interpolates its position embeddings).
        checkpoint: path to an official SAM2/SAM2.1 ``.pt`` (``{"model": state_dict}``) of the same
            config, or one written by :func:`pathseqsam.export_sam2_checkpoint`. None: random init.
        lora_rank: LoRA rank on the Hiera attention (paper: 8); 0 disables LoRA (encoder frozen
            unless ``train_image_encoder``).
        lora_alpha: LoRA alpha (default ``2 * lora_rank``).
        lora_dropout: dropout of the LoRA branch.
        train_image_encoder: fine-tune the whole image encoder (instead of LoRA only).
        frozen: extra parameter-name prefixes to freeze.
        device: where to put the model (default: CPU).
        model_mpp_um: the working resolution (micrometres per pixel of the images the network sees).
            Registered as the persistent buffer ``model_mpp_um`` after any SAM2 checkpoint is loaded,
            so it is saved with the weights and a state dict of another resolution is refused on
            load (:mod:`pathseqsam.modeling.resolution`). None: not recorded.
        settings: the network's memory and distance settings
            (:class:`~pathseqsam.modeling.settings.PathSeqSAMSettings`, documented there).
        **setting_overrides: fields of those settings by name (``memory_k=5``,
            ``distance_mode="multiplicative"``, ...), as the bundle's ``network_def`` passes them.

    Returns:
        The network, in train mode, with ``requires_grad`` set as described.

    Raises:
        TypeError: a keyword that is neither an argument above nor a settings field.
    """
    unknown = sorted(set(setting_overrides) - set(PathSeqSAMSettings.names()))
    if unknown:
        raise TypeError(
            f"build_pathseqsam got unknown arguments {unknown}; settings fields are {list(PathSeqSAMSettings.names())}"
        )
    base = (settings or PathSeqSAMSettings()).as_dict()
    settings = PathSeqSAMSettings(**{**base, **setting_overrides})
    net: PathSeqSAM = instantiate_sam2(model, image_size, **settings.as_dict())
    if checkpoint is not None:
        saved_mpp = load_sam2_checkpoint(net, checkpoint)
        logger.info("loaded SAM2 weights from %s", checkpoint)
        if saved_mpp is not None:  # an export of a trained PathSeqSAM: keep its resolution
            if model_mpp_um is not None and not math.isclose(saved_mpp, model_mpp_um, rel_tol=1e-3):
                raise ValueError(
                    f"{checkpoint} was trained at model_mpp_um={saved_mpp:g} um/px, not {model_mpp_um:g}; "
                    f"set model_mpp_um={saved_mpp:g} or use weights trained at {model_mpp_um:g} um/px"
                )
            model_mpp_um = saved_mpp
    if model_mpp_um is not None:
        attach_model_mpp(net, model_mpp_um)
    if lora_rank > 0:
        apply_lora(net, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
    configure_trainable(net, train_image_encoder=train_image_encoder, frozen=frozen)
    counts = trainable_summary(net)
    logger.info(
        "PathSeqSAM(%s, %d px): %d parameters, %d trainable (%.2f%%), %d LoRA",
        model,
        image_size,
        counts["total"],
        counts["trainable"],
        100 * counts["trainable_fraction"],
        counts["lora"],
    )
    if device is not None:
        net = net.to(device)
    return net
