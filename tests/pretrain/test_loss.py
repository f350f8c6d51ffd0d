"""SAM2's loss, checked against a direct per-pixel computation."""

from __future__ import annotations

import math

import pytest
import torch

from pathseqsam.pretrain.loss import SAM2_LOSS_WEIGHTS, sam2_frame_loss


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _reference(logits, target):
    """Focal (alpha 0.25, gamma 2), Dice with +1 smoothing, IoU of logits > 0 for one 2x2 mask (lists)."""
    focal, inter, psum, tsum, pi, pu = 0.0, 0.0, 0.0, 0.0, 0, 0
    for x, t in zip(logits, target):
        p = _sigmoid(x)
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        focal += (0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2
        inter, psum, tsum = inter + p * t, psum + p, tsum + t
        pi += int(x > 0 and t > 0)
        pu += int(x > 0 or t > 0)
    dice = 1 - (2 * inter + 1) / (psum + tsum + 1)
    return focal / len(logits), dice, pi / max(pu, 1)


def test_single_mask_terms_match_the_reference():
    logits = [2.0, -1.0, 0.5, -3.0]
    target = [1.0, 1.0, 0.0, 0.0]
    masks = torch.tensor(logits).view(1, 1, 2, 2)
    gt = torch.tensor(target).view(1, 1, 2, 2)
    terms = sam2_frame_loss(masks, torch.tensor([[0.9]]), torch.tensor([[1.5]]), gt)
    focal, dice, iou = _reference(logits, target)
    assert terms["mask"].item() == pytest.approx(focal, rel=1e-5)
    assert terms["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert terms["iou"].item() == pytest.approx(
        abs(0.9 - iou), rel=1e-5
    )  # IoU of [T,F,T,F] vs [T,T,F,F] = 1/3
    assert terms["class"].item() == pytest.approx(-math.log(_sigmoid(1.5)), rel=1e-5)
    expected = 20 * focal + dice + abs(0.9 - iou) - math.log(_sigmoid(1.5))
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)
    assert SAM2_LOSS_WEIGHTS == {"mask": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}


def test_focal_weight_enters_the_total_and_the_candidate_choice():
    target = [1.0, 0.0, 0.0, 0.0]
    # candidate 0: low focal, poor Dice (all low logits); candidate 1: high focal, good Dice
    candidates = [[-1.0, -6.0, -6.0, -6.0], [4.0, 1.0, -6.0, -6.0]]
    refs = [_reference(c, target) for c in candidates]
    masks = torch.tensor(candidates).view(1, 2, 2, 2)
    args = (masks, torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0]]), torch.tensor(target).view(1, 1, 2, 2))
    for weight in (20.0, 1.0):
        best = min(range(2), key=lambda i: weight * refs[i][0] + refs[i][1])
        terms = sam2_frame_loss(*args, focal_weight=weight)
        assert terms["mask"].item() == pytest.approx(refs[best][0], rel=1e-5)
        assert terms["dice"].item() == pytest.approx(refs[best][1], rel=1e-5)
        expected = weight * refs[best][0] + refs[best][1] + terms["iou"].item() + terms["class"].item()
        assert terms["total"].item() == pytest.approx(expected, rel=1e-5)
    picks = {min(range(2), key=lambda i, w=w: w * refs[i][0] + refs[i][1]) for w in (20.0, 1.0)}
    assert picks == {0, 1}  # the example does tell the weights apart


def test_multimask_supervises_the_best_candidate_and_every_iou():
    target = [1.0, 1.0, 0.0, 0.0]
    candidates = [[-4.0, -4.0, 4.0, 4.0], [4.0, 4.0, -4.0, -4.0], [0.0, 0.0, 0.0, 0.0]]
    masks = torch.tensor(candidates).view(1, 3, 2, 2)
    ious = torch.tensor([[0.2, 0.7, 0.1]])
    terms = sam2_frame_loss(masks, ious, torch.tensor([[3.0]]), torch.tensor(target).view(1, 1, 2, 2))
    focal, dice, _ = _reference(candidates[1], target)  # the right one
    assert terms["mask"].item() == pytest.approx(focal, rel=1e-5)
    assert terms["dice"].item() == pytest.approx(dice, rel=1e-5)
    actual = [0.0, 1.0, 0.0]  # IoU of each candidate's logits > 0 (0 > 0 is False)
    assert terms["iou"].item() == pytest.approx(sum(abs(a - b) for a, b in zip([0.2, 0.7, 0.1], actual)) / 3)


def test_absent_object_only_trains_the_object_score_and_objects_are_averaged():
    masks = torch.tensor([[[[3.0, 3.0], [3.0, 3.0]]], [[[2.0, -2.0], [-2.0, 2.0]]]])
    gt = torch.zeros(2, 1, 2, 2)
    gt[1, 0, 0, 0] = 1.0
    scores = torch.tensor([[-2.0], [0.5]])
    terms = sam2_frame_loss(masks, torch.tensor([[0.5], [0.5]]), scores, gt)
    focal1, dice1, iou1 = _reference([2.0, -2.0, -2.0, 2.0], [1.0, 0.0, 0.0, 0.0])
    assert terms["mask"].item() == pytest.approx(focal1 / 2, rel=1e-5)  # object 0 is absent: no mask term
    assert terms["dice"].item() == pytest.approx(dice1 / 2, rel=1e-5)
    assert terms["iou"].item() == pytest.approx(abs(0.5 - iou1) / 2, rel=1e-5)
    bce = -math.log(1 - _sigmoid(-2.0)) - math.log(_sigmoid(0.5))
    assert terms["class"].item() == pytest.approx(bce / 2, rel=1e-5)


def test_gradients_reach_the_mask_logits():
    masks = torch.zeros(2, 3, 8, 8, requires_grad=True)
    gt = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    sam2_frame_loss(masks, torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 1), gt)["total"].backward()
    assert masks.grad.abs().sum() > 0
