"""Sequence transforms: loading, windows, one spatial transform per sequence, stain jitter, collation."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, decollate_batch, list_data_collate
from PIL import Image
from scipy import ndimage

from pathseqsam import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.kpis import scan_kpis
from pathseqsam.data.stacks import save_nifti_stack, save_tiff_stack
from pathseqsam.data.transforms import (
    LoadSequenced,
    NormalizeSAM2d,
    RandSequenceSpatiald,
    RandSequenceWindowd,
    RandSliceStainJitterd,
    ResizeSequenced,
    sequence_transforms,
)

MEAN = torch.tensor(SAM2_PIXEL_MEAN)[:, None, None, None]
STD = torch.tensor(SAM2_PIXEL_STD)[:, None, None, None]


def _blob_masks(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random blobs, different per slice: [n, size, size] bool."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, size / 10, size / 10))
    return field > 0.0


def _stack_files(tmp_path, n=6, size=32):
    """A sequence of n PNG slices + masks with known pixel values; returns the datalist item."""
    masks = _blob_masks(n, size)
    images, labels = [], []
    for i in range(n):
        rgb = np.zeros((size, size, 3), np.uint8)
        rgb[..., 0] = 10 * i
        rgb[..., 1] = masks[i] * 200
        rgb[..., 2] = 255 - 10 * i
        images.append(tmp_path / f"s{i}_img.png")
        labels.append(tmp_path / f"s{i}_mask.png")
        Image.fromarray(rgb).save(images[-1])
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(labels[-1])
    return {
        "image": [str(p) for p in images],
        "label": [str(p) for p in labels],
        "positions_um": [[0.0, 3.0 * i] for i in range(n)],
        "case": "c",
        "degraded": [i % 2 for i in range(n)],
    }, masks


def test_load_kpis_sequence_matches_independent_decoding(kpis_tree):
    root, _ = kpis_tree
    item = scan_kpis(root)["training"][0]
    out = LoadSequenced(("image", "label"))(item)
    n = len(item["image"])
    assert out["image"].shape == (3, n, 64, 64) and out["image"].dtype == torch.float32
    assert out["label"].shape == (1, n, 64, 64) and out["label"].dtype == torch.float32
    for k, (img, msk) in enumerate(zip(item["image"], item["label"])):
        ref = torch.from_numpy(np.asarray(Image.open(img), dtype=np.float32) / 255.0).permute(2, 0, 1)
        assert torch.allclose(out["image"][:, k], ref, atol=1e-6)
        ref_mask = torch.from_numpy(
            (np.asarray(Image.open(msk), dtype=np.float32) > 127.5).astype(np.float32)
        )
        assert torch.equal(out["label"][0, k], ref_mask)
    assert out["positions"].dtype == torch.float32
    assert torch.equal(out["positions"], torch.tensor(item["positions_um"], dtype=torch.float32))
    assert "positions_um" not in out
    assert out["slice_names"] == [p.split("/")[-1] for p in item["image"]]
    assert out["slice_index"].tolist() == list(range(n))
    assert out["original_size"].tolist() == [[64, 64]] * n
    assert out["case"] == "12_116" and out["class"] == "56Nx"


def test_load_resizes_and_keeps_masks_binary(kpis_tree):
    root, _ = kpis_tree
    item = scan_kpis(root)["validation"][0]
    out = LoadSequenced(("image", "label"), spatial_size=32)(item)
    assert out["image"].shape == (3, 3, 32, 32) and out["label"].shape == (1, 3, 32, 32)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    assert out["original_size"].tolist() == [[64, 64]] * 3
    full = LoadSequenced(("image", "label"))(item)
    # Shrinking a mask by 2: a pixel is foreground when at least half of its 2x2 block is.
    pooled = torch.nn.functional.avg_pool2d(full["label"][0], 2) >= 0.5
    assert torch.equal(ResizeSequenced(("image", "label"), 32)(full)["label"][0].bool(), pooled)
    # The loader decodes JPEGs at half scale directly (DCT scaling): nearly the same result.
    assert (out["label"][0].bool() == pooled).float().mean() > 0.97
    reference = ResizeSequenced("image", 32)(full)["image"]
    assert torch.allclose(out["image"].mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=0.01)


def test_gray_rgba_16bit_slices_in_one_sequence(tmp_path):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((8, 8), 51, np.uint8)).save(gray)
    rgba = tmp_path / "a.png"
    Image.fromarray(np.dstack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 51, np.uint8)])).save(rgba)
    deep = tmp_path / "d.png"
    deep.write_bytes(imagecodecs.png_encode(np.full((8, 8), 13107, np.uint16)))
    out = LoadSequenced("image")({"image": [str(gray), str(rgba), str(deep)]})
    np.testing.assert_allclose(
        out["image"][:, :, 0, 0].T.numpy(), [[0.2] * 3, [0.8] * 3, [0.2] * 3], atol=1e-6
    )
    assert "label" not in out  # unlabelled inference item
    assert out["positions"].shape == (3, 1) and torch.isnan(out["positions"]).all()  # unknown positions


@pytest.mark.parametrize("fmt", ["tiff", "nifti"])
def test_stack_window_decodes_only_the_window(tmp_path, fmt):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    masks = (volume[..., 0] > 128).astype(np.uint8)
    z = [0.0, 2.0, 6.0, 8.0, 14.0, 16.0, 20.0]
    save = save_tiff_stack if fmt == "tiff" else save_nifti_stack
    suffix = ".ome.tif" if fmt == "tiff" else ".nii.gz"
    image, label = save(tmp_path / f"v{suffix}", volume, z), save(tmp_path / f"m{suffix}", masks * 255, z)
    window = RandSequenceWindowd(("image", "label"), window=3)
    window.set_random_state(3)
    picked = window({"image": str(image), "label": str(label), "case": "v"})  # no positions_um: header
    out = LoadSequenced(("image", "label"))(picked)
    idx = out["slice_index"].tolist()
    assert len(idx) == 3 and idx == list(range(idx[0], idx[0] + 3))
    assert torch.allclose(out["image"], torch.from_numpy(volume[idx] / 255.0).float().permute(3, 0, 1, 2))
    assert torch.equal(out["label"][0], torch.from_numpy(masks[idx]).float())
    assert out["positions"][:, 0].tolist() == [z[i] for i in idx]
    assert out["slice_names"] == [f"v_z{i:04d}" for i in idx]


def test_window_before_and_after_loading_agree(tmp_path):
    item, _ = _stack_files(tmp_path, n=8)
    before = RandSequenceWindowd(("image", "label"), window=4, max_stride=2)
    after = RandSequenceWindowd(("image", "label"), window=4, max_stride=2)
    load = LoadSequenced(("image", "label"))
    for seed in range(6):
        before.set_random_state(seed)
        after.set_random_state(seed)
        a = load(before(dict(item)))
        b = after(load(dict(item)))
        assert a["slice_index"].tolist() == b["slice_index"].tolist()
        for key in ("image", "label", "positions", "degraded", "original_size"):
            assert torch.equal(a[key], b[key]), key
        assert a["slice_names"] == b["slice_names"]
        idx = a["slice_index"].tolist()
        stride = idx[1] - idx[0]
        assert 1 <= stride <= 2 and idx == list(range(idx[0], idx[0] + 4 * stride, stride))  # ordered
        assert a["positions"].tolist() == [item["positions_um"][i] for i in idx]  # positions kept
        assert a["degraded"].tolist() == [item["degraded"][i] for i in idx]


def test_short_sequence_is_kept_whole(tmp_path):
    item, _ = _stack_files(tmp_path, n=3)
    with pytest.warns(UserWarning, match="3 slices, fewer than the window"):
        out = RandSequenceWindowd(("image", "label"), window=5)(dict(item))
    assert out["image"] == item["image"]


def _pixel_reference(masks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply the (output -> input, centred pixel offsets, (x, y)) matrix with scipy, nearest."""
    size = masks.shape[-1]
    c = (size - 1) / 2.0
    swap = np.array([[0, 1], [1, 0]])
    m = swap @ matrix[:2, :2] @ swap  # (row, col) order
    t = swap @ matrix[:2, 2]
    offset = np.array([c, c]) - m @ np.array([c, c]) + t
    return np.stack(
        [ndimage.affine_transform(s.astype(np.float32), m, offset, order=0, mode="reflect") for s in masks]
    )


