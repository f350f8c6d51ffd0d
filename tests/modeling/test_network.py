"""PathSeqSAM forward: shapes, N = 1, resizing, heads exposed, bad input, bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE


def test_sequence_shapes_and_aux(make_tiny, images):
    net = make_tiny().eval()
    with torch.no_grad():
        out = net(images, positions=torch.zeros(2, 4, 2), return_aux=True)
    assert out["logits"].shape == (2, 1, 4, 128, 128)
    assert out["object_score_logits"].shape == (2, 4)
    assert out["iou_predictions"].shape == (2, 4)
    assert out["descriptors"].shape == (2, 4, 64)
    assert out["image_features"].shape == (2, 4, 64, 8, 8)
    # SAM2 semantics: where the object score says "no object", the mask is NO_OBJ_SCORE
    logits, obj = out["logits"], out["object_score_logits"]
    for b in range(2):
        for t in range(4):
            if obj[b, t] <= 0:
                assert torch.all(logits[b, 0, t] == NO_OBJ_SCORE)
            else:
                assert torch.all(logits[b, 0, t] > NO_OBJ_SCORE)


def test_training_sees_ungated_masks(make_tiny, images):
    """In training the logits are the decoder's raw masks (upsampled), not SAM2's -1024 wherever the
    object score is negative; eval mode keeps SAM2's gating. Checked against the decoder's output
    captured independently, on a network whose object score is forced negative."""
    net = make_tiny(seed=1)
    with torch.no_grad():
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)
    raw = []  # (masks [B, M, h, w], ious [B, M]) per slice
    hook = net.sam_mask_decoder.register_forward_hook(
        lambda _m, _i, out: raw.append((out[0].detach(), out[1].detach()))
    )
    torch.manual_seed(0)
    out = net(images[:1, :, :2], return_aux=True)
    hook.remove()
    assert (out["object_score_logits"] < 0).all()
    assert raw[0][0].shape[1] == 3  # SAM2.1: 3 masks, picked by the IoU head
    best = [m[:, int(iou.argmax())][:, None] for m, iou in raw]  # highest predicted IoU, as SAM2
    expected = torch.stack(
        [torch.nn.functional.interpolate(m.float(), size=(128, 128), mode="bilinear") for m in best], dim=2
    )
    torch.testing.assert_close(out["logits"].detach(), expected)
    assert (out["logits"] > NO_OBJ_SCORE).all()
    out["logits"].mean().backward()  # the mask head learns even while the object score says "none"
    grad = net.sam_mask_decoder.output_upscaling[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0

    net.eval()
    with torch.no_grad():
        gated = net(images[:1, :, :2])
    assert torch.all(gated == NO_OBJ_SCORE)


def test_single_slice_inputs(make_tiny):
    net = make_tiny().eval()
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        y4 = net(x)
        y5 = net(x.unsqueeze(2))
    assert y4.shape == (3, 1, 128, 128)
    assert y5.shape == (3, 1, 1, 128, 128)
    assert torch.equal(y4, y5[:, :, 0])


def test_other_input_size_is_resized(make_tiny):
    net = make_tiny().eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 2, 96, 160), return_aux=True)
    assert out["logits"].shape == (1, 1, 2, 96, 160)


def test_training_changes_masks_when_object_present(make_tiny):
    """Gradients reach the mask decoder once the object score is pushed positive (the SAM2 trap)."""
    net = make_tiny(image_size=128)
    x = torch.randn(1, 3, 2, 128, 128)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(15):
        out = net(x, return_aux=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            out["object_score_logits"], torch.ones_like(out["object_score_logits"])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = net(x, return_aux=True)
    assert (out["object_score_logits"] > 0).all()
    assert (out["logits"] > NO_OBJ_SCORE).all()
    out["logits"].mean().backward()
    grad = net.sam_mask_decoder.output_upscaling[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": torch.randn(1, 1, 2, 128, 128)}, "3 \\(RGB\\) channels"),
        ({"images": torch.randn(3, 128, 128)}, r"\[B, 3, N, H, W\]"),
        ({"images": torch.randn(1, 3, 2, 128, 128), "positions": torch.zeros(1, 3)}, "positions must be"),
        ({"images": torch.randn(1, 3, 2, 128, 128), "positions": torch.zeros(1, 2, 4)}, "positions must be"),
        ({"images": torch.randn(1, 3, 2, 128, 128), "prompts": {"clicks": torch.zeros(1)}}, "unknown keys"),
        ({"images": torch.randn(1, 3, 2, 128, 128), "prompts": {"boxes": torch.zeros(1, 2, 2)}}, "boxes"),
    ],
)
def test_bad_input_is_named(make_tiny, kwargs, message):
    net = make_tiny().eval()
    with pytest.raises(ValueError, match=message):
        net(**kwargs)


def test_bad_settings_are_named(make_tiny):
    with pytest.raises(ValueError, match="memory_selection must be one of"):
        make_tiny(memory_selection="random")
    with pytest.raises(ValueError, match="distance_unit_um must be > 0"):
        make_tiny(distance_unit_um=0)
    with pytest.raises(ValueError, match="memory_pool_size=4 must be >= 15"):
        make_tiny(memory_pool_size=4)
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        make_tiny(image_size=100)
    with pytest.raises(ValueError, match="model must be one of"):
        make_tiny(model="sam3")


def test_point_prompts_accepted(make_tiny):
    net = make_tiny().eval()
    coords = torch.tensor([[[[64.0, 64.0]], [[0.0, 0.0]]]])  # [B=1, N=2, P=1, 2]
    labels = torch.tensor([[[1], [-1]]])
    with torch.no_grad():
        a = net(
            torch.zeros(1, 3, 2, 128, 128),
            prompts={"point_coords": coords, "point_labels": labels},
            return_aux=True,
        )
        b = net(torch.zeros(1, 3, 2, 128, 128), return_aux=True)
    assert not torch.equal(a["iou_predictions"][:, 0], b["iou_predictions"][:, 0])


def test_bf16_autocast_on_cpu_matches_fp32(make_tiny, images):
    """The CUDA path uses bf16 autocast; on CPU the same autocast must not mix dtypes, must really
    compute in bf16, and must give fp32's answer within bf16's precision (8 mantissa bits)."""
    net = make_tiny().eval()
    with torch.no_grad():  # object score forced positive: real mask logits on every slice
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    positions = torch.tensor([[0.0, 4.0, 8.0, 12.0]] * 2)
    dtypes = []
    hook = net.memory_attention.layers[0].cross_attn_image.q_proj.register_forward_hook(
        lambda _m, _i, out: dtypes.append(out.dtype)
    )
    with torch.no_grad():
        ref = net(images, positions=positions, return_aux=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(images, positions=positions, return_aux=True)
    hook.remove()
    assert dtypes[0] == torch.float32 and torch.bfloat16 in dtypes  # the memory path ran in bf16
    assert out["logits"].dtype == torch.float32
    for key in ("logits", "object_score_logits", "iou_predictions"):
        assert torch.isfinite(out[key]).all(), key
    assert (ref["logits"] > NO_OBJ_SCORE).all()
    diff = (out["logits"] - ref["logits"]).abs()
    assert 0 < diff.max() <= 0.2 * ref["logits"].std(), (diff.max(), ref["logits"].std())  # measured: 0.07
    torch.testing.assert_close(out["object_score_logits"], ref["object_score_logits"], rtol=0.01, atol=0.05)
    torch.testing.assert_close(out["iou_predictions"], ref["iou_predictions"], rtol=0.01, atol=0.01)


def test_streaming_and_chunked_encoding_match_forward(make_tiny, images):
    net = make_tiny().eval()
    positions = torch.tensor([[0.0, 4.0, 8.0, 12.0]] * 2)
    with torch.no_grad():
        full = net(images, positions=positions)
        streamed = torch.stack([s["logits"] for s in net.iter_slices(images, positions=positions)], dim=2)
        net.encoder_chunk = 3  # batches slices through the encoder: same numbers
        chunked = net(images, positions=positions)
    assert torch.equal(full, streamed)
    assert (full - chunked).abs().max().item() < 1e-3
