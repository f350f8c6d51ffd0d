"""PathSeqSAM in ``last`` mode is SAM2: same outputs as SAM2's own ``SAM2Base.track_step`` loop.

With ``memory_selection="last"``, ``distance_mode="none"``, no LoRA and the same weights, every
slice's mask logits and object score must equal those of SAM2's own model class driven frame by
frame as its video predictor drives it (``output_dict`` with ``cond_frame_outputs`` and
``non_cond_frame_outputs``, ``run_mem_encoder=True``). The reference is built from the same Hydra
config as SAM2's ``SAM2Base`` (``instantiate_sam2(..., pathseqsam_class=False)``) and loads
PathSeqSAM's state dict; it is driven in eval mode, and the predictor's storage shortcuts (memory
features kept in bfloat16, hole filling) are left out: they are not part of the model.
"""

from __future__ import annotations

import pytest
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base

from pathseqsam import build_pathseqsam
from pathseqsam.modeling.build import instantiate_sam2

SIZE = 128
TOL = 1e-5


def _pair(images: torch.Tensor, prompts: dict | None) -> tuple[torch.nn.Module, SAM2Base]:
    """A tiny PathSeqSAM (last, no distance, no LoRA) and SAM2's own class with the same weights.

    The object-score head is sharpened and centred on these inputs so that about half the slices
    say "object" and half "no object": masks are real logits on some slices, SAM2's -1024 on the
    others, and the no-object embeddings of the memory and the pointers are both exercised.
    """
    torch.manual_seed(0)
    net = build_pathseqsam(
        model="tiny", image_size=SIZE, lora_rank=0, memory_selection="last", distance_mode="none"
    ).eval()
    head = net.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        head.weight.mul_(30.0)
        scores = net(images, prompts=prompts, return_aux=True)["object_score_logits"]
        head.bias.sub_(scores.median())
    ref = instantiate_sam2("tiny", SIZE, pathseqsam_class=False).eval()
    assert type(ref) is SAM2Base
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("distance_kernel.")}
    ref.load_state_dict(state, strict=True)  # every SAM2 key, nothing else
    return net, ref


