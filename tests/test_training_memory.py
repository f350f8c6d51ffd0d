"""Eq. 2 is active in training: on the bundle's default training windows, top-K (K = 5) and SAM2's
last-N choose different memory slices, and the memory ablation overlays differ from the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import list_data_collate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A synthetic set whose cases have 10 sections (as the demo's)."""
    from pathseqsam.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("memory") / "data"
    generate_synthetic_dataset(
        out, cases=3, seed=0, image_size=SIZE, sections=10, contact_sheet=False, stacks=False
    )
    return out


def _parser(data: Path, **overrides) -> ConfigParser:
    """train.json as the bundle reads it (plus the given overrides) on ``data``."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(
        {"dataset_dir": str(data), "image_size": SIZE, "device": "$torch.device('cpu')", **overrides}
    )
    return parser


def _memory_in_a_training_step(data: Path, **overrides) -> tuple[torch.Tensor, int]:
    """One training batch through the bundle's own transforms, prepare-batch and network (train mode)."""
    parser = _parser(data, **overrides)
    torch.manual_seed(0)
    dataset = parser.get_parsed_content("train#dataset")
    batch = list_data_collate([dataset[0], dataset[1]])
    images, _, args, kwargs = parser.get_parsed_content("train#prepare_batch")(batch, torch.device("cpu"))
    net = parser.get_parsed_content("network").train()
    assert kwargs.get("return_aux") is True  # the training step asks for the memory choices
    out = net(images, *args, **kwargs)
    return out["memory_indices"], images.shape[2]


def _chosen(memory: torch.Tensor) -> list[list[list[int]]]:
    return [[[j for j in row if j >= 0] for row in seq] for seq in memory.tolist()]


def test_topk_and_last_choose_different_slices_in_a_training_step(data):
    defaults = _parser(data)
    assert defaults["window"] >= 8 and defaults["memory_k"] == 5 and defaults["memory_selection"] == "topk"
    topk, n = _memory_in_a_training_step(data)
    last, n_last = _memory_in_a_training_step(data, memory_selection="last")
    assert n == n_last == defaults["window"]
    topk, last = _chosen(topk), _chosen(last)
    for b in range(2):
        for t in range(n):
            # SAM2: slice 0 (initial conditioning frame) + the last 6 slices; on 8 slices that is all
            assert last[b][t] == sorted({0} | set(range(max(0, t - 6), t))) if t else last[b][t] == []
            # Eq. 2: K = 5 of the earlier slices, all of them while there are at most 5
            assert len(topk[b][t]) == min(t, 5) and set(topk[b][t]) <= set(range(t))
    # from slice 6 on Eq. 2 has to choose: the two selections differ on those slices
    differ = [(b, t) for b in range(2) for t in range(6, n) if topk[b][t] != last[b][t]]
    assert len(differ) == 2 * (n - 6), differ


def test_memory_ablations_differ_from_the_default_in_training(data):
    """Each memory overlay changes what a training step keeps in memory (memory_k7 on its own
    longer window); none of them trains identically to the default on these windows."""
    default, _ = _memory_in_a_training_step(data)
    default = _chosen(default)
    for name in ("memory_k1", "memory_k3", "memory_k7", "memory_last"):
        overlay = json.loads((CONFIGS / "ablations" / f"{name}.json").read_text())
        memory, n = _memory_in_a_training_step(data, **{k: v for k, v in overlay.items() if k != "_comment"})
        chosen = _chosen(memory)
        assert chosen != default, name
        if name == "memory_k7":
            assert n == 10 and any(len(row) == 7 and t > 7 for t, row in enumerate(chosen[0])), chosen[0]