@pytest.mark.parametrize("seed", range(4))
def test_one_spatial_transform_for_the_whole_sequence(tmp_path, seed):
    item, masks = _stack_files(tmp_path, n=5, size=48)
    data = LoadSequenced(("image", "label"))(item)
    spatial = RandSequenceSpatiald(
        ("image", "label"), rotate_range=np.pi, scale_range=(0.8, 1.2), translate_range=0.1
    )
    spatial.set_random_state(seed)
    out = spatial(dict(data))
    assert out["label"].shape == data["label"].shape
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    # Every slice moved by the SAME transform: compare each mask with an independent resampling.
    ref = _pixel_reference(masks, spatial.matrix)
    agree = (out["label"][0].numpy() == ref).mean(axis=(1, 2))
    assert np.all(agree > 0.985), agree  # nearest-neighbour ties on a few pixels only
    assert not torch.equal(out["label"], data["label"])
    # The image moved with its mask (its green channel is the mask, its red channel the slice index).
    assert ((out["image"][1] > 0.4) == out["label"][0].bool()).float().mean() > 0.97
    np.testing.assert_allclose(
        out["image"][0].mean(dim=(1, 2)).numpy(), [10 * i / 255 for i in range(5)], atol=1e-4
    )
    assert torch.equal(out["positions"], data["positions"])


