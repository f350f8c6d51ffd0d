"""The pathology convention: a request names a region (location, size) of a larger image."""

from __future__ import annotations

import pytest
import torch

from pathseqsam.label.requests.region import CropRegiond, Region, request_region


def test_whole_image_unless_a_size_is_given():
    assert request_region({}, 100, 200) is None
    assert (
        request_region({"location": [0, 0], "size": [0, 0]}, 100, 200) is None
    )  # pathology app: whole image
    assert request_region({"location": [20, 10], "size": [64, 32]}, 100, 200) == Region(20, 10, 64, 32)
    assert request_region({"size": [200, 100], "level": 0}, 100, 200) == Region(0, 0, 200, 100)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"location": [150, 10], "size": [64, 32]},
            "location [150, 10] size [64, 32] does not lie inside the 200x100 px",
        ),
        ({"location": [-1, 0], "size": [8, 8]}, "does not lie inside"),
        ({"size": [8, -2]}, "'size' must be positive"),
        ({"size": [8.5, 2]}, "whole pixels"),
        ({"size": "big"}, "'size' must be two numbers"),
        ({"size": [8, 8], "level": 2}, "'level' 2 is not supported"),
    ],
)
def test_bad_regions_are_explained(request_, message):
    with pytest.raises(ValueError) as info:
        request_region(request_, 100, 200)
    assert message in str(info.value)


def test_crop_cuts_the_same_pixels_from_every_slice():
    image = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    out = CropRegiond("image")({"image": image, "location": [4, 2], "size": [5, 3]})
    assert out["region"] == Region(4, 2, 5, 3)
    torch.testing.assert_close(out["image"], image[:, :, 2:5, 4:9])
    whole = CropRegiond("image")({"image": image})
    assert whole["region"] is None and whole["image"] is image
