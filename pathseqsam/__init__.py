"""PathSeqSAM: glomerulus segmentation with SAM2, treating the slices of one subject as a video.

The heavy parts (SAM2, peft) are imported lazily, so ``import pathseqsam`` (and the data
subpackage) stays cheap; ``from pathseqsam import build_pathseqsam`` pulls in the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "SAM2_PIXEL_MEAN",
    "SAM2_PIXEL_STD",
    "PathSeqSAM",
    "__version__",
    "build_pathseqsam",
    "config_flag",
    "export_sam2_checkpoint",
    "merge_lora",
    "token_budget_um",
]

# SAM2 normalises RGB in [0, 1] with the ImageNet statistics (sam2.utils.transforms.SAM2Transforms).
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)

_LAZY = {
    "config_flag": "pathseqsam.config_values",
    "PathSeqSAM": "pathseqsam.modeling.network",
    "build_pathseqsam": "pathseqsam.modeling.build",
    "export_sam2_checkpoint": "pathseqsam.modeling.lora",
    "merge_lora": "pathseqsam.modeling.lora",
    "token_budget_um": "pathseqsam.modeling.memory_compression",
}

if TYPE_CHECKING:  # pragma: no cover
    from pathseqsam.config_values import config_flag
    from pathseqsam.modeling.build import build_pathseqsam
    from pathseqsam.modeling.lora import export_sam2_checkpoint, merge_lora
    from pathseqsam.modeling.memory_compression import token_budget_um
    from pathseqsam.modeling.network import PathSeqSAM


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pathseqsam' has no attribute {name!r}")
