"""Shared fixtures: the CPU-sized ("tiny") PathSeqSAM and small synthetic inputs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def make_tiny():
    """Factory for a seeded tiny PathSeqSAM at 128 px (fast on 2 CPU cores)."""
    from pathseqsam import build_pathseqsam

    def _make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        kwargs.setdefault("model", "tiny")
        kwargs.setdefault("image_size", 128)
        return build_pathseqsam(**kwargs)

    return _make


@pytest.fixture
def images():
    """A seeded batch of 2 sequences of 4 slices, 128 px, roughly SAM2-normalised."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 4, 128, 128, generator=g)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """A short bundle training on a small demo set at 2 um/px, shared by the resolution tests.

    Returns ``(bundle_root, dataset_dir)``: ``bundle_root/models/model.pt`` is the best checkpoint
    (validation per-patch Dice 0.680 on its 6 patches after 6 epochs, about 1 minute on 2 CPU cores).
    """
    from monai.bundle import ConfigWorkflow

    from pathseqsam.synthetic import generate_synthetic_dataset
    from tests.bundle_paths import CONFIGS, LOGGING, META, with_pretrained

    data = tmp_path_factory.mktemp("demo") / "data"
    # 256 um fields at 128 px: the bundle's 2 um/px demo, every validation section holds a glomerulus
    generate_synthetic_dataset(
        data, cases=6, seed=0, image_size=128, sections=6, field_um=256.0, difficulty="easy",
        stacks=False, contact_sheet=False,
    )  # fmt: skip
    root = with_pretrained(tmp_path_factory.mktemp("demo_bundle"))
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        meta_file=META,
        logging_file=LOGGING,
        bundle_root=str(root),
        dataset_dir=str(data),
        window=4,
        batch_size=2,
        **{"train#windows_per_case": 8, "train#trainer#max_epochs": 6},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return root, data
