"""PathSeqSAM network: SAM2 building and checkpoints, LoRA, distance-aware attention, adaptive memory."""

from __future__ import annotations

from pathseqsam.modeling.adaptive_memory import MemoryBank, adaptive_memory_scores, select_memory
from pathseqsam.modeling.build import MODEL_CONFIGS, build_pathseqsam
from pathseqsam.modeling.checkpoint import load_sam2_checkpoint, read_sam2_state_dict
from pathseqsam.modeling.distance_attention import DistanceAwareRoPEAttention, DistanceKernel
from pathseqsam.modeling.lora import (
    apply_lora,
    configure_trainable,
    export_sam2_checkpoint,
    lora_module_names,
    merge_lora,
    trainable_summary,
)
from pathseqsam.modeling.network import PathSeqSAM
from pathseqsam.modeling.settings import PathSeqSAMSettings

__all__ = [
    "MODEL_CONFIGS",
    "DistanceAwareRoPEAttention",
    "DistanceKernel",
    "MemoryBank",
    "PathSeqSAM",
    "PathSeqSAMSettings",
    "adaptive_memory_scores",
    "apply_lora",
    "build_pathseqsam",
    "configure_trainable",
    "export_sam2_checkpoint",
    "load_sam2_checkpoint",
    "lora_module_names",
    "merge_lora",
    "read_sam2_state_dict",
    "select_memory",
    "trainable_summary",
]
