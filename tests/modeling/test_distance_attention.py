"""Eq. 1: distance-aware cross-slice attention, checked against explicit softmax attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from pathseqsam.modeling.distance_attention import (
    DistanceAwareRoPEAttention,
    DistanceKernel,
    estimate_distances_from_features,
    pairwise_distances,
)

HEADS, DIM, KV = 2, 32, 16
SIDE = 4  # 4 x 4 query tokens
SLICES, PTR = 3, 5  # memory: 3 slices of 16 tokens + 5 object-pointer tokens (no RoPE)
ATTN_KW = dict(
    embedding_dim=DIM, num_heads=HEADS, kv_in_dim=KV, rope_k_repeat=True, feat_sizes=(SIDE, SIDE), dropout=0.0
)


def _attention(mode_seed: int = 0) -> DistanceAwareRoPEAttention:
    torch.manual_seed(mode_seed)
    attn = DistanceAwareRoPEAttention(**ATTN_KW)
    return attn.eval()


def _inputs(b: int = 2):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, SIDE * SIDE, DIM, generator=g)
    k = torch.randn(b, SLICES * SIDE * SIDE + PTR, KV, generator=g)
    v = torch.randn(b, SLICES * SIDE * SIDE + PTR, KV, generator=g)
    return q, k, v


def _explicit(attn, q, k, v, scale=None, bias=None):
    """Eq. 1 written out: logits matrix, times phi per key (or plus bias), softmax, weighted values."""
    qh = attn._separate_heads(attn.q_proj(q), HEADS)
    kh = attn._separate_heads(attn.k_proj(k), HEADS)
    vh = attn._separate_heads(attn.v_proj(v), HEADS)
    n_rope = kh.shape[2] - PTR
    qh, k_rope = apply_rotary_enc(qh, kh[:, :, :n_rope], freqs_cis=attn.freqs_cis, repeat_freqs_k=True)
    kh = torch.cat([k_rope, kh[:, :, n_rope:]], dim=2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])  # [B, h, Nq, Nk]
    if scale is not None:
        logits = logits * scale[:, None, None, :]
    if bias is not None:
        logits = logits + bias[:, None, None, :]
    out = torch.softmax(logits, dim=-1) @ vh
    return attn.out_proj(attn._recombine_heads(out))


def _per_token(per_slice: torch.Tensor) -> torch.Tensor:
    """[B, SLICES] -> [B, Nk]: each slice's value on its 16 tokens and, for the pointers, slice 0..."""
    tokens = per_slice.repeat_interleave(SIDE * SIDE, dim=1)
    ptr = per_slice[:, [0, 1, 2, 2, 1]]
    return torch.cat([tokens, ptr], dim=1)


def test_multiplicative_matches_explicit_eq1():
    attn = _attention()
    q, k, v = _inputs()
    kernel = DistanceKernel("multiplicative", 0.1)
    d = torch.tensor([[0.5, 2.0, 4.0], [1.0, 0.0, 3.0]])
    phi = _per_token(kernel.phi(d))
    np.testing.assert_allclose(kernel.phi(d).detach().numpy(), np.exp(-0.1 * d.numpy() ** 2), rtol=1e-6)
    with torch.no_grad(), attn.key_weighting(scale=phi):
        fused = attn(q, k, v, num_k_exclude_rope=PTR)
        explicit = _explicit(attn, q, k, v, scale=phi)
    assert (fused - explicit).abs().max().item() < 1e-5
    # and the weighting really changed the result
    with torch.no_grad():
        plain = attn(q, k, v, num_k_exclude_rope=PTR)
    assert (fused - plain).abs().max().item() > 1e-3


def test_additive_matches_explicit_bias():
    attn = _attention()
    q, k, v = _inputs()
    kernel = DistanceKernel("additive", 0.3)
    d = torch.tensor([[0.5, 2.0, 4.0], [1.0, 0.0, 3.0]])
    bias = _per_token(kernel.bias(d))
    np.testing.assert_allclose(kernel.bias(d).detach().numpy(), -0.3 * d.numpy() ** 2, rtol=1e-6)
    with torch.no_grad(), attn.key_weighting(bias=bias):
        fused = attn(q, k, v, num_k_exclude_rope=PTR)
        explicit = _explicit(attn, q, k, v, bias=bias)
    assert (fused - explicit).abs().max().item() < 1e-5


