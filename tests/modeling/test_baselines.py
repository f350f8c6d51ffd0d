"""2D baselines: nnU-Net topology rule, filters, the slice-wise wrapper, DynUNet and SwinUNETR builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pathseqsam.modeling.baselines import (
    build_dynunet,
    build_swinunetr,
    nnunet_filters,
    nnunet_kernels_strides,
)
from pathseqsam.modeling.slicewise import SliceWise


def test_nnunet_topology_isotropic_2d():
    kernels, strides = nnunet_kernels_strides((256, 256), (1.0, 1.0))
    # halve while an axis has >= 8 pixels: 256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4
    assert strides == [[1, 1]] + [[2, 2]] * 6
    assert kernels == [[3, 3]] * 7
    kernels, strides = nnunet_kernels_strides((64, 96), (0.5, 0.5))
    # 64 -> 4 after 4 halvings; 96 -> 6 after 4, and 6 < 8 stops that axis as well
    assert strides == [[1, 1]] + [[2, 2]] * 4
    assert len(kernels) == len(strides)


def test_nnunet_topology_anisotropic_axis_waits():
    # axis 0 is 4x coarser: not downsampled (and kernel 1) until the spacing ratio is <= 2; an axis
    # under 8 pixels stops while the other goes on
    kernels, strides = nnunet_kernels_strides((32, 128), (4.0, 1.0))
    assert strides == [[1, 1], [1, 2], [2, 2], [2, 2], [2, 2], [1, 2]]
    assert kernels == [[1, 3]] + [[3, 3]] * 5
    sizes = [32, 128]
    for s in strides:
        sizes = [a // b for a, b in zip(sizes, s)]
    assert sizes == [4, 4]


def test_nnunet_topology_errors_are_named():
    # 36 -> 18 -> 9: still >= 8 pixels but odd
    with pytest.raises(ValueError, match="axis 0 has 9 voxels at level 2"):
        nnunet_kernels_strides((36, 64), (1.0, 1.0))
    with pytest.raises(ValueError, match="need the same length"):
        nnunet_kernels_strides((64, 64), (1.0,))
    with pytest.raises(ValueError, match="must be positive"):
        nnunet_kernels_strides((64, 64), (1.0, 0.0))


def test_nnunet_filters():
    assert nnunet_filters(7) == [32, 64, 128, 256, 512, 512, 512]
    assert nnunet_filters(4, base=8, max_filters=64) == [8, 16, 32, 64]
    with pytest.raises(ValueError, match="levels >= 1"):
        nnunet_filters(0)


class _Recorder(nn.Module):
    """A 2D 'network' that records its input shapes and returns a per-pixel function of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return (x * self.w.view(1, 3, 1, 1)).sum(1, keepdim=True)


def test_slicewise_folds_slices_into_the_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, 12, generator=g)
    net = _Recorder()
    out = SliceWise(net)(x, positions=torch.zeros(2, 5, 1))
    assert net.shapes == [(10, 3, 8, 12)]
    assert out.shape == (2, 1, 5, 8, 12)
    for b in range(2):
        for t in range(5):
            torch.testing.assert_close(out[b, :, t], net(x[b : b + 1, :, t])[0])
    aux = SliceWise(net)(x, return_aux=True)
    assert set(aux) == {"logits"} and torch.equal(aux["logits"], out)
    # chunked calls give the same result
    chunked = SliceWise(_Recorder(), slice_chunk=3)
    torch.testing.assert_close(chunked(x), out)
    assert chunked.net.shapes == [(3, 3, 8, 12)] * 3 + [(1, 3, 8, 12)]
    # single slices pass straight through
    assert torch.equal(SliceWise(net)(x[:, :, 0]), out[:, :, 0])


def test_slicewise_refuses_prompts_and_bad_input():
    wrapped = SliceWise(_Recorder())
    with pytest.raises(ValueError, match="without prompts; got prompts \\['boxes'\\]"):
        wrapped(torch.zeros(1, 3, 2, 8, 8), prompts={"boxes": torch.zeros(1, 2, 4)})
    with pytest.raises(ValueError, match=r"\[B, C, N, H, W\]"):
        wrapped(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="slice_chunk"):
        SliceWise(_Recorder(), slice_chunk=0)


@pytest.mark.parametrize("builder", [build_dynunet, build_swinunetr])
def test_baseline_builders_run_on_sequences(builder):
    torch.manual_seed(0)
    net = builder(64, width="tiny")
    x = torch.randn(1, 3, 2, 64, 64)
    out = net(x, positions=torch.zeros(1, 2, 1), return_aux=True)
    assert out["logits"].shape == (1, 1, 2, 64, 64)
    out["logits"].mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="width must be one of"):
        builder(64, width="huge")


def test_dynunet_topology_follows_the_rule():
    net = build_dynunet(128, width="tiny").net
    kernels, strides = nnunet_kernels_strides((128, 128), (1.0, 1.0))
    assert [list(s) for s in net.strides] == strides
    assert [list(k) for k in net.kernel_size] == kernels
    assert list(net.filters) == nnunet_filters(len(strides), 8, 64)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_swinunetr(80)


def test_loss_without_sam2_heads_needs_those_terms_off():
    from pathseqsam.losses import PathSeqSAMLoss

    out = {"logits": torch.zeros(1, 1, 2, 8, 8)}
    label = torch.zeros(1, 1, 2, 8, 8)
    label[0, 0, 0, :4] = 1  # slice 0: 32 of 64 pixels; slice 1 empty
    expected_missing = (
        r"image_features \(consistency_weight\), object_score_logits \(object_weight\), iou_predictions"
    )
    with pytest.raises(KeyError, match=expected_missing):
        PathSeqSAMLoss()(out, label)
    loss = PathSeqSAMLoss(consistency_weight=0.0, object_weight=0.0, iou_weight=0.0)(out, label)
    # probabilities 0.5 everywhere: Dice of slice 0 = 2 * 16 / (32 + 32), BCE = ln 2
    dice = 1 - (2 * 16 + 1e-5) / (32 + 32 + 1e-5)
    assert float(loss) == pytest.approx(dice + 0.5 * np.log(2), rel=1e-5)
