"""``PathSeqSAM.iter_slice_stream``: a sequence fed chunk by chunk equals the stacked sequence."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("chunk_sizes", [(1, 1, 1, 1, 1, 1), (2, 3, 1)])
def test_stream_matches_iter_slices(make_tiny, chunk_sizes):
    net = make_tiny(encoder_chunk=2).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(1, 3, 6, 128, 128, generator=g)
    positions = torch.stack([torch.arange(6.0) * 100.0, torch.arange(6.0) % 2 * 50.0], -1)[None]
    with torch.no_grad():
        whole = [s["logits"] for s in net.iter_slices(images, positions)]
        chunks, c0 = [], 0
        for m in chunk_sizes:
            chunks.append(images[:, :, c0 : c0 + m])
            c0 += m
        streamed = [s["logits"] for s in net.iter_slice_stream(iter(chunks), positions, num_slices=6)]
    assert len(streamed) == 6
    for a, b in zip(whole, streamed):
        torch.testing.assert_close(a, b)


def test_stream_checks_the_count(make_tiny):
    net = make_tiny().eval()
    x = torch.randn(1, 3, 2, 128, 128)
    with torch.no_grad(), pytest.raises(ValueError, match="held 2 slices, expected num_slices=3"):
        list(net.iter_slice_stream([x], None, num_slices=3))
    with torch.no_grad(), pytest.raises(ValueError, match="more than num_slices=1"):
        list(net.iter_slice_stream([x], None, num_slices=1))
