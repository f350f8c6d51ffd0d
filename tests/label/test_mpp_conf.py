"""``--conf mpp_um``: the pixel size of the MONAI Label datastore's PNG/JPEG images."""

from __future__ import annotations

import pytest

from pathseqsam.label.bundle import bundle_overrides


def test_mpp_um_setting_becomes_the_bundle_fallback():
    assert bundle_overrides({"mpp_um": "0.5"}) == {"mpp_um": 0.5}
    assert bundle_overrides({"mpp_um": "0.5", "bundle.mpp_um": "1"}) == {"mpp_um": 1}  # explicit id wins
    for bad in ("0", "-1", "abc", "nan", "inf"):
        with pytest.raises(ValueError, match=f"--conf mpp_um {bad}: expected a positive number"):
            bundle_overrides({"mpp_um": bad})
