"""MONAI Label clicks/boxes -> PathSeqSAM prompts: coordinates, slices, regions, bad requests."""

from __future__ import annotations

import math

import pytest
import torch

from pathseqsam.label.requests.prompts import request_prompts
from pathseqsam.label.requests.region import Region


def test_clicks_and_box_land_on_their_slices():
    request = {
        "foreground": [[10, 20, 1], [12.5, 22, 1]],
        "background": [[30, 40, 1], [5, 6, 4]],
        "roi": [50, 60, 5, 6, 2, 4],  # corners in any order, slices 2 and 3
    }
    prompts, prompted = request_prompts(request, n_slices=5, height=64, width=64)
    assert prompted == [1, 2, 3, 4]
    coords, labels, boxes = prompts["point_coords"], prompts["point_labels"], prompts["boxes"]
    assert coords.shape == (1, 5, 3, 2) and labels.shape == (1, 5, 3) and boxes.shape == (1, 5, 4)
    assert coords[0, 1].tolist() == [[10, 20], [12.5, 22], [30, 40]]
    assert labels[0, 1].tolist() == [1, 1, 0]
    assert labels[0, 4].tolist() == [0, -1, -1] and coords[0, 4, 0].tolist() == [5, 6]
    assert (labels[0, [0, 2, 3]] == -1).all()
    assert boxes[0, 2].tolist() == boxes[0, 3].tolist() == [5, 6, 50, 60]
    assert all(math.isnan(v) for t in (0, 1, 4) for v in boxes[0, t].tolist())


def test_2d_clicks_use_the_slice_field_or_the_only_slice():
    prompts, prompted = request_prompts({"foreground": [[3, 4]], "slice": 2}, 4, 32, 32)
    assert prompted == [2] and prompts["point_coords"][0, 2, 0].tolist() == [3, 4]
    prompts, prompted = request_prompts({"background": [[3, 4]], "roi": [1, 2, 9, 8]}, 1, 32, 32)
    assert prompted == [0]
    assert prompts["point_labels"][0, 0].tolist() == [0]
    assert prompts["boxes"][0, 0].tolist() == [1, 2, 9, 8]


def test_region_shifts_clicks_and_clips_the_box():
    region = Region(x=100, y=200, width=32, height=16)
    prompts, _ = request_prompts(
        {"foreground": [[110, 205]], "roi": [90, 190, 120, 210]}, 1, 16, 32, region=region
    )
    assert prompts["point_coords"][0, 0, 0].tolist() == [10, 5]
    assert prompts["boxes"][0, 0].tolist() == [0, 0, 20, 10]


def test_clicks_in_image_pixels_are_scaled_to_the_working_resolution():
    # a 1 um/px image seen by a 2 um/px network: half the pixels; clicks are checked in image pixels
    region = Region(x=100, y=200, width=64, height=32)
    request = {"foreground": [[140, 210]], "roi": [100, 200, 164, 232]}
    prompts, _ = request_prompts(request, 1, 32, 64, region=region, scale=(0.5, 0.5))
    assert prompts["point_coords"][0, 0, 0].tolist() == [20, 5]
    assert prompts["boxes"][0, 0].tolist() == [0, 0, 32, 16]
    with pytest.raises(ValueError, match="click lies outside the 64x32 px region"):
        request_prompts({"foreground": [[170, 210]]}, 1, 32, 64, region=region, scale=(0.5, 0.5))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({}, "at least one click"),
        ({"foreground": [], "roi": []}, "at least one click"),
        ({"foreground": [[3, 4]]}, "request 'foreground'[0] = [3, 4]: no slice index"),
        ({"foreground": [[3, 4, 7]]}, "slice index 7 is not one of the image's slices 0..3"),
        (
            {"background": [[40, 4, 0]]},
            "request 'background'[0] = [40, 4, 0]: click lies outside the 32x32 px image",
        ),
        ({"foreground": [["a", 4, 0]]}, "request 'foreground'[0]"),
        ({"foreground": [[1, 2, 3, 4]]}, "expected 2 or 3 finite numbers"),
        ({"foreground": "3,4"}, "must be a list"),
        ({"roi": [1, 2, 3, 4]}, "request 'roi' = [1, 2, 3, 4]: no slice index"),
        ({"roi": [40, 40, 50, 50, 0, 1]}, "does not overlap"),
        ({"roi": [1, 1, 5, 5, 2, 9]}, "beyond the image's 4 slices"),
        ({"foreground": [[3, 4, 0]], "slice": 5}, "request 'slice' = 5"),
    ],
)
def test_bad_requests_name_the_field(request_, message):
    with pytest.raises(ValueError, match=None) as info:
        request_prompts(request_, n_slices=4, height=32, width=32)
    assert message in str(info.value)


def test_prompts_are_accepted_by_the_network(make_tiny):
    """The network reads the built prompts: boxes become SAM2's corner labels 2 and 3."""
    net = make_tiny()
    prompts, _ = request_prompts({"foreground": [[64, 64, 0]], "roi": [10, 10, 90, 90, 1, 2]}, 3, 128, 128)
    per_slice = net._as_prompts(prompts, 1, 3, 128, 128, torch.device("cpu"))
    assert per_slice[2] is None
    # padding (label -1) that no batch element uses never reaches SAM2's decoder
    assert per_slice[0]["point_labels"].tolist() == [[1]]
    assert per_slice[0]["point_coords"].tolist() == [[[64, 64]]]
    assert per_slice[1]["point_labels"].tolist() == [[2, 3]]
    assert per_slice[1]["point_coords"][0, :2].tolist() == [[10, 10], [90, 90]]