def test_unweighted_equals_sam2_rope_attention():
    """Outside key_weighting the subclass is SAM2's RoPEAttention, weight for weight."""
    attn = _attention()
    stock = RoPEAttention(**ATTN_KW).eval()
    stock.load_state_dict(attn.state_dict())
    q, k, v = _inputs()
    with torch.no_grad():
        diff = attn(q, k.clone(), v, num_k_exclude_rope=PTR) - stock(q, k.clone(), v, num_k_exclude_rope=PTR)
    assert diff.abs().max().item() < 1e-6


def _weight_of_far_slice(mode: str, logit: float, d_far: float) -> float:
    """One query token (RoPE is the identity at position 0) and two memory slices, identity projections.

    Slice A is at distance 0, slice B at ``d_far``; every key gives the same raw logit. The output's
    second channel is the total attention weight on B.
    """
    attn = DistanceAwareRoPEAttention(
        embedding_dim=4, num_heads=1, rope_k_repeat=True, feat_sizes=(1, 1)
    ).eval()
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    q = torch.tensor([[[1.0, 0, 0, 0]]])
    k = torch.tensor([[[2.0 * logit, 0, 0, 0]] * 4])  # q.k / sqrt(4) == logit
    v = torch.tensor([[[1.0, 0, 0, 0]] * 2 + [[0, 1.0, 0, 0]] * 2])  # tokens 0-1: A, 2-3: B
    kernel = DistanceKernel(mode, 0.1)
    d = torch.tensor([[0.0, 0.0, d_far, d_far]])
    weighting = {"scale": kernel.phi(d)} if mode == "multiplicative" else {"bias": kernel.bias(d)}
    with torch.no_grad(), attn.key_weighting(**weighting):
        return attn(q, k, v)[0, 0, 1].item()


def test_additive_and_multiplicative_differ_as_expected():
    # equal distances: both leave attention uniform
    assert _weight_of_far_slice("multiplicative", -2.0, 0.0) == pytest.approx(0.5)
    assert _weight_of_far_slice("additive", -2.0, 0.0) == pytest.approx(0.5)
    # additive always down-weights the far slice
    assert _weight_of_far_slice("additive", -2.0, 3.0) < 0.5
    assert _weight_of_far_slice("additive", 2.0, 3.0) < 0.5
    # multiplicative is a temperature: with positive logits the far slice loses weight ...
    assert _weight_of_far_slice("multiplicative", 2.0, 3.0) < 0.5
    # ... with negative logits its logits shrink towards 0 and it GAINS weight
    assert _weight_of_far_slice("multiplicative", -2.0, 3.0) > 0.5
    # exact value: softmax over logits [-2, -2, -2 phi, -2 phi]
    phi = math.exp(-0.1 * 9)
    expected = 2 * math.exp(-2 * phi) / (2 * math.exp(-2) + 2 * math.exp(-2 * phi))
    assert _weight_of_far_slice("multiplicative", -2.0, 3.0) == pytest.approx(expected, rel=1e-5)


def test_kernel_lambda_is_one_positive_parameter():
    kernel = DistanceKernel("multiplicative", 0.1)
    assert [n for n, _ in kernel.named_parameters()] == ["raw_lambda"]
    assert kernel.lam.item() == pytest.approx(0.1, rel=1e-6)
    with torch.no_grad():
        kernel.raw_lambda.fill_(-50.0)  # whatever the optimiser does, lambda stays > 0
    assert kernel.lam.item() > 0
    with pytest.raises(ValueError, match="distance_mode must be one of"):
        DistanceKernel("gaussian")
    with pytest.raises(ValueError, match="lambda must be > 0"):
        DistanceKernel("additive", 0.0)


def test_key_weighting_shape_is_checked():
    attn = _attention()
    q, k, v = _inputs()
    with (
        attn.key_weighting(scale=torch.ones(2, 7)),
        pytest.raises(ValueError, match=r"expected \[batch, keys\]"),
    ):
        attn(q, k, v, num_k_exclude_rope=PTR)


