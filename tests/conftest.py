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


# --------------------------------------------------------------------------- whole slides
# small synthetic slides (2048 px), written once per session; used by tests/wsi and tests/compare
SLIDE_SIDE = 2048  # level-0 pixels; 1 um/px, so 2 x 2 mm
SLIDE_MPP = 1.0


@pytest.fixture(scope="session")
def scene():
    from pathseqsam.synthetic.slides import make_slide_scene

    return make_slide_scene(SLIDE_SIDE, SLIDE_SIDE, SLIDE_MPP, n_glomeruli=60, seed=0)


@pytest.fixture(scope="session")
def slide_files(tmp_path_factory: pytest.TempPathFactory, scene) -> dict:
    """A pyramidal TIFF slide, its mask TIFF and the same slide as an Aperio SVS."""
    from pathseqsam.synthetic.slides import write_synthetic_slide

    root = tmp_path_factory.mktemp("wsi")
    slide, mask, svs = root / "syn_00_wsi.tiff", root / "syn_00_mask.tiff", root / "aperio" / "syn_00.svs"
    write_synthetic_slide(slide, scene, mask)
    write_synthetic_slide(svs, scene, svs=True)
    return {"slide": slide, "mask": mask, "svs": svs, "root": root}
