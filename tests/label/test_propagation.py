"""Prompts on some slices, propagated both ways: checked against direct forward/backward passes."""

from __future__ import annotations

import pytest
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from pathseqsam.label.propagation import prompted_slices, propagate_both_ways, select_prompts


@pytest.fixture
def net(make_tiny):
    """Tiny model whose object-score head says 'object' (a random one blanks every mask)."""
    model = make_tiny().eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    return model


def _click_prompts(n: int, slices: list[int]) -> dict[str, torch.Tensor]:
    coords = torch.zeros(1, n, 1, 2)
    labels = torch.full((1, n, 1), -1)
    for k, t in enumerate(slices):
        coords[0, t, 0] = torch.tensor([30.0 + 20 * k, 70.0])
        labels[0, t, 0] = 1
    return {"point_coords": coords, "point_labels": labels}


def test_one_prompted_slice_forward_after_backward_before(net):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(1, 3, 5, 128, 128, generator=g)
    positions = torch.tensor([[0.0, 4.0, 9.0, 13.0, 20.0]])
    prompts = _click_prompts(5, [2])
    with torch.no_grad():
        out = propagate_both_ways(net, images, positions, prompts)
        fwd = net(
            images[:, :, 2:], positions=positions[:, 2:], prompts={k: v[:, 2:] for k, v in prompts.items()}
        )
        back = [2, 1, 0]
        bwd = net(
            images[:, :, back],
            positions=positions[:, back],
            prompts={k: v[:, back] for k, v in prompts.items()},
        )
        auto = net(images, positions=positions)
    assert out.shape == (1, 1, 5, 128, 128)
    torch.testing.assert_close(out[:, :, 2:], fwd)
    torch.testing.assert_close(out[:, :, 1], bwd[:, :, 1])
    torch.testing.assert_close(out[:, :, 0], bwd[:, :, 2])
    torch.testing.assert_close(bwd[:, :, 0], fwd[:, :, 0])  # the prompted slice is the same in both passes
    assert (out > NO_OBJ_SCORE).all()  # not a blanked (trivially equal) output
    assert not torch.allclose(out[:, :, 2], auto[:, :, 2])  # the click changed its slice
    assert not torch.allclose(out[:, :, 0], auto[:, :, 0])  # ... and reached an earlier one


def test_several_prompted_slices_take_the_nearer_pass(net):
    g = torch.Generator().manual_seed(4)
    images = torch.randn(1, 3, 6, 128, 128, generator=g)
    prompts = _click_prompts(6, [1, 4])
    assert prompted_slices(prompts) == [1, 4]
    with torch.no_grad():
        out = propagate_both_ways(net, images, None, prompts)
        fwd = net(images[:, :, 1:], prompts=select_prompts(prompts, torch.arange(1, 6)))  # slices 1..5
        back = torch.arange(4, -1, -1)
        bwd = net(images[:, :, back], prompts=select_prompts(prompts, back)).flip(2)  # slices 0..4
    for t, source in [(0, "b"), (1, "f"), (2, "f"), (3, "b"), (4, "f"), (5, "f")]:
        expected = fwd[:, :, t - 1] if source == "f" else bwd[:, :, t]
        torch.testing.assert_close(out[:, :, t], expected, msg=f"slice {t}")


def test_boxes_count_as_prompts_and_no_prompt_is_an_error(net):
    boxes = torch.full((1, 3, 4), float("nan"))
    boxes[0, 1] = torch.tensor([10.0, 10.0, 60.0, 60.0])
    assert prompted_slices({"boxes": boxes}) == [1]
    with pytest.raises(ValueError, match="at least one prompted slice"):
        propagate_both_ways(
            net, torch.zeros(1, 3, 3, 128, 128), None, {"boxes": torch.full((1, 3, 4), float("nan"))}
        )