def test_pairwise_and_estimated_distances():
    query = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    keys = torch.tensor([[[3.0, 4.0], [0.0, 8.0]], [[1.0, 1.0], [float("nan"), 0.0]]])
    d = pairwise_distances(query, keys, unit_um=2.0)
    np.testing.assert_allclose(d[0].numpy(), [2.5, 4.0])
    assert d[1, 0].item() == 0.0 and math.isnan(d[1, 1].item())

    g = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(1, 3, 8, generator=g), dim=-1)
    adj = torch.tensor([0.25])
    est = estimate_distances_from_features(desc[:, 2], desc[:, :2], adj)
    cos = (desc[0, :2] @ desc[0, 2]).numpy()
    np.testing.assert_allclose(est[0].numpy(), (1 - cos) / 0.25, rtol=1e-5)
    # identical slices are at distance 0
    assert estimate_distances_from_features(desc[:, 0], desc[:, :1], adj).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_lambda_receives_gradient_through_network(make_tiny, images):
    for mode in ("multiplicative", "additive"):
        net = make_tiny(distance_mode=mode)
        positions = torch.tensor([[0.0, 4.0, 8.0, 14.0], [0.0, 3.0, 9.0, 12.0]])
        out = net(images, positions=positions, return_aux=True)
        loss = out["logits"].clamp(-20, 20).sigmoid().mean() + out["object_score_logits"].sum()
        loss.backward()
        grad = net.distance_kernel.raw_lambda.grad
        assert grad is not None and torch.isfinite(grad) and grad.abs().item() > 0, mode


def _heads(net, images, positions):
    """Object-score and IoU heads: they see the memory-conditioned features on every slice (the mask
    logits of a random-init model are often all SAM2's -1024 'no object' value)."""
    with torch.no_grad():
        out = net(images, positions=positions, return_aux=True)
    return torch.cat([out["object_score_logits"], out["iou_predictions"]], dim=1)


def test_distance_changes_network_output_and_none_mode_ignores_it(make_tiny, images):
    near = torch.tensor([[0.0, 4.0, 8.0, 12.0]] * 2)
    far = near * 10
    net = make_tiny(distance_mode="multiplicative").eval()
    a, b = _heads(net, images, near), _heads(net, images, far)
    # slice 0 has no memory: identical; later slices depend on the distances
    assert torch.equal(a[:, [0, 4]], b[:, [0, 4]])
    # (a random-init tiny model reacts weakly, but deterministically: same input -> same output)
    assert torch.equal(a, _heads(net, images, near))
    assert (a - b).abs().max().item() > 1e-6
    net = make_tiny(distance_mode="none").eval()
    assert not net.distance_kernel.raw_lambda.requires_grad
    assert torch.equal(_heads(net, images, near), _heads(net, images, far))


def test_missing_positions_use_feature_estimate(make_tiny, images):
    """NaN positions fall back to the estimator; a fully known sequence never calls it."""
    net = make_tiny().eval()
    calls = []
    import pathseqsam.modeling.network as network_module

    original = network_module.estimate_distances_from_features

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    network_module.estimate_distances_from_features = spy
    try:
        with torch.no_grad():
            net(images, positions=torch.tensor([[0.0, 4.0, 8.0, 12.0]] * 2))
            assert not calls
            out_nan = net(images, positions=torch.tensor([[0.0, float("nan"), 8.0, 12.0]] * 2))
            assert calls
            out_none = net(images)
    finally:
        network_module.estimate_distances_from_features = original
    # every logit finite (NaN included: it would fail isfinite), the gated ones exactly SAM2's -1024
    for out in (out_nan, out_none):
        assert torch.isfinite(out).all()
        assert ((out > -1000) | (out == NO_OBJ_SCORE)).all()


def _capture_cross_attention(net, layers=None):
    """Record every call of the memory cross-attention of ``layers``: inputs, key weighting, output."""
    calls: list[dict] = []
    handles = []
    for i, layer in enumerate(net.memory_attention.layers):
        if layers is not None and i not in layers:
            continue
        attn = layer.cross_attn_image

        def hook(mod, args, kwargs, output, i=i):
            calls.append(
                {"layer": i, **kwargs, "scale": mod._key_scale, "bias": mod._key_bias, "out": output}
            )

        handles.append(attn.register_forward_hook(hook, with_kwargs=True))
    return calls, handles


def _raw_logits(attn, q, k):
    """SAM2's scaled dot-product logits of one cross-attention call, before any distance weighting."""
    qh = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    kh = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    return qh, kh


def _explicit_call(attn, call, scale):
    """Eq. 1 written out for a captured call: logits times ``scale`` per key, softmax, values."""
    qh, kh = _raw_logits(attn, call["q"], call["k"])
    vh = attn._separate_heads(attn.v_proj(call["v"]), attn.num_heads)
    n_rope = kh.shape[2] - call["num_k_exclude_rope"]
    qh, k_rope = apply_rotary_enc(qh, kh[:, :, :n_rope], freqs_cis=attn.freqs_cis, repeat_freqs_k=True)
    kh = torch.cat([k_rope, kh[:, :, n_rope:]], dim=2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    if scale is not None:
        logits = logits * scale[:, None, None, :]
    return logits, attn.out_proj(attn._recombine_heads(torch.softmax(logits, dim=-1) @ vh))


def test_nearer_slice_gets_more_attention_where_logits_are_positive(make_tiny):
    """Eq. 1's direction inside the network. Slice 2 sits 4 um (1 unit) from slice 0 in both runs
    and either on slice 1 (d = 0) or 8 um from it (d = 2 units); slices 0 and 1 (the memory) are
    the same in both runs. For every query whose SAM2 logits to slice 1's tokens are all positive,
    the nearer slice 1 receives more attention. The multiplicative form is a temperature
    (documented in ``distance_attention``): where those logits are all negative, the nearer slice
    receives LESS attention, shown here with the query projection negated."""
    net = make_tiny().eval()
    x = torch.randn(1, 3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    attn = net.memory_attention.layers[0].cross_attn_image
    runs = {}
    for name, p2 in (("near", [4.0, 0.0]), ("far", [-4.0, 0.0])):
        calls, handles = _capture_cross_attention(net, layers={0})
        with torch.no_grad():
            net(x, positions=torch.tensor([[[0.0, 0.0], [4.0, 0.0], p2]]))
        for h in handles:
            h.remove()
        runs[name] = calls[-1]  # slice 2, the only one with two memory slices
    near, far = runs["near"], runs["far"]
    assert torch.equal(near["q"], far["q"]) and torch.equal(near["k"], far["k"])
    hw = 8 * 8
    ptr = (near["k"].shape[1] - 2 * hw) // 2  # object-pointer tokens per slice
    slice1 = torch.zeros(near["k"].shape[1], dtype=torch.bool)
    slice1[hw : 2 * hw] = True
    slice1[2 * hw + ptr :] = True
    # phi from the positions, independently: exp(-0.1 d^2), d in units of 4 um
    lam = net.distance_kernel.lam.item()
    for run, d1 in ((near, 0.0), (far, 2.0)):
        expected = torch.where(slice1, math.exp(-lam * d1**2), math.exp(-lam * 1.0**2))
        torch.testing.assert_close(run["scale"][0], expected)
    with torch.no_grad():
        _, fused_check = _explicit_call(attn, near, near["scale"])
        torch.testing.assert_close(fused_check, near["out"], atol=1e-5, rtol=1e-4)
        raw, _ = _explicit_call(attn, near, None)
        mass = {
            n: torch.softmax(raw * r["scale"][:, None, None, :], dim=-1)[..., slice1].sum(-1)
            for n, r in runs.items()
        }
        positive = (raw[..., slice1] > 0).all(-1)
        assert positive.sum() >= 5, positive.sum()  # a real set of queries, not a vacuous check
        assert (mass["near"][positive] > mass["far"][positive]).all()
        # the same queries with the logits' signs flipped (query projection negated)
        mass_neg = {
            n: torch.softmax(-raw * r["scale"][:, None, None, :], dim=-1)[..., slice1].sum(-1)
            for n, r in runs.items()
        }
        assert (mass_neg["near"][positive] < mass_neg["far"][positive]).all()
        with torch.no_grad():
            attn.q_proj.weight.neg_()
            attn.q_proj.bias.neg_()
            flipped, _ = _explicit_call(attn, near, None)
        torch.testing.assert_close(flipped, -raw)


def test_eq1_reaches_every_layer_of_the_official_sam21_tiny_config():
    """The 4-layer memory attention of SAM2.1 hiera-t (random init, 64 px for speed): in every
    layer the keys carry phi of the slices' distances (the layer's output is Eq. 1 recomputed
    by hand, and differs from SAM2's unweighted attention), and lambda gets a gradient from each
    layer's output."""
    from pathseqsam import build_pathseqsam

    torch.manual_seed(0)
    net = build_pathseqsam(model="sam2.1_hiera_t", image_size=64, lora_rank=0).eval()
    assert len(net.memory_attention.layers) == 4
    positions = torch.tensor([[0.0, 4.0, 12.0]])  # um; distance unit 4 um
    calls, handles = _capture_cross_attention(net)
    x = torch.randn(1, 3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    net(x, positions=positions)
    for h in handles:
        h.remove()
    last = [c for c in calls if c["k"].shape[1] > 2 * 16]  # slice 2: memory of slices 0 and 1
    assert sorted(c["layer"] for c in last) == [0, 1, 2, 3]
    lam = net.distance_kernel.lam
    hw, ptr = 4 * 4, 256 // 64  # 4x4 stride-16 tokens per slice; a 256-d pointer is 4 tokens of 64
    d = torch.tensor([3.0] * hw + [2.0] * hw + [3.0] * ptr + [2.0] * ptr)  # (12-0)/4, (12-4)/4
    expected_phi = torch.exp(-lam.detach() * d**2)
    for call in last:
        attn = net.memory_attention.layers[call["layer"]].cross_attn_image
        torch.testing.assert_close(call["scale"][0].detach(), expected_phi)
        with torch.no_grad():
            _, weighted = _explicit_call(attn, call, expected_phi[None])
            _, plain = _explicit_call(attn, call, None)
        torch.testing.assert_close(call["out"].detach(), weighted, atol=1e-4, rtol=1e-4)
        assert (call["out"].detach() - plain).abs().max() > 1e-4, call["layer"]
        (grad,) = torch.autograd.grad(
            call["out"].square().sum(), net.distance_kernel.raw_lambda, retain_graph=True
        )
        assert torch.isfinite(grad) and grad.abs() > 0, call["layer"]


def test_mixed_measured_and_missing_positions(make_tiny):
    """Positions known for some slices, NaN for others: each memory slice's phi uses the measured
    distance where both positions are known and the feature estimate otherwise, recomputed here
    from the network's own descriptors."""
    net = make_tiny().eval()
    nan = float("nan")
    pos = torch.tensor([[0.0, nan, 8.0, nan, 20.0]])
    x = torch.randn(1, 3, 5, 128, 128, generator=torch.Generator().manual_seed(4))
    calls, handles = _capture_cross_attention(net)
    with torch.no_grad():
        out = net(x, positions=pos, return_aux=True)
    for h in handles:
        h.remove()
    assert torch.isfinite(out["logits"]).all()
    desc = out["descriptors"][0].double()
    adj = [1.0 - float(desc[k] @ desc[k - 1]) for k in range(1, 5)]
    lam, unit, hw = net.distance_kernel.lam.item(), net.distance_unit_um, 8 * 8
    split = net.hidden_dim // net.mem_dim
    p = pos[0].tolist()
    used = {"measured": 0, "estimated": 0}
    for t, call in zip(range(1, 5), calls):  # one memory-attention layer: one call per slice >= 1
        mem = [j for j in out["memory_indices"][0, t].tolist() if j >= 0]
        assert mem == list(range(t))
        per_slice = []
        for j in mem:
            if math.isnan(p[t]) or math.isnan(p[j]):
                dist = max(0.0, 1.0 - float(desc[t] @ desc[j])) / (sum(adj[:t]) / t)
                used["estimated"] += 1
            else:
                dist = abs(p[t] - p[j]) / unit
                used["measured"] += 1
            per_slice.append(math.exp(-lam * dist**2))
        expected = torch.tensor(
            [v for v in per_slice for _ in range(hw)] + [v for v in per_slice for _ in range(split)]
        )
        torch.testing.assert_close(call["scale"][0], expected.float(), rtol=1e-4, atol=1e-6)
    assert used["measured"] >= 2 and used["estimated"] >= 4
