"""Training data for tile sequences: r x c blocks of a slide's tissue tiles, in inference's path order.

A model that segments a slide's tiles as one sequence (``memory_coordinates="slide"``) should be
trained on what it will see: neighbouring tissue tiles, in the order the slide command feeds them,
with their centres as positions. A sample here is an ``rows x cols`` block of the slide's tile grid
whose tiles are all tissue tiles, tiled exactly as :class:`~pathseqsam.wsi.segment.SlideSegmenter`
tiles (same tissue mask, same grid, same serpentine order), so every sample holds the tile above.
Labels are read from the slide's mask at the same places.

The datalist (:func:`slide_block_datalist`) splits by slide, never by tile: a slide is either in
training or in validation. Its items are MONAI dicts that hold the slide, its mask and its valid
blocks; :class:`RandSlideBlockd` picks one block per draw (MONAI-seeded), :class:`LoadSlideBlockd`
reads it as ``image [3, N, P, P]`` in [0, 1], ``label [1, N, P, P]`` and ``positions [N, 2]`` um.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from pathseqsam.wsi.kpis import kpis_task2_pairs
from pathseqsam.wsi.reader import open_slide
from pathseqsam.wsi.tiles import Tile, order_tiles, tile_starts, tissue_mask

__all__ = [
    "DEMO_TRAIN_ELLS",
    "LoadSlideBlockd",
    "RandSlideBlockd",
    "block_tiles",
    "slide_block_datalist",
    "training_slides",
    "valid_blocks",
]

# the demo training slides mix every correlation length of the benchmark (in tile strides)
DEMO_TRAIN_ELLS = (0.0, 0.5, 2.0, math.inf)

_OVERVIEW_MPP_UM = 16.0  # the slide command's tissue_mpp_um


def _tissue_grid(slide_path: str, tile_um: float, stride_um: float, mpp_um: float | None) -> dict[str, Any]:
    """The slide's tile grid and which grid cells are tissue tiles (the slide command's rule)."""
    with open_slide(slide_path, mpp_um=mpp_um) as slide:
        width_um, height_um = slide.width * slide.mpp_um, slide.height * slide.mpp_um
        extent = max(width_um, height_um)
        overview_mpp = max(extent / 2048.0, min(_OVERVIEW_MPP_UM, extent / 1024.0), slide.mpp_um)
        tissue = tissue_mask(slide.read_overview(overview_mpp))
    xs = tile_starts(width_um, tile_um, stride_um)
    ys = tile_starts(height_um, tile_um, stride_um)
    keep = np.zeros((len(ys), len(xs)), bool)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            r0, c0 = int(y / overview_mpp), int(x / overview_mpp)
            r1 = max(r0 + 1, math.ceil((y + tile_um) / overview_mpp))
            c1 = max(c0 + 1, math.ceil((x + tile_um) / overview_mpp))
            keep[i, j] = bool(tissue[r0:r1, c0:c1].any())  # tile_grid's rule at min_tissue_fraction 0
    return {"xs": [float(x) for x in xs], "ys": [float(y) for y in ys], "tissue": keep}


def valid_blocks(tissue: np.ndarray, rows: int, cols: int) -> list[list[int]]:
    """``[row, col]`` grid origins of every ``rows x cols`` block made of tissue tiles only."""
    if tissue.shape[0] < rows or tissue.shape[1] < cols:
        return []
    # summed-area table: a block is valid when it holds rows * cols tissue cells
    s = np.pad(tissue.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    count = s[rows:, cols:] - s[:-rows, cols:] - s[rows:, :-cols] + s[:-rows, :-cols]
    return [[int(i), int(j)] for i, j in zip(*np.nonzero(count == rows * cols))]


def block_tiles(item: Mapping[str, Any], origin: Sequence[int], rows: int, cols: int) -> list[Tile]:
    """The block's tiles in the slide command's path order (serpentine)."""
    i0, j0 = int(origin[0]), int(origin[1])
    tile_um = float(item["tile_um"])
    tiles = [
        Tile(item["xs"][j], item["ys"][i], tile_um)
        for i in range(i0, i0 + rows)
        for j in range(j0, j0 + cols)
    ]
    return order_tiles(tiles, "serpentine")


def slide_block_datalist(
    root: str | os.PathLike,
    model_mpp_um: float,
    image_size: int,
    rows: int = 3,
    cols: int = 4,
    tile_um: float | None = None,
    stride_um: float | None = None,
    val_fraction: float = 0.25,
    val_blocks_per_slide: int = 4,
    seed: int = 0,
    mpp_um: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Training and validation items of a KPIs Task 2 tree, split by slide.

    Args:
        root: a KPIs root (``Task2_WSI_level/<class>/<id>_wsi.tiff`` + ``<id>_mask.tiff``).
        model_mpp_um: the network's working resolution.
        image_size: the network's input side (the default tile is ``image_size * model_mpp_um``).
        rows: block rows.
        cols: block columns.
        tile_um: tile side (default the field of view, as the slide command).
        stride_um: tile stride (default half a tile, as the slide command).
        val_fraction: share of slides held out for validation (at least one when there are two or
            more; 0: none, every slide trains, as the benchmark does without model selection).
        val_blocks_per_slide: fixed validation blocks per held-out slide (spread over its valid blocks).
        seed: seed of the slide split.
        mpp_um: the slides' micrometres per pixel when their metadata lacks it.

    Returns:
        ``{"training": [one item per slide], "validation": [one item per fixed block]}``; a training
        item holds ``blocks`` (every valid origin), a validation item one ``block``.

    Raises:
        ValueError: no slide has a block of ``rows x cols`` tissue tiles (named), or bad settings.
    """
    if rows < 1 or cols < 1 or not 0 <= val_fraction < 1:
        raise ValueError(
            f"need rows, cols >= 1 and 0 <= val_fraction < 1; got {rows}, {cols}, {val_fraction}"
        )
    tile_um = float(tile_um or image_size * model_mpp_um)
    stride_um = float(stride_um or tile_um / 2.0)
    items = []
    for pair in kpis_task2_pairs(root):
        grid = _tissue_grid(pair["slide"], tile_um, stride_um, mpp_um)
        blocks = valid_blocks(grid["tissue"], rows, cols)
        if blocks:
            items.append(
                {
                    "image": pair["slide"],
                    "label": pair["mask"],
                    "id": pair["id"],
                    "xs": grid["xs"],
                    "ys": grid["ys"],
                    "tile_um": tile_um,
                    "stride_um": stride_um,
                    "blocks": blocks,
                    "mpp_um": mpp_um,
                }
            )
    if not items:
        raise ValueError(
            f"{root}: no slide has a block of {rows} x {cols} tissue tiles of {tile_um:g} um every {stride_um:g} um"
        )
    order = np.random.default_rng(seed).permutation(len(items))
    # at least one held-out slide when asked for any (and there are two); 0: train on every slide
    n_val = 0 if len(items) < 2 or val_fraction == 0 else max(1, round(val_fraction * len(items)))
    val_ids = {int(i) for i in order[:n_val]}
    training = [it for k, it in enumerate(items) if k not in val_ids]
    validation = []
    for k in sorted(val_ids):
        it = items[k]
        picks = np.rint(np.linspace(0, len(it["blocks"]) - 1, min(val_blocks_per_slide, len(it["blocks"]))))
        for p in sorted(set(picks.astype(int).tolist())):
            validation.append(
                {**{key: v for key, v in it.items() if key != "blocks"}, "block": it["blocks"][p]}
            )
    return {"training": training, "validation": validation}


