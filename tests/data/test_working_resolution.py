"""Loading at the working resolution, the training crop, the way back to the input grid, sizes in um^2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.transforms import (
    LoadSequenced,
    RandSequenceCropd,
    RemoveSmallRegionsd,
    RestoreInputGridd,
)


def _slices(tmp_path, n: int = 2, size: int = 64):
    rng = np.random.default_rng(0)
    images, labels, masks = [], [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        mask[8 + i : 40 + i, 10:50] = True
        img = np.where(mask[..., None], 60, 220).astype(np.uint8) + rng.integers(
            0, 10, (size, size, 3)
        ).astype(np.uint8)
        images.append(tmp_path / f"s{i}.png")
        labels.append(tmp_path / f"s{i}_mask.png")
        Image.fromarray(img).save(images[-1])
        Image.fromarray(mask.astype(np.uint8) * 255).save(labels[-1])
        masks.append(mask)
    return {"image": [str(p) for p in images], "label": [str(p) for p in labels], "case": "c"}, masks


def test_load_resamples_to_the_working_resolution(tmp_path):
    item, masks = _slices(tmp_path)
    out = LoadSequenced(("image", "label"), model_mpp_um=2.0)({**item, "mpp_um": 1.0})
    assert out["image"].shape == (3, 2, 32, 32) and out["label"].shape == (1, 2, 32, 32)
    assert out["original_size"].tolist() == [[64, 64], [64, 64]]
    assert out["mpp_um"] == 1.0
    # masks shrink by an area vote: a 2x2 block is foreground when at least half of it is
    for t, mask in enumerate(masks):
        vote = mask.reshape(32, 2, 32, 2).mean(axis=(1, 3)) >= 0.5
        np.testing.assert_array_equal(out["label"][0, t].numpy() > 0.5, vote)
    # images keep their mean colour (antialiased)
    full = LoadSequenced("image")(item)["image"]
    assert torch.allclose(out["image"].mean(dim=(2, 3)), full.mean(dim=(2, 3)), atol=2e-3)
    # the same tissue at 4 um/px: twice as many pixels
    big = LoadSequenced("image", model_mpp_um=2.0)({**item, "mpp_um": 4.0})["image"]
    assert big.shape[-2:] == (128, 128)


def test_native_keys_stay_on_the_input_grid(tmp_path):
    item, masks = _slices(tmp_path)
    out = LoadSequenced(("image", "label"), model_mpp_um=2.0, native_keys=["label"])({**item, "mpp_um": 1.0})
    assert out["image"].shape[-2:] == (32, 32)
    np.testing.assert_array_equal(out["label"][0].numpy() > 0.5, np.stack(masks))


def test_load_needs_a_pixel_size_and_one_way_of_sizing(tmp_path):
    item, _ = _slices(tmp_path)
    with pytest.raises(SequenceDataError, match=r"case 'c': no pixel size for .*s0\.png; .*--mpp_um"):
        LoadSequenced("image", model_mpp_um=2.0)(item)
    assert LoadSequenced("image", model_mpp_um=2.0, mpp_um=0.5)(item)["image"].shape[-2:] == (16, 16)
    with pytest.raises(ValueError, match=r"either model_mpp_um .* or spatial_size"):
        LoadSequenced("image", spatial_size=32, model_mpp_um=2.0)


def test_random_crop_is_the_same_for_every_slice_and_the_label():
    image = torch.rand(3, 4, 50, 70)
    label = (image[:1] > 0.5).float()
    crop = RandSequenceCropd(("image", "label"), roi_size=32)
    crop.set_random_state(3)
    out = crop({"image": image, "label": label})
    assert out["image"].shape == (3, 4, 32, 32) and out["label"].shape == (1, 4, 32, 32)
    torch.testing.assert_close(out["label"], (out["image"][:1] > 0.5).float())
    # the crop is a window of the input: find it
    y, x = crop._y, crop._x
    torch.testing.assert_close(out["image"], image[..., y : y + 32, x : x + 32])


def test_random_crop_pads_small_slices_with_glass_and_background():
    image, label = torch.zeros(3, 2, 20, 40), torch.ones(1, 2, 20, 40)
    out = RandSequenceCropd(("image", "label"), roi_size=32)({"image": image, "label": label})
    assert out["image"].shape == (3, 2, 32, 32)
    # 6 rows of padding above and below the 20 rows: white image, empty label
    assert out["image"][:, :, :6].eq(1.0).all() and out["image"][:, :, 6:26].eq(0.0).all()
    assert out["label"][:, :, :6].eq(0.0).all() and out["label"][:, :, 6:26].eq(1.0).all()


def test_restore_input_grid_inverts_the_resampling():
    probs = torch.zeros(1, 2, 32, 32)
    probs[..., 8:20, 4:24] = 0.9
    d = {"pred": probs, "original_size": torch.tensor([[64, 64], [64, 64]])}
    out = RestoreInputGridd("pred")(d)["pred"]
    assert out.shape == (1, 2, 64, 64)
    expected = np.kron(probs[0, 0].numpy() > 0.5, np.ones((2, 2), bool))
    np.testing.assert_array_equal(out[0, 0].numpy() > 0.5, expected)
    nearest = RestoreInputGridd("pred", mode="nearest")(d)["pred"]
    np.testing.assert_array_equal(nearest[0, 1].numpy(), np.kron(probs[0, 1].numpy(), np.ones((2, 2))))
    with pytest.raises(SequenceDataError, match="needs the sizes LoadSequenced records"):
        RestoreInputGridd("pred")({"pred": probs})


def test_minimum_object_size_is_in_square_micrometres():
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 2:12, 2:12] = 1  # 100 px
    mask[..., 20:24, 20:24] = 1  # 16 px
    remove = RemoveSmallRegionsd("pred", min_area_um2=150.0)
    at_1um = remove({"pred": mask, "mpp_um": 1.0})["pred"]  # 100 um^2 and 16 um^2: both go
    assert at_1um.sum() == 0
    at_2um = remove({"pred": mask, "mpp_um": torch.tensor(2.0, dtype=torch.float64)})["pred"]
    assert at_2um.sum() == 100  # 400 um^2 stays, 64 um^2 goes
    assert remove.min_pixels(2.0) == 38 and remove.min_pixels(0.5) == 600
    with pytest.raises(SequenceDataError, match="needs the pixel size"):
        remove({"pred": mask})


def test_standard_chain_at_the_working_resolution(tmp_path):
    from pathseqsam.data.transforms import sequence_transforms

    item, masks = _slices(tmp_path)
    item["mpp_um"] = 1.0
    train = sequence_transforms(16, train=True, model_mpp_um=2.0, spatial_aug=False, stain_aug=False)(item)
    assert train["image"].shape == (3, 2, 16, 16) and train["label"].shape == (1, 2, 16, 16)
    val = sequence_transforms(16, train=False, model_mpp_um=2.0)(item)
    assert val["image"].shape == (3, 2, 32, 32)  # whole slices at 2 um/px
    np.testing.assert_array_equal(val["label"][0].numpy() > 0.5, np.stack(masks))  # label on the input grid


def test_a_slice_in_memory_loads_as_its_png_does(tmp_path):
    """A region already read (a slide region, RGB uint8 [H, W, 3]) loads exactly as the same pixels from a file."""
    item, _ = _slices(tmp_path, n=1)
    pixels = np.asarray(Image.open(item["image"][0]))
    load = LoadSequenced("image", model_mpp_um=2.0)
    from_file = load({"image": item["image"], "mpp_um": 1.0})
    in_memory = load({"image": [pixels], "mpp_um": 1.0, "case": "region"})
    assert torch.equal(in_memory["image"], from_file["image"])
    assert in_memory["original_size"].tolist() == [[64, 64]]
    assert in_memory["slice_names"] == ["case 'region'#0"]
    with pytest.raises(SequenceDataError, match="case 'region': no pixel size"):
        load({"image": [pixels], "case": "region"})  # an array carries no metadata
