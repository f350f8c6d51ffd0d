"""Each loss term against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathseqsam.losses import PathSeqSAMLoss, consistency_loss, mask_iou


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce(logit, target):
    return np.mean(np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit))))


def _consistency(p: np.ndarray, f: np.ndarray) -> float:
    """The consistency term written out: over every pair of slices i < j of every sequence, squared
    probability differences weighted by the clipped feature cosine, normalised by the weights."""
    num = den = 0.0
    for b in range(p.shape[0]):
        for i in range(p.shape[1]):
            for j in range(i + 1, p.shape[1]):
                fi, fj = f[b, i], f[b, j]
                cos = (fi * fj).sum(0) / (np.linalg.norm(fi, axis=0) * np.linalg.norm(fj, axis=0))
                s = np.maximum(cos, 0)
                num += (s * (p[b, i] - p[b, j]) ** 2).sum()
                den += s.sum()
    return num / den


def test_consistency_matches_explicit_pair_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 4, 5, generator=g)
    feats = torch.randn(2, 3, 6, 4, 5, generator=g)
    got = consistency_loss(probs, feats).item()
    assert got == pytest.approx(_consistency(probs.numpy(), feats.numpy()), rel=1e-5)
    # agreeing slices cost nothing; a single slice has nothing to agree with
    assert consistency_loss(probs[:, :1].repeat(1, 3, 1, 1), feats).item() == pytest.approx(0.0, abs=1e-7)
    assert consistency_loss(probs[:, :1], feats[:, :1]).item() == 0.0


def test_consistency_ignores_dissimilar_regions():
    probs = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # [B=1, N=2, 1, 2]
    feats = torch.zeros(1, 2, 2, 1, 2)
    feats[0, 0, 0] = 1.0  # slice 0: features along channel 0 everywhere
    feats[0, 1, 0, 0, 0] = 1.0  # slice 1 alike at the first position ...
    feats[0, 1, 1, 0, 1] = 1.0  # ... orthogonal at the second
    # only the first position counts: its difference is 1, its weight 1
    assert consistency_loss(probs, feats).item() == pytest.approx(1.0)


def test_mask_iou():
    logits = torch.full((1, 1, 2, 4, 4), -5.0)
    logits[0, 0, 0, :2, :2] = 5.0  # 4 px predicted
    label = torch.zeros(1, 1, 2, 4, 4)
    label[0, 0, 0, :2, :] = 1.0  # 8 px true, 4 overlap
    iou = mask_iou(logits, label)
    assert iou[0, 0].item() == pytest.approx(0.5)
    assert iou[0, 1].item() == 1.0  # both empty


def _output(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 3, 8, 8, generator=g) * 3
    logits[1, 0, 2] = -1024.0  # SAM2's "no object" value on one slice
    label = (torch.rand(2, 1, 3, 8, 8, generator=g) > 0.6).float()
    label[0, 0, 1] = 0.0  # an empty slice
    out = {
        "logits": logits,
        "object_score_logits": torch.randn(2, 3, generator=g),
        "iou_predictions": torch.rand(2, 3, generator=g),
        "image_features": torch.randn(2, 3, 4, 2, 2, generator=g),
    }
    return out, label


def test_total_loss_is_the_weighted_sum_of_independent_terms():
    out, label = _output()
    loss_fn = PathSeqSAMLoss(
        dice_weight=1.0, bce_weight=0.5, consistency_weight=0.2, object_weight=1.0, iou_weight=1.0
    )
    total = loss_fn(out, label).item()
    lg = out["logits"].numpy().clip(-20, 20)
    lb = label.numpy()
    # Dice over slices with foreground only
    dices = []
    for b in range(2):
        for t in range(3):
            if lb[b, 0, t].max() > 0:
                p = _sigmoid(lg[b, 0, t])
                dices.append(1 - (2 * (p * lb[b, 0, t]).sum() + 1e-5) / (p.sum() + lb[b, 0, t].sum() + 1e-5))
    dice = float(np.mean(dices))
    bce = _bce(lg, lb)
    has_fg = lb.reshape(2, 3, -1).max(-1) > 0
    obj = _bce(out["object_score_logits"].numpy(), has_fg.astype(np.float32))
    pred = out["logits"].numpy() > 0
    gt = lb > 0.5
    inter = (pred & gt).reshape(2, 3, -1).sum(-1)
    union = (pred | gt).reshape(2, 3, -1).sum(-1)
    iou_t = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    iou = np.abs(out["iou_predictions"].numpy() - iou_t).mean()
    terms = loss_fn.last_terms
    assert terms["dice"] == pytest.approx(dice, rel=1e-4)
    assert terms["bce"] == pytest.approx(bce, rel=1e-4)
    assert terms["object"] == pytest.approx(obj, rel=1e-4)
    assert terms["iou"] == pytest.approx(iou, rel=1e-4)
    # consistency: probabilities averaged over each 4 x 4 block (8 x 8 -> the 2 x 2 feature grid)
    probs = _sigmoid(lg[:, 0]).reshape(2, 3, 2, 4, 2, 4).mean(axis=(3, 5))
    cons = _consistency(probs, out["image_features"].numpy().astype(np.float64))
    assert cons > 1e-3  # a real term here, not zero == zero
    assert terms["consistency"] == pytest.approx(cons, rel=1e-4)
    assert total == pytest.approx(dice + 0.5 * bce + 0.2 * cons + obj + iou, rel=1e-4)


def test_no_object_logits_do_not_explode_and_zero_weights_drop_terms():
    out, label = _output()
    out["logits"][:] = -1024.0
    loss_fn = PathSeqSAMLoss(consistency_weight=0.0, object_weight=0.0, iou_weight=0.0)
    value = loss_fn(out, label)
    assert torch.isfinite(value) and value.item() < 30
    assert set(loss_fn.last_terms) == {"dice", "bce"}


def test_gradients_flow_and_bad_inputs_are_named():
    out, label = _output()
    out = {k: v.clone().requires_grad_(True) for k, v in out.items()}
    PathSeqSAMLoss()(out, label).backward()
    assert out["object_score_logits"].grad.abs().sum() > 0
    assert out["iou_predictions"].grad.abs().sum() > 0
    with pytest.raises(TypeError, match="return_aux=True dict"):
        PathSeqSAMLoss()(torch.zeros(1, 1, 2, 8, 8), label)
    with pytest.raises(ValueError, match="label shape"):
        PathSeqSAMLoss()(out, label[:, :, :2])
