"""PathSeqSAM's settings: declared once (a dataclass), validated there, forwarded by build_pathseqsam."""

from __future__ import annotations

import pytest

from pathseqsam import build_pathseqsam
from pathseqsam.modeling.settings import PathSeqSAMSettings


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("memory_selection", "first", "memory_selection must be one of"),
        ("distance_mode", "cubic", "distance_mode must be one of"),
        ("memory_k", 0, "memory_k must be >= 1"),
        ("distance_unit_um", 0.0, "distance_unit_um must be > 0"),
        ("encoder_chunk", 0, "encoder_chunk must be >= 1"),
    ],
)
def test_bad_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        PathSeqSAMSettings(**{field: value})


def test_build_forwards_every_setting_to_the_network():
    net = build_pathseqsam(
        model="tiny", image_size=64, lora_rank=0, memory_k=3, memory_selection="last",
        distance_mode="additive", distance_unit_um=2.5, encoder_chunk=2,
    )  # fmt: skip
    assert net.settings == PathSeqSAMSettings(
        memory_k=3, memory_selection="last", distance_mode="additive", distance_unit_um=2.5, encoder_chunk=2
    )
    assert (net.memory_k, net.memory_selection, net.distance_mode) == (3, "last", "additive")
    assert (net.distance_unit_um, net.encoder_chunk) == (2.5, 2)
    settings = PathSeqSAMSettings(memory_k=2)
    assert build_pathseqsam(model="tiny", image_size=64, lora_rank=0, settings=settings).memory_k == 2


def test_unknown_keyword_names_the_settings_fields():
    with pytest.raises(TypeError, match=r"unknown arguments \['memroy_k'\].*memory_k"):
        build_pathseqsam(model="tiny", image_size=64, memroy_k=3)


def test_pool_smaller_than_sam2_memory_is_refused():
    with pytest.raises(ValueError, match="memory_pool_size=4 must be >= 15"):
        build_pathseqsam(model="tiny", image_size=64, lora_rank=0, memory_pool_size=4)