@torch.no_grad()
def _sam2_track(
    ref: SAM2Base, images: torch.Tensor, point_inputs: dict[int, dict], cond: set[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's frame loop on one sequence ``[1, 3, N, H, W]``: ``track_step`` per frame in order.

    Frame 0 is the initial conditioning frame; frames in ``cond`` are stored as conditioning
    frames (as the video predictor stores frames that received clicks), the rest as
    non-conditioning frames. Returns mask logits ``[1, 1, N, H, W]`` and object scores ``[1, N]``.
    """
    n = images.shape[2]
    output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    masks, scores = [], []
    for t in range(n):
        _, feats, vpos, feat_sizes = ref._prepare_backbone_features(ref.forward_image(images[:, :, t]))
        out = ref.track_step(
            frame_idx=t,
            is_init_cond_frame=t == 0,
            current_vision_feats=feats,
            current_vision_pos_embeds=vpos,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs.get(t),
            mask_inputs=None,
            output_dict=output_dict,
            num_frames=n,
            track_in_reverse=False,
            run_mem_encoder=True,
        )
        output_dict["cond_frame_outputs" if t == 0 or t in cond else "non_cond_frame_outputs"][t] = out
        masks.append(out["pred_masks_high_res"])
        scores.append(out["object_score_logits"][:, 0])
    return torch.stack(masks, dim=2), torch.stack(scores, dim=1)


def _points(*xy_labels: tuple[float, float, int]) -> dict[str, torch.Tensor]:
    return {
        "point_coords": torch.tensor([[[x, y] for x, y, _ in xy_labels]]),
        "point_labels": torch.tensor([[lab for _, _, lab in xy_labels]], dtype=torch.int32),
    }


def _assert_equal_to_sam2(out: dict, ref_masks: torch.Tensor, ref_scores: torch.Tensor) -> float:
    diff = max(
        (out["logits"] - ref_masks).abs().max().item(),
        (out["object_score_logits"] - ref_scores).abs().max().item(),
    )
    assert diff <= TOL, diff
    # not an empty comparison: some slices predict an object (real logits), some do not (-1024)
    assert (ref_scores > 0).any() and (ref_scores < 0).any()
    assert (ref_masks > NO_OBJ_SCORE).any()
    return diff


def _images(n: int, batch: int = 1, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, n, SIZE, SIZE, generator=g)


def test_box_on_first_slice_equals_sam2_track_step():
    """N = 12 > 7: the six memory slots are full and wrap (frames t-6..t-1), slice 0 stays."""
    n = 12
    x = _images(n)
    boxes = torch.full((1, n, 4), float("nan"))
    boxes[0, 0] = torch.tensor([20.0, 30.0, 90.0, 100.0])
    net, ref = _pair(x, {"boxes": boxes})
    with torch.no_grad():
        out = net(x, prompts={"boxes": boxes}, return_aux=True)
    ref_masks, ref_scores = _sam2_track(ref, x, {0: _points((20.0, 30.0, 2), (90.0, 100.0, 3))}, set())
    _assert_equal_to_sam2(out, ref_masks, ref_scores)
    mem = out["memory_indices"][0]
    assert [j for j in mem[11].tolist() if j >= 0] == [0, 5, 6, 7, 8, 9, 10]

    # the memory matters here, so equality is not a property of any network: without memory,
    # and with Eq. 2's selection, the later slices differ from SAM2 by far more than the tolerance
    for other in ({"memory_selection": "none"}, {"memory_selection": "topk", "memory_k": 2}):
        for key, value in other.items():
            setattr(net, key, value)
        with torch.no_grad():
            alt = net(x, prompts={"boxes": boxes}, return_aux=True)
        gap = (alt["object_score_logits"] - ref_scores).abs().max().item()
        assert gap > 100 * TOL, (other, gap)


def test_points_on_two_slices_and_a_long_sequence_equal_sam2():
    """A click on slice 0 (SAM2's 3-mask output) and one on slice 8 (a second conditioning frame
    inside the window: it takes no place among the last six); N = 20 > memory_pool_size (16), so
    the bank evicts and the 15 object pointers SAM2 reads are all there."""
    n = 20
    x = _images(n)
    coords = torch.zeros(1, n, 1, 2)
    labels = torch.full((1, n, 1), -1)
    coords[0, 0, 0], labels[0, 0, 0] = torch.tensor([60.0, 50.0]), 1
    coords[0, 8, 0], labels[0, 8, 0] = torch.tensor([30.0, 70.0]), 1
    prompts = {"point_coords": coords, "point_labels": labels}
    net, ref = _pair(x, prompts)
    assert net.memory_pool_size < n
    with torch.no_grad():
        out = net(x, prompts=prompts, return_aux=True)
    ref_masks, ref_scores = _sam2_track(
        ref, x, {0: _points((60.0, 50.0, 1)), 8: _points((30.0, 70.0, 1))}, cond={8}
    )
    _assert_equal_to_sam2(out, ref_masks, ref_scores)
    mem = out["memory_indices"][0]
    assert [j for j in mem[14].tolist() if j >= 0] == [0, 8, 9, 10, 11, 12, 13]  # 8 is in as prompted
    assert [j for j in mem[19].tolist() if j >= 0] == [0, 8, 13, 14, 15, 16, 17, 18]


def test_prompt_free_sequence_equals_sam2_with_unprompted_first_frame():
    """Prompt-free, the first slice is SAM2's initial conditioning frame (no prompt): kept in
    memory with the conditioning slot encoding after the six recent slices have moved on."""
    n = 10
    x = _images(n, seed=4)
    net, ref = _pair(x, None)
    with torch.no_grad():
        out = net(x, return_aux=True)
    ref_masks, ref_scores = _sam2_track(ref, x, {}, set())
    _assert_equal_to_sam2(out, ref_masks, ref_scores)
    assert [j for j in out["memory_indices"][0, 9].tolist() if j >= 0] == [0, 3, 4, 5, 6, 7, 8]


def test_batch_elements_with_different_prompted_slices_equal_sam2_each():
    """Element 0 is clicked on slices 0 and 8, element 1 on slice 0 only: from slice 15 on,
    element 0 keeps one memory slice more than element 1, whose padding must be masked out."""
    n = 17
    x = _images(n, batch=2, seed=5)
    coords = torch.zeros(2, n, 1, 2)
    labels = torch.full((2, n, 1), -1)
    coords[:, 0, 0] = torch.tensor([[60.0, 50.0], [40.0, 80.0]])
    labels[:, 0, 0] = 1
    coords[0, 8, 0], labels[0, 8, 0] = torch.tensor([30.0, 70.0]), 1
    prompts = {"point_coords": coords, "point_labels": labels}
    net, ref = _pair(x, prompts)
    with torch.no_grad():
        out = net(x, prompts=prompts, return_aux=True)
    mem = out["memory_indices"][:, 16].tolist()
    assert [j for j in mem[0] if j >= 0] == [0, 8, 10, 11, 12, 13, 14, 15]
    assert [j for j in mem[1] if j >= 0] == [0, 10, 11, 12, 13, 14, 15]
    # element 1's decoder sees element 0's slice-8 click as a padding point (label -1), as SAM2
    # would if handed the same point_inputs; slice 8 is not a conditioning frame for it
    per_element = [
        ({0: _points((60.0, 50.0, 1)), 8: _points((30.0, 70.0, 1))}, {8}),
        ({0: _points((40.0, 80.0, 1)), 8: _points((0.0, 0.0, -1))}, set()),
    ]
    for b, (points, cond) in enumerate(per_element):
        ref_masks, ref_scores = _sam2_track(ref, x[b : b + 1], points, cond)
        one = {
            "logits": out["logits"][b : b + 1],
            "object_score_logits": out["object_score_logits"][b : b + 1],
        }
        _assert_equal_to_sam2(one, ref_masks, ref_scores)


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_distance_weighting_is_the_only_difference_left(mode):
    """With Eq. 1 on (``distance_mode`` != none) and ``phi = 1`` (lambda -> 0), ``last`` mode is
    SAM2 again: the distance kernel adds nothing else."""
    n = 9
    x = _images(n, seed=6)
    boxes = torch.full((1, n, 4), float("nan"))
    boxes[0, 0] = torch.tensor([10.0, 20.0, 100.0, 110.0])
    net, ref = _pair(x, {"boxes": boxes})
    net.distance_kernel.mode = mode
    with torch.no_grad():
        net.distance_kernel.raw_lambda.fill_(-30.0)  # softplus(-30) ~ 1e-13
        out = net(
            x,
            positions=torch.arange(n, dtype=torch.float32)[None] * 4.0,
            prompts={"boxes": boxes},
            return_aux=True,
        )
    ref_masks, ref_scores = _sam2_track(ref, x, {0: _points((10.0, 20.0, 2), (100.0, 110.0, 3))}, set())
    _assert_equal_to_sam2(out, ref_masks, ref_scores)