def test_flips_and_rot90_are_exact(tmp_path):
    item, masks = _stack_files(tmp_path, n=3, size=32)
    data = LoadSequenced(("image", "label"))(item)
    spatial = RandSequenceSpatiald(
        ("image", "label"), rotate_range=0.0, scale_range=(1.0, 1.0), translate_range=0.0
    )
    seen = set()
    for seed in range(12):
        spatial.set_random_state(seed)
        out = spatial(dict(data))
        p = spatial._params
        # The matrix maps output to input (input = R F output), so the output is the input rotated
        # by k quarter turns (numpy's rot90 on (row, col)) and then flipped.
        ref = np.rot90(masks, k=p["k90"], axes=(1, 2))
        if p["flip_x"]:
            ref = ref[:, :, ::-1]
        if p["flip_y"]:
            ref = ref[:, ::-1, :]
        assert np.array_equal(out["label"][0].numpy().astype(bool), ref), p
        seen.add((p["flip_x"], p["flip_y"], p["k90"]))
    assert len(seen) > 4


def test_stain_jitter_is_per_slice_and_identity_round_trips():
    img = torch.rand(3, 1, 16, 16) * 0.8 + 0.2
    seq = {"image": img.repeat(1, 4, 1, 1), "label": torch.ones(1, 4, 16, 16)}
    jitter = RandSliceStainJitterd("image", prob=1.0)
    jitter.set_random_state(0)
    out = jitter(dict(seq))
    assert torch.equal(out["label"], seq["label"])
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    diffs = [
        (out["image"][:, i] - out["image"][:, j]).abs().mean() for i in range(4) for j in range(i + 1, 4)
    ]
    assert min(diffs) > 1e-3  # every slice got its own stain
    identity = RandSliceStainJitterd(
        "image", prob=1.0, stain_scale=0.0, stain_shift=0.0, brightness=0.0, contrast=0.0
    )
    assert torch.allclose(identity(dict(seq))["image"], seq["image"], atol=1e-5)  # OD -> HED -> OD
    untouched = RandSliceStainJitterd("image", prob=0.0)(dict(seq))
    assert torch.equal(untouched["image"], seq["image"])


def test_normalisation_uses_sam2_statistics():
    x = torch.rand(3, 2, 4, 4)
    out = NormalizeSAM2d("image")({"image": x})["image"]
    assert torch.allclose(out, (x - MEAN) / STD)
    with pytest.raises(SequenceDataError, match=r"expected RGB \[3, N, H, W\]"):
        NormalizeSAM2d("image")({"image": torch.rand(1, 2, 4, 4)})


def test_pipeline_batches_with_positions(tmp_path):
    items = [
        _stack_files(tmp_path / f"c{k}", n=6 + k)[0] for k in range(3) if (tmp_path / f"c{k}").mkdir() is None
    ]
    chain = sequence_transforms(image_size=32, train=True, window=4)
    chain.set_random_state(0)
    loader = DataLoader(Dataset(items, chain), batch_size=3, num_workers=0, collate_fn=list_data_collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 4, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (3, 1, 4, 32, 32)
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0}
    assert batch["positions"].shape == (3, 4, 2) and batch["positions"].dtype == torch.float32
    assert batch["degraded"].shape == (3, 4)
    # Normalised: de-normalising gives RGB in [0, 1].
    rgb = batch["image"] * STD[None] + MEAN[None]
    assert rgb.min() > -1e-5 and rgb.max() < 1 + 1e-5
    for item, sample in zip(items, decollate_batch(batch)):
        idx = sample["slice_index"].tolist()
        assert sample["positions"].tolist() == [item["positions_um"][i] for i in idx]
        assert sample["slice_names"] == [item["image"][i].split("/")[-1] for i in idx]
    evaluation = sequence_transforms(image_size=32, train=False, window=4)(dict(items[2]))
    assert evaluation["image"].shape == (3, 8, 32, 32)  # evaluation keeps the whole sequence


