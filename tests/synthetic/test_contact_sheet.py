"""Contact sheets: mask contours in green, predictions in cyan, flagged slices in red."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathseqsam.synthetic.contact_sheet import save_contact_sheet


def _count(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 60) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(-1) < tol).sum())


def test_contours_predictions_and_highlights(tmp_path):
    images = [np.full((40, 40, 3), 0.5, np.float32) for _ in range(3)]
    masks = [np.zeros((40, 40), bool) for _ in range(3)]
    masks[0][10:30, 10:30] = True
    preds = [np.zeros((40, 40), bool) for _ in range(3)]
    preds[1][5:20, 5:20] = True
    plain = save_contact_sheet(tmp_path / "plain.png", images, captions=["a", "b", "c"])
    full = save_contact_sheet(
        tmp_path / "full.png",
        images,
        masks,
        ["a", "b", "c"],
        predictions=preds,
        highlight=[0, 0, 1],
        title="t",
    )
    plain_rgb = np.asarray(Image.open(plain).convert("RGB"))
    full_rgb = np.asarray(Image.open(full).convert("RGB"))
    assert _count(plain_rgb, (0, 255, 0)) == 0 and _count(plain_rgb, (0, 255, 255)) == 0
    assert _count(full_rgb, (0, 255, 0)) > 20  # lime mask contour
    assert _count(full_rgb, (0, 255, 255)) > 20  # cyan prediction contour
    assert _count(full_rgb, (255, 0, 0)) > _count(plain_rgb, (255, 0, 0)) + 20  # red frame and caption
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.png", "plain.png"]
    with pytest.raises(ValueError, match="at least one image"):
        save_contact_sheet(tmp_path / "none.png", [])
