"""``memory_selection="none"``: SAM2 per slice (the no-memory baseline)."""

from __future__ import annotations

import torch

from pathseqsam.losses import PathSeqSAMLoss
from pathseqsam.modeling.lora import trainable_summary
from pathseqsam.modeling.network import MEMORY_ONLY_PARAMETERS

# parameters of SAM2's mask-prompt path: unused by every prompt-free variant, with or without memory
MASK_PROMPT_PATH = ("mask_downsample.", "sam_prompt_encoder.mask_downscaling.")


def test_every_slice_is_segmented_alone(make_tiny, images):
    net = make_tiny(memory_selection="none").eval()
    with torch.no_grad():
        out = net(images, positions=torch.arange(4.0).expand(2, 4), return_aux=True)
        assert out["memory_indices"].shape == (2, 4, 0)  # no slice attended to any other
        for t in range(images.shape[2]):
            alone = net(images[:, :, t : t + 1], return_aux=True)
            torch.testing.assert_close(out["logits"][:, :, t], alone["logits"][:, :, 0])
            torch.testing.assert_close(out["object_score_logits"][:, t], alone["object_score_logits"][:, 0])
    # with memory, later slices do depend on earlier ones (object scores: random-init masks are gated)
    net_mem = make_tiny(memory_selection="topk").eval()
    with torch.no_grad():
        seq = net_mem(images, return_aux=True)["object_score_logits"]
        alone = net_mem(images[:, :, 3:4], return_aux=True)["object_score_logits"]
    assert not torch.allclose(seq[:, 3], alone[:, 0])


def test_memory_path_is_frozen_and_exactly_the_used_parameters_train(make_tiny, images):
    net = make_tiny(memory_selection="none", train_image_encoder=True, multimask_output=False)
    label = (torch.rand(2, 1, 4, 128, 128, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    loss = PathSeqSAMLoss()(net(images, positions=torch.arange(4.0).expand(2, 4), return_aux=True), label)
    loss.backward()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert with_grad <= trainable
    assert {n for n in trainable - with_grad if not n.startswith(MASK_PROMPT_PATH)} == set()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in net.named_parameters() if n.startswith(MEMORY_ONLY_PARAMETERS)}
    assert any(n.startswith("memory_attention.") for n in frozen)
    full = trainable_summary(make_tiny(train_image_encoder=True))
    counts = trainable_summary(net)
    assert counts["total"] == full["total"]
    assert counts["trainable"] == full["trainable"] - sum(
        p.numel() for n, p in net.named_parameters() if n.startswith(MEMORY_ONLY_PARAMETERS)
    )
