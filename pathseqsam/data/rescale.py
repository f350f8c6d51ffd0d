"""Re-sample a slice-list dataset to another pixel density (the same tissue at another um per pixel).

Used to check that results do not depend on the scanner's resolution: the demo validation set at
twice the pixel density (``factor=2``, ``mpp_um`` halved) must segment like the native one. Images
are resampled with Lanczos, masks with nearest neighbour (enlarging) or a >= 50 % area vote
(shrinking, via Lanczos of the 0/255 mask and a threshold), written as lossless PNGs; positions (um)
are kept and every item's ``mpp_um`` is divided by ``factor``.

CLI::

    python -m pathseqsam.data.rescale --datalist DIR/datalist.json --out OUT --factor 2 [--splits validation]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pathseqsam.data.datalist import DATALIST_SPLITS, load_datalist, write_datalist
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import read_slice, to_binary_mask, to_rgb_float
from pathseqsam.data.resolution import check_mpp_um, resolve_mpp_um

__all__ = ["main", "rescale_datalist"]


def _resize(array: np.ndarray, size: tuple[int, int], mask: bool) -> np.ndarray:
    h, w = size
    if mask:
        im = Image.fromarray(array.astype(np.uint8) * 255)
        enlarge = h >= array.shape[0]
        out = np.asarray(im.resize((w, h), Image.NEAREST if enlarge else Image.LANCZOS))
        return (out >= 128).astype(np.uint8) * 255
    im = Image.fromarray(np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8))
    return np.asarray(im.resize((w, h), Image.LANCZOS))


def rescale_datalist(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    factor: float,
    splits: Sequence[str] = DATALIST_SPLITS,
    mpp_um: float | None = None,
) -> Path:
    """Write ``out_dir`` with every slice of ``splits`` resampled by ``factor`` and its datalist.

    Args:
        datalist: source datalist (items with lists of slice files).
        out_dir: destination folder (``<split>/<case>/{img,mask}/*.png`` and ``datalist.json``).
        factor: pixel density factor (2: twice as many pixels per um; ``mpp_um`` halved).
        splits: splits to convert (others are written empty).
        mpp_um: pixel size of items without one (see :func:`pathseqsam.data.resolution.resolve_mpp_um`).

    Returns:
        Path of the new ``datalist.json``.

    Raises:
        SequenceDataError: a stack item (only slice lists are converted), a bad factor, or an item
            without a pixel size.
    """
    if not factor > 0:
        raise SequenceDataError(f"factor must be positive, got {factor}")
    out = Path(out_dir)
    result: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        items = load_datalist(datalist, split)
        converted = []
        for i, item in enumerate(items):
            where = f"{datalist} [{split}][{i}]"
            if not isinstance(item["image"], list):
                raise SequenceDataError(
                    f"{where}: a stack; only items with lists of slice files are rescaled"
                )
            mpp, _ = resolve_mpp_um(item.get("mpp_um"), item["image"][0], mpp_um, where)
            case_dir = out / split / str(item.get("case", f"case{i}"))
            new = dict(item, mpp_um=check_mpp_um(mpp / factor, where))
            for key in ("image", "label"):
                if item.get(key) is None:
                    continue
                paths = []
                for path in item[key]:
                    array, (h, w) = read_slice(path)
                    size = (max(1, round(h * factor)), max(1, round(w * factor)))
                    is_mask = key == "label"
                    data = to_binary_mask(array, 0.5, path) if is_mask else to_rgb_float(array, path)
                    target = case_dir / ("mask" if is_mask else "img") / (Path(path).stem + ".png")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_resize(data, size, is_mask)).save(target)
                    paths.append(str(target))
                new[key] = paths
            converted.append(new)
        result[split] = converted
    return write_datalist(
        result, out / "datalist.json", extra={"description": f"{datalist} rescaled x{factor:g}"}
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m pathseqsam.data.rescale", description=__doc__.split("\n")[0])
    p.add_argument("--datalist", required=True, help="source datalist.json")
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--factor", type=float, required=True, help="pixel density factor (2 halves mpp_um)")
    p.add_argument("--splits", nargs="+", default=list(DATALIST_SPLITS), choices=DATALIST_SPLITS)
    p.add_argument("--mpp_um", type=float, default=None, help="pixel size of items without one")
    args = p.parse_args(argv)
    try:
        path = rescale_datalist(args.datalist, args.out, args.factor, args.splits, args.mpp_um)
    except SequenceDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
