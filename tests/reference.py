"""Independent re-computations shared by tests (numpy/scipy only, no project code)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def postprocess_reference(probs: np.ndarray, image_size: int) -> np.ndarray:
    """The bundle's post-processing per slice: threshold at 0.5, drop 4-connected components under
    ``(image_size / 16)^2`` pixels (``min_object_px``), fill holes (8-connected background).

    Args:
        probs: ``[N, H, W]`` probabilities.
        image_size: the bundle's ``image_size``.

    Returns:
        ``[N, H, W]`` bool masks.
    """
    min_px = int((image_size / 16) ** 2)
    out = []
    for m in np.asarray(probs) > 0.5:
        lab, k = ndimage.label(m)
        sizes = ndimage.sum(m, lab, range(1, k + 1))
        kept = np.isin(lab, [i + 1 for i, n in enumerate(sizes) if n >= min_px])
        out.append(ndimage.binary_fill_holes(kept, structure=np.ones((3, 3), bool)))
    return np.stack(out)