class RandSlideBlockd(Randomizable, MapTransform):
    """Pick one of the item's valid blocks at random (``block``), seeded the MONAI way.

    Args:
        keys: unused (the item's ``blocks`` are read); kept for MONAI's transform signature.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image",)) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)

    def randomize(self, data: Any = None) -> None:
        self._pick = int(self.R.randint(len(data)))

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        blocks = d.pop("blocks", None)
        if not blocks:
            raise ValueError(f"{d.get('image')}: item has no 'blocks' to draw from")
        self.randomize(blocks)
        d["block"] = blocks[self._pick]
        return d


class LoadSlideBlockd(MapTransform):
    """Read the item's ``block`` of tiles: image, label and positions, as the slide command reads them.

    Args:
        rows: block rows.
        cols: block columns.
        model_mpp_um: the working resolution every tile is resampled to.
        image_key: key of the slide path.
        label_key: key of the mask path.
    """

    def __init__(
        self, rows: int, cols: int, model_mpp_um: float, image_key: str = "image", label_key: str = "label"
    ) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.rows, self.cols, self.model_mpp_um = int(rows), int(cols), float(model_mpp_um)
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        tiles = block_tiles(d, d["block"], self.rows, self.cols)
        px = round(float(d["tile_um"]) / self.model_mpp_um)
        image, mpp = self._read(d[self.image_key], tiles, px, d.get("mpp_um"))
        # the mask shares the slide's geometry (KPIs masks may carry no resolution of their own)
        label = self._read(d[self.label_key], tiles, px, mpp)[0]
        label = (label if label.ndim == 3 else label[..., 0]) >= 128  # 0/255; resampling blurs edges
        d["image_path"], d["label_path"] = str(d[self.image_key]), str(d[self.label_key])
        d[self.image_key] = torch.from_numpy(image).permute(3, 0, 1, 2).float() / 255.0  # [3, N, P, P]
        d[self.label_key] = torch.from_numpy(label)[None].float()  # [1, N, P, P]
        d["positions"] = torch.tensor([t.centre_um for t in tiles], dtype=torch.float32)  # [N, 2]
        for key in ("xs", "ys", "block", "mpp_um"):
            d.pop(key, None)
        return d

    @staticmethod
    def _read(
        path: str | os.PathLike, tiles: list[Tile], px: int, mpp_um: float | None
    ) -> tuple[np.ndarray, float]:
        """The tiles of one file at ``px x px`` each, and the file's micrometres per pixel."""
        with open_slide(Path(path), mpp_um=mpp_um) as slide:
            to0 = 1.0 / slide.mpp_um
            out = np.stack(
                [
                    slide.read_scaled(t.x_um * to0, t.y_um * to0, t.size_um * to0, t.size_um * to0, px, px)
                    for t in tiles
                ]
            )
            return out, slide.mpp_um


def training_slides(slides_dir: str | os.PathLike, demo_dir: str | os.PathLike, n_demo: int = 8) -> str:
    """The slide folder to train on: ``slides_dir``; when it is the bundle's demo folder, the synthetic
    training slides are written there first if missing (``n_demo`` slides of 2 x 2 mm at 0.5 um/px,
    mixing the correlation lengths :data:`DEMO_TRAIN_ELLS`). No other folder is ever written.

    Raises:
        FileNotFoundError: ``slides_dir`` (not the demo folder) does not exist.
    """
    from pathseqsam.synthetic.slides import ensure_synthetic_task2

    if Path(slides_dir).resolve() == Path(demo_dir).resolve():
        return ensure_synthetic_task2(
            demo_dir, n_slides=n_demo, size_px=4096, mpp_um=0.5, seed=8000, ell_strides=DEMO_TRAIN_ELLS
        )
    if not Path(slides_dir).is_dir():
        raise FileNotFoundError(
            f"slides_dir {slides_dir} does not exist: give a KPIs Task 2 root "
            "(Task2_WSI_level/<class>/<id>_wsi.tiff + <id>_mask.tiff) or leave slides_dir at the demo folder"
        )
    return str(slides_dir)