def test_transforms_from_a_bundle_style_config(tmp_path):
    item, _ = _stack_files(tmp_path, n=5)
    config = {
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "pathseqsam.data.transforms.RandSequenceWindowd",
                    "keys": ["image", "label"],
                    "window": 3,
                },
                {
                    "_target_": "pathseqsam.data.transforms.LoadSequenced",
                    "keys": ["image", "label"],
                    "spatial_size": 16,
                },
                {"_target_": "pathseqsam.data.transforms.RandSequenceSpatiald", "keys": ["image", "label"]},
                {"_target_": "pathseqsam.data.transforms.RandSliceStainJitterd", "keys": "image"},
                {"_target_": "pathseqsam.data.transforms.NormalizeSAM2d", "keys": "image"},
            ],
        },
        "ready": "$sequence_transforms(16, train=False)",
        "imports": ["$from pathseqsam.data.transforms import sequence_transforms"],
    }
    parser = ConfigParser(config)
    parser.get_parsed_content("imports")  # what bundle workflows do first
    out = parser.get_parsed_content("preprocessing")(item)
    assert out["image"].shape == (3, 3, 16, 16) and out["positions"].shape == (3, 2)
    assert parser.get_parsed_content("ready")(item)["image"].shape == (3, 5, 16, 16)


def test_load_errors_name_the_files(tmp_path):
    item, _ = _stack_files(tmp_path, n=3)
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(item["label"][1])
    with pytest.raises(
        SequenceDataError, match=r"s1_mask\.png: mask is 32x20 px but image .*s1_img\.png is 32x32 px"
    ):
        LoadSequenced(("image", "label"))(item)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(item["label"][1])
    with open(item["image"][2], "wb") as fh:
        fh.write(b"\x89PNG broken")
    with pytest.raises(SequenceDataError, match=r"s2_img\.png: cannot read image"):
        LoadSequenced(("image", "label"))(item)
    item, _ = _stack_files(tmp_path, n=3)
    with pytest.raises(SequenceDataError, match=r"'positions_um' has 2 rows, expected one per slice \(3\)"):
        LoadSequenced(("image", "label"))({**item, "positions_um": [[0.0], [1.0]]})
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(item["image"][0])
    with pytest.raises(
        SequenceDataError,
        match=r"s1_img\.png: slice is 32x32 px but .*s0_img\.png is 16x16 px; expected slices of one size",
    ):
        LoadSequenced("image")(item)
    assert LoadSequenced("image", spatial_size=8)(item)["original_size"].tolist() == [
        [16, 16],
        [32, 32],
        [32, 32],
    ]


def test_each_sliced_remove_small_regions_within_a_slice():
    """Removal per slice (EachSliced + RemoveSmallRegions) checked against scipy per slice: a 9-pixel
    blob repeated through 3 slices (27 voxels, which a 3D filter would keep) goes, a 36-pixel one stays;
    diagonal neighbours are separate regions with connectivity 1 (MONAI's default), joined with 2."""
    from monai.data import MetaTensor

    from pathseqsam.data.transforms import EachSliced, RemoveSmallRegions

    pred = torch.zeros(1, 3, 16, 16)
    pred[0, :, 2:5, 2:5] = 1  # 9 px per slice, 27 voxels through the stack
    pred[0, 1, 8:14, 8:14] = 1  # 36 px, one slice
    data = {"pred": MetaTensor(pred, meta={"filename_or_obj": "case"})}
    out = EachSliced("pred", RemoveSmallRegions(min_size=10))(data)["pred"]
    expected = []
    for s in pred[0].numpy().astype(bool):
        lab, k = ndimage.label(s)
        sizes = ndimage.sum(s, lab, range(1, k + 1))
        expected.append(np.isin(lab, [i + 1 for i, n in enumerate(sizes) if n >= 10]))
    np.testing.assert_array_equal(out[0].numpy().astype(bool), np.stack(expected))
    assert out[0, 1, 8:14, 8:14].all() and not out[0, :, 2:5, 2:5].any()
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case" and out.dtype == pred.dtype

    diagonal = torch.zeros(1, 8, 8)
    diagonal[0, [1, 2, 3, 4], [1, 2, 3, 4]] = 1  # four pixels touching at corners only
    assert not RemoveSmallRegions(min_size=2)(diagonal).any()
    assert torch.equal(RemoveSmallRegions(min_size=2, connectivity=2)(diagonal), diagonal)

    with pytest.raises(SequenceDataError, match=r"'pred': expected \[C, N, H, W\]"):
        EachSliced("pred", RemoveSmallRegions(min_size=10))({"pred": torch.zeros(1, 16, 16)})
    with pytest.raises(SequenceDataError, match=r"expected one slice \[C, H, W\]"):
        RemoveSmallRegions(min_size=10)(torch.zeros(16, 16))
    with pytest.raises(TypeError, match="must be callable"):
        EachSliced("pred", transform=3)
    with pytest.raises(ValueError, match="connectivity must be 1 or 2"):
        RemoveSmallRegions(min_size=1, connectivity=3)
