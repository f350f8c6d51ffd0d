"""SAM2's training loss for one frame: ``20 focal + 1 dice + 1 IoU-L1 + 1 object score``.

The terms and their reduction follow SAM2's trainer (``training/loss_fns.py``,
``MultiStepMultiMasksAndIous`` with the SAM2.1 training config: focal alpha 0.25, gamma 2;
``supervise_all_iou``; L1 IoU loss; object score by plain BCE), which cannot be imported here (its
module pulls in the whole trainer): with several candidate masks only the one with the lowest
``20 focal + dice`` is supervised, the IoU head on all of them; mask and IoU terms count only where
the object is present; every term is summed over objects and divided by their number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SAM2_LOSS_WEIGHTS", "sam2_frame_loss"]

SAM2_LOSS_WEIGHTS = {"mask": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}


def sam2_frame_loss(
    multimasks: Tensor,
    ious: Tensor,
    object_score_logits: Tensor,
    target: Tensor,
    focal_weight: float = SAM2_LOSS_WEIGHTS["mask"],
) -> dict[str, Tensor]:
    """One frame's (or one correction step's) loss terms.

    Args:
        multimasks: ``[B, M, H, W]`` mask logits (M = 1 or 3 candidates) at the target's resolution.
        ious: ``[B, M]`` predicted IoUs.
        object_score_logits: ``[B, 1]``.
        target: ``[B, 1, H, W]`` binary ground truth.
        focal_weight: weight of the focal term (SAM2's 20 by default), in the candidate choice too.

    Returns:
        ``{"mask", "dice", "iou", "class", "total"}`` scalars (``total`` weighted by
        :data:`SAM2_LOSS_WEIGHTS`, the focal term by ``focal_weight``).
    """
    target = target.float().expand_as(multimasks)
    n = float(max(multimasks.shape[0], 1))
    prob = multimasks.sigmoid()
    ce = F.binary_cross_entropy_with_logits(multimasks, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    focal = (0.25 * target + 0.75 * (1 - target)) * ce * (1 - p_t) ** 2
    focal = focal.flatten(2).mean(-1) / n  # [B, M]
    p, t = prob.flatten(2), target.flatten(2)
    dice = (1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)) / n  # [B, M]
    pred, gt = multimasks.flatten(2) > 0, t > 0
    actual = (pred & gt).sum(-1).float() / (pred | gt).sum(-1).float().clamp_min(1.0)
    iou = F.l1_loss(ious.float(), actual, reduction="none") / n  # [B, M]
    present = gt[:, 0].any(-1).float()  # [B]
    cls = (
        F.binary_cross_entropy_with_logits(object_score_logits.float().reshape(-1), present, reduction="sum")
        / n
    )
    if multimasks.shape[1] > 1:
        best = torch.argmin(focal * focal_weight + dice * SAM2_LOSS_WEIGHTS["dice"], dim=1)
        rows = torch.arange(multimasks.shape[0], device=multimasks.device)
        focal, dice, iou = focal[rows, best], dice[rows, best], iou.mean(1)
    else:
        focal, dice, iou = focal[:, 0], dice[:, 0], iou[:, 0]
    terms = {
        "mask": (focal * present).sum(),
        "dice": (dice * present).sum(),
        "iou": (iou * present).sum(),
        "class": cls,
    }
    weights = {**SAM2_LOSS_WEIGHTS, "mask": focal_weight}
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms
