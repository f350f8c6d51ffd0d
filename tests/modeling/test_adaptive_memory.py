"""Eq. 2: top-K memory by cos(F_j, F_t) * Conf(y_j), prompted slices kept, bounded bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathseqsam.modeling.adaptive_memory import (
    MemoryBank,
    MemoryEntry,
    adaptive_memory_scores,
    select_memory,
    select_recent,
)


def test_select_memory_on_constructed_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2], [0.8, 0.1, 0.6, 0.3, 0.9]])
    none = torch.zeros(2, 5, dtype=torch.bool)
    assert select_memory(scores, none, k=2).tolist() == [[1, 3], [0, 4]]
    assert select_memory(scores, none, k=9).tolist() == [[0, 1, 2, 3, 4]] * 2
    # a prompted slice is always kept, whatever its score; element 1 has none, so it gets its next best
    cond = torch.tensor([[True, False, False, False, False], [False] * 5])
    assert select_memory(scores, cond, k=2).tolist() == [[0, 1, 3], [0, 2, 4]]
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_memory(scores, none, k=0)


def test_select_recent_is_sam2s_window():
    """SAM2's frames for slice t = 12 with a window of 6: prompted slices wherever they are, plus
    un-prompted slices 6..11; element 1 has no prompted slice 3, so it keeps one fewer (padding)."""
    indices = torch.tensor([0, 3, 5, 6, 7, 8, 9, 10, 11])
    cond = torch.zeros(2, 9, dtype=torch.bool)
    cond[:, 0] = True
    cond[0, 1] = True  # slice 3 prompted for element 0 only
    cond[:, 4] = True  # slice 7 prompted for both: inside the window, it takes no extra place
    sel, valid = select_recent(indices, cond, t=12, window=6)
    kept = [[int(indices[p]) for p, v in zip(row, ok) if v] for row, ok in zip(sel.tolist(), valid.tolist())]
    assert kept == [[0, 3, 6, 7, 8, 9, 10, 11], [0, 6, 7, 8, 9, 10, 11]]
    assert valid.sum(1).tolist() == [8, 7]
    with pytest.raises(ValueError, match="window must be >= 1"):
        select_recent(indices, cond, t=12, window=0)


def test_adaptive_scores_are_cosine_times_confidence():
    g = torch.Generator().manual_seed(0)
    query, keys = torch.randn(2, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    conf = torch.rand(2, 4, generator=g)
    got = adaptive_memory_scores(query, keys, conf).numpy()
    q, k, c = query.numpy(), keys.numpy(), conf.numpy()
    cos = np.einsum("bpc,bc->bp", k, q) / (np.linalg.norm(k, axis=-1) * np.linalg.norm(q, axis=-1)[:, None])
    np.testing.assert_allclose(got, cos * c, rtol=1e-5)
    # a low-confidence twin loses to a less similar but confident slice
    twin = query[:1, None, :].repeat(1, 2, 1) + torch.tensor([[[0.0] * 6, [0.5] * 6]])
    s = adaptive_memory_scores(query[:1], twin, torch.tensor([[0.1, 0.9]]))
    assert select_memory(s, torch.zeros(1, 2, dtype=torch.bool), k=1).item() == 1


def _entry(i: int, cond: bool = False) -> MemoryEntry:
    z = torch.zeros(1, 1)
    return MemoryEntry(i, z, z, z, z, torch.zeros(1), z, torch.tensor([cond]))


def test_bank_is_bounded_and_keeps_prompted_slices():
    bank = MemoryBank(pool_size=4)
    bank.add(_entry(0, cond=True))
    for i in range(1, 30):
        bank.add(_entry(i))
    assert [e.index for e in bank.entries] == [0, 26, 27, 28, 29]
    assert bank.indices.tolist() == [0, 26, 27, 28, 29]
    with pytest.raises(ValueError, match="pool_size must be >= 1"):
        MemoryBank(0)


def _expected_topk(out, k: int, pool: int | None = None) -> list[list[list[int]]]:
    """Eq. 2 recomputed from the network's own descriptors and heads (numpy, independent of the model)."""
    desc = out["descriptors"].numpy()
    conf = (1 / (1 + np.exp(-out["object_score_logits"].numpy()))) * np.clip(
        out["iou_predictions"].numpy(), 0, 1
    )
    b, n, _ = desc.shape
    result = []
    for bi in range(b):
        rows = []
        for t in range(n):
            cand = list(range(0 if pool is None else max(0, t - pool), t))  # the bank keeps the last `pool`
            score = [
                float(desc[bi, j] @ desc[bi, t] / np.linalg.norm(desc[bi, j]) / np.linalg.norm(desc[bi, t]))
                * conf[bi, j]
                for j in cand
            ]
            rows.append(sorted(cand[i] for i in np.argsort(score)[::-1][:k]))
        result.append(rows)
    return result


def test_network_topk_memory_matches_eq2(make_tiny):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 3, 1, 128, 128, generator=g)
    # slices that resemble each other to different degrees, so the ranking is not trivial
    seq = torch.cat(
        [base + s * torch.randn(1, 3, 1, 128, 128, generator=g) for s in (0.0, 2.0, 0.3, 3.0, 0.5, 1.0, 0.1)],
        2,
    )
    net = make_tiny(memory_k=2).eval()
    with torch.no_grad():
        out = net(seq, return_aux=True)
    got = [[[j for j in row if j >= 0] for row in el] for el in out["memory_indices"].tolist()]
    assert got == _expected_topk(out, k=2)
    assert got[0][6] != [4, 5]  # not simply the last two


def test_network_last_mode_is_sam2_last_frames(make_tiny):
    g = torch.Generator().manual_seed(2)
    seq = torch.randn(1, 3, 9, 128, 128, generator=g)
    net = make_tiny(memory_selection="last").eval()
    with torch.no_grad():
        mem = net(seq, return_aux=True)["memory_indices"][0]
    for t in range(9):
        # SAM2: the initial conditioning frame (slice 0, here unprompted) and the num_maskmem - 1 = 6
        # previous frames; the full comparison with SAM2 is in test_sam2_equivalence.py
        expected = sorted({0} | set(range(max(0, t - 6), t))) if t else []
        assert [j for j in mem[t].tolist() if j >= 0] == expected


def test_prompted_slice_always_in_memory(make_tiny):
    g = torch.Generator().manual_seed(4)
    seq = torch.randn(1, 3, 6, 128, 128, generator=g)
    boxes = torch.full((1, 6, 4), float("nan"))
    boxes[0, 1] = torch.tensor([20.0, 30.0, 90.0, 100.0])
    net = make_tiny(memory_k=1).eval()
    with torch.no_grad():
        prompted = net(seq, prompts={"boxes": boxes}, return_aux=True)
        plain = net(seq, return_aux=True)
    mem = prompted["memory_indices"][0]
    for t in range(2, 6):
        assert 1 in mem[t].tolist(), (t, mem[t])
    # the prompt changes what SAM2 predicts on the prompted slice
    assert not torch.equal(prompted["iou_predictions"][:, 1], plain["iou_predictions"][:, 1])


def test_bank_evicts_in_the_network_when_the_sequence_is_longer_than_the_pool(make_tiny):
    """N = 24 > memory_pool_size = 16: slice t chooses Eq. 2's top K among slices t-16..t-1 only,
    except the prompted slice 0, which is never evicted; the bank never holds more than 16 + 1."""
    n = 24
    g = torch.Generator().manual_seed(7)
    base = torch.randn(1, 3, 1, 128, 128, generator=g)
    seq = torch.cat(
        [base + s * torch.randn(1, 3, 1, 128, 128, generator=g) for s in torch.rand(n, generator=g) * 3], 2
    )
    net = make_tiny(memory_k=3).eval()
    assert net.memory_pool_size == 16
    sizes = []
    original_add = MemoryBank.add

    def spy(bank, entry):
        original_add(bank, entry)
        sizes.append(len(bank))

    MemoryBank.add = spy
    try:
        with torch.no_grad():
            plain = net(seq, return_aux=True)
            boxes = torch.full((1, n, 4), float("nan"))
            boxes[0, 0] = torch.tensor([20.0, 20.0, 100.0, 100.0])
            prompted = net(seq, prompts={"boxes": boxes}, return_aux=True)
    finally:
        MemoryBank.add = original_add
    assert max(sizes) == 17 and sizes.count(17) > 0  # 16 un-prompted + the prompted slice 0
    got = [[[j for j in row if j >= 0] for row in el] for el in plain["memory_indices"].tolist()]
    assert got == _expected_topk(plain, k=3, pool=16)
    assert any(min(row) < t - 6 for t, row in enumerate(got[0]) if row)  # Eq. 2 reaches past SAM2's 6
    mem = prompted["memory_indices"][0]
    for t in range(17, n):
        kept = [j for j in mem[t].tolist() if j >= 0]
        assert kept[0] == 0 and all(j >= t - 16 for j in kept[1:]), (t, kept)


def test_bank_gather_equals_stack_then_gather():
    from pathseqsam.modeling.adaptive_memory import MemoryBank, MemoryEntry, gather_entries

    bank = MemoryBank(pool_size=8)
    for i in range(5):
        f = torch.randn(2, 3, 4)
        z = torch.zeros(2, 1)
        bank.add(MemoryEntry(i, f, f, z, z, torch.zeros(2), z, torch.zeros(2, dtype=torch.bool)))
    sel = torch.tensor([[0, 3], [4, 1]])
    assert torch.equal(bank.gather("features", sel), gather_entries(bank.stack("features"), sel))
