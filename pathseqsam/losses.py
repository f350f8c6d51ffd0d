"""PathSeqSAM's training loss: ``L = L_dice + 0.5 L_BCE + 0.2 L_consistency`` plus SAM2's head terms.

Terms (weights are constructor arguments, set in the bundle's ``train.json``):

* ``L_dice``: soft Dice per slice (per patch, as the metric; MONAI ``DiceLoss``), averaged over the
  slices whose ground truth has foreground. On an empty slice soft Dice is ~1 for any non-zero
  probability map, so it would only add a constant-gradient push; "nothing here" is learned by the
  object-score term instead (as in SAM2, whose mask losses only count frames with the object).
* ``L_BCE``: binary cross-entropy on the mask logits.
* ``L_consistency``: for every pair of slices ``(i, j)`` of a window, the squared difference of their
  predicted probabilities at the image-encoder resolution (stride 16), weighted per position by the
  (detached, non-negative) cosine similarity of their image-encoder features there, normalised by
  the total weight. Slices are only asked to agree where they look alike: unaligned regions of
  neighbouring sections, whose features differ, are left alone.
* ``L_object`` (added, weight 1 as in SAM2's trainer): BCE of SAM2's object-score logit against "this
  slice has foreground". SAM2.1 overwrites the mask logits with -1024 wherever that logit is
  negative, which blocks every gradient to the mask; without this term prompt-free training stalls
  (loss 50-80 and Dice 0 were seen). The mask logits are also clamped to ``[-logit_clamp, logit_clamp]``
  before BCE so those -1024 values do not explode it.
* ``L_iou`` (added, weight 1 as in SAM2's trainer): L1 between SAM2's predicted IoU and the IoU of its
  own thresholded mask. Eq. 2's confidence uses that prediction, so it must mean something.

The network must be called with ``return_aux=True``; the loss takes its dict and the label
``[B, 1, N, H, W]``. The last call's terms are kept in ``last_terms`` for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

__all__ = ["PathSeqSAMLoss", "consistency_loss", "mask_iou"]


def mask_iou(logits: Tensor, label: Tensor) -> Tensor:
    """IoU of ``logits > 0`` with ``label`` per slice: ``[B, 1, N, H, W]`` -> ``[B, N]`` (1 when both empty)."""
    pred = logits > 0
    gt = label > 0.5
    inter = (pred & gt).flatten(3).sum(-1).float()[:, 0]
    union = (pred | gt).flatten(3).sum(-1).float()[:, 0]
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def consistency_loss(probs: Tensor, features: Tensor) -> Tensor:
    """Similarity-weighted disagreement between all slice pairs of each window.

    Args:
        probs: ``[B, N, h, w]`` foreground probabilities at the feature resolution.
        features: ``[B, N, C, h, w]`` image-encoder features (detached inside).

    Returns:
        Scalar: ``sum_{i<j,p} s_ij(p) (P_i(p) - P_j(p))^2 / sum_{i<j,p} s_ij(p)`` with
        ``s_ij(p) = max(0, cos(f_i(p), f_j(p)))``; 0 for single-slice windows.
    """
    n = probs.shape[1]
    if n < 2:
        return probs.sum() * 0.0
    f = F.normalize(features.detach().float(), dim=2)
    i, j = torch.triu_indices(n, n, offset=1, device=probs.device)
    sim = (f[:, i] * f[:, j]).sum(2).clamp_min(0.0)  # [B, pairs, h, w]
    diff = (probs[:, i] - probs[:, j]) ** 2
    return (sim * diff).sum() / sim.sum().clamp_min(1e-6)


class PathSeqSAMLoss(nn.Module):
    """``dice_weight * L_dice + bce_weight * L_BCE + consistency_weight * L_cons + object_weight * L_obj + iou_weight * L_iou``.

    Args:
        dice_weight: weight of the per-slice soft Dice (paper: 1).
        bce_weight: weight of the BCE (paper: 0.5).
        consistency_weight: weight of the cross-slice consistency (paper: 0.2).
        object_weight: weight of SAM2's object-score BCE (SAM2 trainer: 1; see the module docstring).
        iou_weight: weight of SAM2's IoU-prediction L1 (SAM2 trainer: 1).
        logit_clamp: clamp of mask logits before BCE/Dice.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 0.5,
        consistency_weight: float = 0.2,
        object_weight: float = 1.0,
        iou_weight: float = 1.0,
        logit_clamp: float = 20.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "dice": dice_weight,
            "bce": bce_weight,
            "consistency": consistency_weight,
            "object": object_weight,
            "iou": iou_weight,
        }
        self.logit_clamp = logit_clamp
        # per-slice Dice: slices are moved into the batch dimension, batch=False keeps them apart
        self.dice = DiceLoss(sigmoid=True, batch=False, smooth_nr=1e-5, smooth_dr=1e-5)
        self.last_terms: dict[str, float] = {}

    def forward(self, output: dict[str, Tensor], label: Tensor) -> Tensor:
        """Total loss.

        Args:
            output: the network's ``return_aux=True`` dict.
            label: ``[B, 1, N, H, W]`` binary mask.

        Returns:
            Scalar loss.
        """
        if not isinstance(output, dict) or "logits" not in output:
            raise TypeError(
                "PathSeqSAMLoss needs the network's return_aux=True dict (keys logits, object_score_logits, ...)"
            )
        needed = {"consistency": "image_features", "object": "object_score_logits", "iou": "iou_predictions"}
        missing = [
            f"{key} ({term}_weight)"
            for term, key in needed.items()
            if self.weights[term] and key not in output
        ]
        if missing:
            raise KeyError(
                f"PathSeqSAMLoss: the network output has no {', '.join(missing)}; a network without SAM2's "
                "heads (e.g. a 2D baseline) must be trained with those weights set to 0"
            )
        logits = output["logits"].float()
        if logits.ndim == 4:  # [B, 1, H, W] single slices
            logits, label = logits.unsqueeze(2), label.unsqueeze(2)
        if label.shape != logits.shape:
            raise ValueError(f"label shape {tuple(label.shape)} != logits shape {tuple(logits.shape)}")
        label = label.float()
        clamped = logits.clamp(-self.logit_clamp, self.logit_clamp)
        b, _, n, h, w = clamped.shape
        has_fg = label.flatten(3).amax(-1)[:, 0] > 0.5  # [B, N]
        fg = has_fg.reshape(b * n)
        flat_logits = clamped.transpose(1, 2).reshape(b * n, 1, h, w)[fg]
        flat_label = label.transpose(1, 2).reshape(b * n, 1, h, w)[fg]
        terms = {
            "dice": self.dice(flat_logits, flat_label) if bool(fg.any()) else clamped.sum() * 0.0,
            "bce": F.binary_cross_entropy_with_logits(clamped, label),
        }
        if self.weights["consistency"]:
            feats = output["image_features"]  # [B, N, C, hf, wf]
            probs = F.adaptive_avg_pool2d(torch.sigmoid(clamped).flatten(0, 2), feats.shape[-2:]).view(
                b, n, *feats.shape[-2:]
            )
            terms["consistency"] = consistency_loss(probs, feats)
        if self.weights["object"]:
            terms["object"] = F.binary_cross_entropy_with_logits(
                output["object_score_logits"].float(), has_fg.float()
            )
        if self.weights["iou"]:
            target = mask_iou(logits.detach(), label)
            terms["iou"] = F.l1_loss(output["iou_predictions"].float(), target)
        total = sum(self.weights[k] * v for k, v in terms.items())
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return total
