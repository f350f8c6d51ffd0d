"""SequenceEnsembleInferer: mirrors and both slice orders, checked against closed forms."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pathseqsam.engine import SequenceEnsembleInferer


def _running_sum(x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """An order-dependent "network": slice t's logits are the sum of channel 0 over slices 0..t."""
    return x[:, :1].cumsum(dim=2)


def test_bidirectional_averages_forward_and_backward_passes() -> None:
    x = torch.randn(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    ens = SequenceEnsembleInferer(mirror_axes=(), bidirectional=True)
    out = ens(x, _running_sum)
    forward = x[:, :1].cumsum(2)  # slice t sees 0..t
    backward = x[:, :1].flip(2).cumsum(2).flip(2)  # slice t sees t..N-1
    expected = (torch.sigmoid(forward) + torch.sigmoid(backward)) / 2
    assert ens.num_passes == 2
    torch.testing.assert_close(torch.sigmoid(out), expected, atol=1e-6, rtol=0)


def test_mirrors_average_every_subset_of_axes() -> None:
    ramp = torch.linspace(-2.0, 3.0, 8)  # not mirror-symmetric, so every mirror differs

    def skewed(x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, :1] * ramp.view(1, 1, 1, 1, 8) + 0.5 * ramp.view(1, 1, 1, 8, 1)

    x = torch.randn(1, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    ens = SequenceEnsembleInferer(mirror_axes=(-1, -2), bidirectional=False)
    out = ens(x, skewed)
    w, h = ramp.view(1, 1, 1, 1, 8), ramp.view(1, 1, 1, 8, 1)
    c = x[:, :1]
    passes = [
        c * w + 0.5 * h,  # identity
        c * w.flip(-1) + 0.5 * h,  # width mirrored: the ramp runs the other way in the original frame
        c * w + 0.5 * h.flip(-2),  # height mirrored
        c * w.flip(-1) + 0.5 * h.flip(-2),  # both
    ]
    expected = torch.stack([torch.sigmoid(p) for p in passes]).mean(0)
    assert ens.num_passes == 4
    torch.testing.assert_close(torch.sigmoid(out), expected, atol=1e-6, rtol=0)


def test_equivariant_network_is_unchanged() -> None:
    x = torch.randn(1, 3, 4, 6, 6, generator=torch.Generator().manual_seed(2))

    def pointwise(x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return 3.0 * x[:, :1] - x[:, 1:2]

    out = SequenceEnsembleInferer(bidirectional=True)(x, pointwise)
    # compared as probabilities: the logit of a probability clipped to [eps, 1 - eps] saturates
    torch.testing.assert_close(torch.sigmoid(out), torch.sigmoid(pointwise(x)), atol=1e-6, rtol=0)


def test_positions_are_reversed_with_the_slices() -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recorder(x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((x[0, 0, :, 0, 0].clone(), positions.clone()))
        return x[:, :1]

    x = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 3, 4, 2, 2).contiguous()
    positions = torch.tensor([[0.0, 5.0, 12.0, 20.0]])
    SequenceEnsembleInferer(mirror_axes=(), bidirectional=True)(x, recorder, positions=positions)
    (fwd_x, fwd_pos), (bwd_x, bwd_pos) = seen
    assert fwd_x.tolist() == [0, 1, 2, 3] and fwd_pos.tolist() == [[0, 5, 12, 20]]
    assert bwd_x.tolist() == [3, 2, 1, 0] and bwd_pos.tolist() == [[20, 12, 5, 0]]


def test_gated_logits_stay_background() -> None:
    """SAM2 writes -1024 where it sees no object; the ensemble keeps those pixels below 0.5."""
    x = torch.zeros(1, 3, 2, 4, 4)
    out = SequenceEnsembleInferer()(x, lambda x, positions=None: torch.full_like(x[:, :1], -1024.0))
    assert torch.isfinite(out).all() and (torch.sigmoid(out) < 1e-5).all()


def test_wraps_sliding_window_with_the_tiny_model(make_tiny) -> None:
    net = make_tiny(image_size=64).eval()
    with torch.no_grad():  # object score positive: masks are not SAM2's constant -1024 "no object"
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    x = torch.randn(1, 3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0.0, 4.0, 8.0]])
    sw = SlidingWindowInferer(roi_size=(-1, 64, 64), sw_batch_size=1, overlap=0.25, mode="gaussian")

    def run(flip: tuple[int, ...], reverse: bool) -> torch.Tensor:
        """One pass by hand: transform, MONAI's sliding window, transform back."""
        dims = flip + ((2,) if reverse else ())
        xin = torch.flip(x, dims) if dims else x
        out = sw(xin, net, positions=positions.flip(1) if reverse else positions)
        return torch.sigmoid((torch.flip(out, dims) if dims else out).float())

    with torch.no_grad():
        single = SequenceEnsembleInferer(sw, mirror_axes=(), bidirectional=False)(x, net, positions=positions)
        both = SequenceEnsembleInferer(sw, mirror_axes=(-1,), bidirectional=True)(x, net, positions=positions)
        plain = run((), False)
        expected = torch.stack([plain, run((4,), False), run((), True), run((4,), True)]).mean(0)
    assert both.shape == single.shape == (1, 1, 3, 96, 96)
    torch.testing.assert_close(torch.sigmoid(single), plain, atol=1e-5, rtol=0)  # one pass: the plain inferer
    torch.testing.assert_close(torch.sigmoid(both), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(both, single, atol=1e-3)  # the extra passes changed something


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mirror_axes": (2,)}, "in-plane axes"), ({"mirror_axes": (-1, 4)}, "distinct")],
)
def test_bad_axes_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequenceEnsembleInferer(**kwargs)


def test_training_prompts_and_2d_inputs_are_refused() -> None:
    ens = SequenceEnsembleInferer()
    x = torch.zeros(1, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="return_aux"):
        ens(x, _running_sum, return_aux=True)
    with pytest.raises(ValueError, match="does not transform prompts"):
        ens(x, _running_sum, prompts={"boxes": torch.zeros(1, 2, 4)})
    with pytest.raises(ValueError, match=r"\[B, C, N, H, W\].*\(1, 3, 4, 4\)"):
        ens(torch.zeros(1, 3, 4, 4), _running_sum)


@pytest.mark.parametrize("ensemble", [False, True])
def test_bundle_switch_wraps_the_sliding_window(ensemble: bool) -> None:
    """``ensemble`` in train.json (validation/evaluation) and inference.json picks the inferer."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[2] / "bundle" / "configs"
    for files, key in (
        ([configs / "train.json", configs / "evaluate.json"], "validate#inferer"),
        ([configs / "inference.json"], "inferer"),
    ):
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        parser["ensemble"] = ensemble
        inferer = parser.get_parsed_content(key)
        inner = inferer.inferer if ensemble else inferer
        assert isinstance(inferer, SequenceEnsembleInferer) == ensemble, (files, key)
        assert isinstance(inner, SlidingWindowInferer)
        assert list(inner.roi_size) == [-1, parser["image_size"], parser["image_size"]]
        if ensemble:
            assert inferer.num_passes == 4 and not inferer.bidirectional
