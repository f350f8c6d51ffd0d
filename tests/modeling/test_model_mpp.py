"""The working resolution travels with the weights and is checked whenever weights are loaded."""

from __future__ import annotations

import pytest
import torch

from pathseqsam.modeling.baselines import build_dynunet
from pathseqsam.modeling.lora import export_sam2_checkpoint
from pathseqsam.modeling.resolution import model_mpp_um_of


def test_state_dict_carries_model_mpp_and_a_different_one_is_refused(make_tiny):
    net = make_tiny(model_mpp_um=2.0)
    state = net.state_dict()
    assert state["model_mpp_um"].item() == 2.0
    same = make_tiny(seed=1, model_mpp_um=2.0)
    same.load_state_dict(state)  # same resolution: loads
    torch.testing.assert_close(same.state_dict()["no_mem_embed"], state["no_mem_embed"])
    other = make_tiny(seed=1, model_mpp_um=0.5)
    before = other.state_dict()["no_mem_embed"].clone()
    with pytest.raises(
        ValueError,
        match=r"trained at model_mpp_um=2 um/px but this network is configured for model_mpp_um=0\.5",
    ):
        other.load_state_dict(state)
    torch.testing.assert_close(other.state_dict()["no_mem_embed"], before)  # nothing loaded
    assert model_mpp_um_of(other) == 0.5


def test_a_state_dict_without_resolution_is_refused_when_strict(make_tiny):
    old = make_tiny(lora_rank=8).state_dict()  # as saved before the resolution was recorded
    net = make_tiny(model_mpp_um=2.0)
    with pytest.warns(UserWarning, match=r"has no 'model_mpp_um'.*works at 2 um/px"):
        with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "model_mpp_um"'):
            net.load_state_dict(old)
    with pytest.warns(UserWarning, match="has no 'model_mpp_um'"):
        net.load_state_dict(old, strict=False)  # explicitly lenient: loads the weights
    torch.testing.assert_close(net.state_dict()["no_mem_embed"], old["no_mem_embed"])
    assert model_mpp_um_of(net) == 2.0


def test_official_sam2_weights_still_load_and_exports_keep_their_resolution(make_tiny, tmp_path):
    from pathseqsam import build_pathseqsam

    stock = make_tiny(lora_rank=0).state_dict()
    del stock["distance_kernel.raw_lambda"]  # SAM2's own keys only
    ckpt = tmp_path / "sam2.pt"
    torch.save({"model": stock}, ckpt)
    net = build_pathseqsam(model="tiny", image_size=128, checkpoint=ckpt, model_mpp_um=0.5)
    assert model_mpp_um_of(net) == 0.5
    torch.testing.assert_close(net.state_dict()["no_mem_embed"], stock["no_mem_embed"])

    export = export_sam2_checkpoint(net, tmp_path / "export.pt")
    assert model_mpp_um_of(build_pathseqsam(model="tiny", image_size=128, checkpoint=export)) == 0.5
    with pytest.raises(ValueError, match=r"export\.pt was trained at model_mpp_um=0\.5 um/px, not 2"):
        build_pathseqsam(model="tiny", image_size=128, checkpoint=export, model_mpp_um=2.0)


def test_baselines_carry_it_too():
    net = build_dynunet(64, width="tiny", model_mpp_um=1.0)
    state = net.state_dict()
    assert state["model_mpp_um"].item() == 1.0
    with pytest.raises(ValueError, match="trained at model_mpp_um=1 um/px"):
        build_dynunet(64, width="tiny", model_mpp_um=0.25).load_state_dict(state)
    with pytest.raises(ValueError, match="positive number"):
        build_dynunet(64, width="tiny", model_mpp_um=0.0)
