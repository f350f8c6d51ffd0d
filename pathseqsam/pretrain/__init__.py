"""SAM2's pretraining at CPU scale, on synthetic tissue that is not the task.

``scripts/pretrain_tiny_sam2.py`` runs it. Modules:

* :mod:`~pathseqsam.pretrain.objects`: instance masks of every structure of the tissue model, tracked
  through a stack;
* :mod:`~pathseqsam.pretrain.samples`: H&E stacks at random resolutions from the pretraining seeds;
* :mod:`~pathseqsam.pretrain.loss`: SAM2's loss (focal, Dice, IoU, object score);
* :mod:`~pathseqsam.pretrain.trainer`: the loop (prompts on one frame, propagation through memory),
  resumable state and SAM2's checkpoint format.
"""

from __future__ import annotations

from pathseqsam.pretrain.trainer import PretrainConfig, pretrain, save_sam2_checkpoint

__all__ = ["PretrainConfig", "pretrain", "save_sam2_checkpoint"]
