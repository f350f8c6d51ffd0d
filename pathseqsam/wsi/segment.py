"""Whole-slide inference: tissue tiles as ONE PathSeqSAM sequence, stitched on disk, in bounded memory.

Per slide (:meth:`SlideSegmenter.segment`):

1. open the slide (:func:`pathseqsam.wsi.reader.open_slide`: region reads only, microns per pixel
   from the metadata or ``mpp_um``);
2. tissue mask on a low-resolution overview (:func:`pathseqsam.wsi.tiles.tissue_mask`) and the
   tissue tiles, ``tile_um`` every ``stride_um`` (default: the network's field of view,
   ``image_size x model_mpp_um``, with 50 % overlap), ordered along a short path;
3. the tiles, read at ``model_mpp_um`` from the coarsest adequate pyramid level, are fed to the
   network as one sequence with each tile's centre in micrometres as its position
   (:meth:`~pathseqsam.modeling.network.PathSeqSAM.iter_slice_stream`): the distance-aware memory
   carries context between neighbouring tiles, and memory stays bounded by the memory bank. The
   distance unit of Eq. 1 is the tile stride. ``per_tile=True`` segments each tile alone (the
   no-memory baseline);
4. each tile's probabilities are blended (Gaussian or average weights, as MONAI's mergers) into a
   disk-backed map (:mod:`~pathseqsam.wsi.stitch`), then thresholded and cleaned block
   by block;
5. outputs in ``OUTPUT/<slide name>/``: ``mask.tif``, ``glomeruli.geojson``, ``summary.json``,
   ``thumbnail.png`` (:mod:`~pathseqsam.wsi.outputs`), written into a temporary folder
   renamed into place at the end, so a crash never leaves half a result and an earlier run's
   folder is never overwritten unless ``overwrite`` is set.

:meth:`SlideSegmenter._segment_into` runs these as named steps (``_tissue_tiles``, ``_infer_tiles``,
``_block_objects``, ``_write_outputs``, ``_summary``), each timed into ``summary.json``. The settings
are :class:`SlideInferenceSettings`, the bundle's ``slide_settings`` node; the working resolution
is the one the network's weights carry.

Why not MONAI's ``PatchInferer`` + ``WSISlidingWindowSplitter``: they batch independent patches;
a sequence whose memory carries over from tile to tile needs tiles fed in path order, one stream,
with positions, so the tile loop is ours (the splitter's grid also leaves the slide's remainder
uncovered). MONAI's ``WSIReader`` (OpenSlide backend) reads, and its ``compute_importance_map``
gives the blending weights.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import numbers
import os
import secrets
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from pathseqsam import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from pathseqsam.atomic import atomic_write, atomic_write_json
from pathseqsam.config_values import config_flag
from pathseqsam.modeling.resolution import model_mpp_um_of
from pathseqsam.ranks import dist_rank_and_world
from pathseqsam.wsi.outputs import (
    draw_contours,
    geojson_feature,
    object_polygon,
    sample_mask,
    write_mask_pyramid,
)
from pathseqsam.wsi.reader import Slide, SlideError, open_slide
from pathseqsam.wsi.stitch import BLEND_MODES, Block, DiskArray, DiskBlender, clean_blocks, map_shape
from pathseqsam.wsi.tiles import TILE_ORDERS, Tile, order_tiles, tile_grid, tissue_mask

__all__ = [
    "SLIDE_SUFFIXES",
    "SlideInferenceSettings",
    "SlideSegmenter",
    "SlideTooLarge",
    "list_slides",
    "load_network_weights",
]

logger = logging.getLogger("pathseqsam")

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


class SlideTooLarge(SlideError):
    """More tissue tiles than ``max_tiles`` allows: refused before any tile is read."""


ProgressCallback = Callable[[int, int], None]
"""Called after every tile with ``(tiles done, tiles in all)``."""


def list_slides(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Slide files from paths, folders (their slide files) or glob patterns, sorted, without repeats.

    The strings are only ever used as paths and glob patterns, never evaluated.

    Raises:
        SlideError: a folder without slide files, or a path or pattern that matches nothing (named in
            the message, with what was expected).
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        if os.path.isdir(pattern):
            hits = sorted(p for p in Path(pattern).iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
            if not hits:
                raise SlideError(
                    f"{pattern}: folder holds no slide file (expected files ending in "
                    f"{', '.join(SLIDE_SUFFIXES)}; give a glob pattern such as '{pattern}/**/*.svs' for "
                    "subfolders)"
                )
        elif os.path.isfile(pattern):
            hits = [Path(pattern)]
        else:
            hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not hits:
                raise SlideError(
                    f"{pattern}: no such file or folder, and no file matches it as a glob pattern "
                    "(expected a slide file, a folder of slides or a pattern such as 'slides/*.svs')"
                )
        found.extend(h for h in hits if h not in found)
    return found


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, device: Any = "cpu") -> None:
    """Load the bundle's ``model.pt`` (a state dict, or ``{"model": state dict}``) strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (train the bundle first, or set ckpt_path)")
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict) and set(state) == {"model"}:
        state = state["model"]
    network.load_state_dict(state, strict=True)


@dataclass
class SlideInferenceSettings:
    """How a slide is tiled, segmented and cleaned (micrometres throughout).

    The bundle declares these once, under their own names, as the ``slide_settings`` node of
    ``configs/inference_wsi.json`` (overridden as ``--slide_settings#chunk 4``); ``evaluate_wsi.json``
    and the MONAI Label app read the same node. Values are checked and converted to the field's type
    here (``"true"``/``"false"`` words for flags, numbers for numbers), so a bad one fails when the
    settings are made, naming the field.

    Attributes:
        model_mpp_um: the network's working resolution; every read is resampled to it. None (the
            bundle's way): the resolution the network carries with its weights
            (:func:`~pathseqsam.modeling.resolution.model_mpp_um_of`), filled in by
            :class:`SlideSegmenter`.
        image_size: the network's input side in pixels; None: the network's ``image_size``.
        tile_um: tile side; default the field of view ``image_size * model_mpp_um``. (KPIs Task 2:
            1024 um tiles every 512 um, i.e. 2048 px at 20x with stride 1024.)
        stride_um: distance between tile starts; default ``tile_um / 2`` (50 % overlap). Also the
            distance unit of Eq. 1 for the sequence.
        order: tile order, ``"serpentine"`` or ``"short_path"``.
        per_tile: segment every tile alone (no memory, overlaps blended). The bundle's
            ``inference_wsi.json`` sets it true: in the whole-slide benchmark the tile sequence
            did not beat it and ran at a fraction of its speed
            (``docs/experiments/wsi_sequence/report.md``). False here runs the tiles as one sequence.
        blend: ``"gaussian"`` or ``"constant"`` tile weights.
        threshold: probability threshold.
        min_object_um2: objects smaller than this are removed.
        fill_holes: fill holes inside objects.
        max_object_um: context around each cleaning block; objects up to this size are judged whole.
        tissue_mpp_um: resolution of the overview for the tissue mask and the thumbnail (finer for
            slides under 1024 px at it, coarser for those over 2048 px at it).
        min_tissue_fraction: a tile is kept when more than this fraction of it is tissue.
        restrict_to_tissue: drop predictions outside the tissue mask (grown by one overview pixel).
        chunk: tiles read and encoded together.
        mpp_um: the slides' level-0 micrometres per pixel, when their metadata lacks it (or is wrong).
        overwrite: replace an existing ``OUTPUT/<slide name>/``.
        max_tiles: refuse a slide (:class:`SlideTooLarge`) with more tissue tiles than this, before
            any tile is read; None: no limit.
        write_images: write ``mask.tif`` and ``thumbnail.png``; False writes only the polygons and
            the summary (the MONAI Label server answers with the polygons).

    Raises:
        ValueError: a value of the wrong type or out of range (the field named).
    """

    model_mpp_um: float | None = None
    image_size: int | None = None
    tile_um: float | None = None
    stride_um: float | None = None
    order: str = "serpentine"
    per_tile: bool = False
    blend: str = "gaussian"
    threshold: float = 0.5
    min_object_um2: float = 1000.0
    fill_holes: bool = True
    max_object_um: float = 600.0
    tissue_mpp_um: float = 16.0
    min_tissue_fraction: float = 0.0
    restrict_to_tissue: bool = True
    chunk: int = 8
    mpp_um: float | None = None
    overwrite: bool = False
    max_tiles: int | None = None
    write_images: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(getattr(self, f.name), hints[f.name], f.name))
        for name in ("model_mpp_um", "image_size", "tile_um", "stride_um", "tissue_mpp_um", "mpp_um"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"slide setting {name!r} = {value!r}: expected a positive number")
        if self.order not in TILE_ORDERS:
            raise ValueError(f"order must be one of {TILE_ORDERS}, got {self.order!r}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"slide setting 'blend' = {self.blend!r}: expected one of {BLEND_MODES}")
        if self.chunk < 1 or (self.max_tiles is not None and self.max_tiles < 1):
            raise ValueError(f"chunk and max_tiles must be >= 1, got {self.chunk}, {self.max_tiles}")
        # the defaults that depend on the network's geometry wait until it is known
        if self.tile_um is None and self.model_mpp_um is not None and self.image_size is not None:
            self.tile_um = self.image_size * self.model_mpp_um
        if self.stride_um is None and self.tile_um is not None:
            self.stride_um = self.tile_um / 2.0
        if self.tile_um is not None and not (0 < self.stride_um <= self.tile_um):
            raise ValueError(f"need 0 < stride_um <= tile_um, got {self.stride_um}, {self.tile_um}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")

    @property
    def tile_px(self) -> int:
        return round(self.tile_um / self.model_mpp_um)


def _typed(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the field type ``hint`` (``bool``, ``int``, ``float``, ``str``, optionally ``| None``).

    Flags take :func:`~pathseqsam.config_values.config_flag` words (a command line gives strings);
    numbers must be numbers (a string never becomes one); a whole float is no ``int``.
    """
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    kind = next((a for a in args if a is not type(None)), hint)
    if kind is bool:
        return config_flag(value, name)
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    if kind is str and isinstance(value, str):
        return value
    expected = {int: "a whole number", float: "a finite number", str: "a string"}[kind]
    optional = " or null" if type(None) in args else ""
    raise ValueError(f"slide setting {name!r} = {value!r}: expected {expected}{optional}")


def _inside_region(
    tissue: np.ndarray, region: Sequence[int], slide: Slide, overview_mpp: float
) -> np.ndarray:
    """The tissue mask (at ``overview_mpp``) cleared outside ``region`` (level-0 ``x, y, w, h``)."""
    x, y, w, h = (int(v) for v in region)
    x1, y1 = min(x + w, slide.width), min(y + h, slide.height)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x >= x1 or y >= y1:
        raise SlideError(
            f"{slide.path.name}: region x={x}, y={y}, width={w}, height={h} (level-0 pixels) does not lie "
            f"inside the slide ({slide.width}x{slide.height} px)"
        )
    per_px = slide.mpp_um / overview_mpp  # overview pixels per level-0 pixel
    r0, c0 = int(y * per_px), int(x * per_px)
    r1, c1 = max(r0 + 1, math.ceil(y1 * per_px)), max(c0 + 1, math.ceil(x1 * per_px))
    inside = np.zeros_like(tissue)
    inside[r0:r1, c0:c1] = tissue[r0:r1, c0:c1]
    return inside


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class _Tissue:
    """What the tissue step found: the overview (RGB at ``overview_mpp`` um/px), its tissue mask,
    the tissue tiles in path order and the tissue area."""

    overview: np.ndarray
    overview_mpp: float
    tissue: np.ndarray
    tiles: list[Tile]
    tissue_mm2: float


@dataclass
class _Objects:
    """What the cleaning step found: GeoJSON features, their areas (um^2), how many may be cut."""

    features: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    areas: list[float] = dataclasses.field(default_factory=list)
    truncated: int = 0


def _settings_for(network: torch.nn.Module, fields: dict[str, Any]) -> SlideInferenceSettings:
    """The settings ``fields`` with the network's geometry filled in (see :class:`SlideSegmenter`)."""
    carried = model_mpp_um_of(network)  # the resolution the weights were trained at, if known
    given = fields.get("model_mpp_um")
    if given is None:
        if carried is None:
            raise ValueError(
                f"{type(network).__name__} carries no model_mpp_um (the resolution its weights were "
                "trained at): build it with build_pathseqsam(model_mpp_um=...) or give model_mpp_um"
            )
        fields["model_mpp_um"] = carried
    elif carried is not None and not math.isclose(carried, float(given), rel_tol=1e-6):
        raise ValueError(
            f"model_mpp_um={given} but the network works at {carried} um/px "
            "(its weights were trained there): slides must be resampled to the network's resolution"
        )
    if fields.get("image_size") is None:
        fields["image_size"] = int(getattr(network, "image_size", 128))
    return SlideInferenceSettings(**fields)


class SlideSegmenter:
    """Segment glomeruli on whole slides with a PathSeqSAM network (see the module docstring).

    Args:
        network: a :class:`~pathseqsam.modeling.network.PathSeqSAM` (put in eval mode here).
        output_dir: results go to ``output_dir/<slide name>/``.
        checkpoint: optional weights file loaded into ``network`` (the bundle's ``model.pt``).
        device: torch device (default: the network's).
        amp: bf16 autocast on CUDA.
        shard: with a torch.distributed process group, each rank takes every ``world``-th slide.
        settings: a :class:`SlideInferenceSettings` (the bundle's ``slide_settings`` node) or a
            mapping of its fields; default all defaults.
        **fields: :class:`SlideInferenceSettings` fields that replace those of ``settings``.

    The working resolution ``model_mpp_um`` is the one the network carries with its weights (read
    after ``checkpoint`` is loaded); settings that name another are refused, since the slide would
    be read at a scale the weights never saw. A network without one (not built by
    :func:`pathseqsam.build_pathseqsam` with ``model_mpp_um``) needs it in the settings.

    Raises:
        ValueError: a bad setting (named), or no or a conflicting ``model_mpp_um``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        device: Any = None,
        amp: bool = False,
        shard: bool = True,
        settings: SlideInferenceSettings | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        self.network = network
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        if checkpoint is not None:
            load_network_weights(network, checkpoint, self.device)
        if isinstance(settings, SlideInferenceSettings):
            settings = asdict(settings)
        self.settings = _settings_for(network, {**(settings or {}), **fields})
        self.output_dir = Path(output_dir)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.shard = shard

    # ------------------------------------------------------------------ many slides
    def run(self, slides: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
        """Segment every slide of ``slides`` (paths, folders or glob patterns); this rank's share only.

        Returns:
            The summaries of the slides this process segmented.
        """
        paths = list_slides(slides)
        rank, world = dist_rank_and_world() if self.shard else (0, 1)
        mine = paths[rank::world]
        logger.info(
            "slides: %d (this process: %d of them, rank %d of %d)", len(paths), len(mine), rank, world
        )
        return [self.segment(p) for p in mine]

    # ------------------------------------------------------------------ one slide
    def segment(
        self,
        slide_path: str | os.PathLike,
        region: Sequence[int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Segment one slide and write its outputs; returns its summary (also ``summary.json``).

        Args:
            slide_path: the slide file.
            region: optional ``(x, y, width, height)`` in level-0 pixels: only tissue inside it is
                tiled (and, with ``restrict_to_tissue``, only objects there are kept).
            progress: optional callback ``(tiles done, tiles in all)`` after every tile.

        Raises:
            SlideError: the slide cannot be read, the output exists, ``region`` misses the slide;
                SlideTooLarge: more tissue tiles than ``max_tiles``.
        """
        slide_path = Path(slide_path)
        cfg = self.settings
        with open_slide(slide_path, cfg.mpp_um) as slide:
            final = self.output_dir / slide.name
            if final.exists() and not cfg.overwrite:
                raise SlideError(
                    f"{final}: exists (results of an earlier run for {slide_path}); choose another "
                    "output_dir or set overwrite=True (--slide_settings#overwrite true) to replace it"
                )
            self.output_dir.mkdir(parents=True, exist_ok=True)
            work = self.output_dir / f".{slide.name}.partial-{secrets.token_hex(4)}"
            work.mkdir()
            try:
                summary = self._segment_into(slide, work, region, progress)
                shutil.rmtree(work / "scratch")
                if final.exists():  # overwrite: move the old folder aside, then swap
                    trash = self.output_dir / f".{slide.name}.old-{secrets.token_hex(4)}"
                    os.replace(final, trash)
                    os.replace(work, final)
                    shutil.rmtree(trash)
                else:
                    os.replace(work, final)
            finally:
                if work.exists():
                    shutil.rmtree(work)
        return summary

    def _segment_into(
        self,
        slide: Slide,
        work: Path,
        region: Sequence[int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """The steps of one slide, each timed into ``timings``; the outputs go to ``work``."""
        cfg = self.settings
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        scratch = work / "scratch"
        scratch.mkdir()
        found = self._tissue_tiles(slide, region, timings)
        shape = map_shape(
            slide.width * slide.mpp_um, slide.height * slide.mpp_um, cfg.model_mpp_um, cfg.tile_px
        )
        blender = DiskBlender(scratch, shape, cfg.tile_px, cfg.blend)
        if found.tiles:
            self._infer_tiles(slide, found.tiles, blender, timings, progress)
        else:
            logger.warning("%s: no tissue found; writing empty outputs", slide.path)
        mask = DiskArray(scratch / "mask.u8", shape, np.uint8)
        objects = self._block_objects(slide, found, blender, mask, timings)
        self._write_outputs(slide, work, found, mask, objects.features, timings)
        timings["total_s"] = time.perf_counter() - t_start
        summary = self._summary(slide, region, found, objects, timings)
        atomic_write_json(work / "summary.json", summary)
        logger.info(
            "%s: %d glomeruli on %.2f mm^2 of tissue, %d tiles, %.1f s",
            slide.path,
            len(objects.features),
            found.tissue_mm2,
            len(found.tiles),
            timings["total_s"],
        )
        return summary

    # ------------------------------------------------------------------ the steps of one slide
    def _tissue_tiles(self, slide: Slide, region: Sequence[int] | None, timings: dict[str, float]) -> _Tissue:
        """The overview, its tissue mask (inside ``region``) and the tissue tiles in path order."""
        cfg = self.settings
        t0 = time.perf_counter()
        width_um, height_um = slide.width * slide.mpp_um, slide.height * slide.mpp_um
        # the overview serves the tissue mask and the thumbnail: about 1024-2048 px on the long side
        extent = max(width_um, height_um)
        overview_mpp = max(extent / 2048.0, min(cfg.tissue_mpp_um, extent / 1024.0), slide.mpp_um)
        overview = slide.read_overview(overview_mpp)
        tissue = tissue_mask(overview)
        if region is not None:
            tissue = _inside_region(tissue, region, slide, overview_mpp)
        tiles = tile_grid(
            width_um, height_um, cfg.tile_um, cfg.stride_um, tissue, overview_mpp, cfg.min_tissue_fraction
        )
        if cfg.max_tiles is not None and len(tiles) > cfg.max_tiles:
            raise SlideTooLarge(
                f"{slide.path.name}: {len(tiles)} tissue tiles of {cfg.tile_um:g} um, more than the limit "
                f"of {cfg.max_tiles} (max_tiles); segment a region of the slide or raise the limit"
            )
        tiles = order_tiles(tiles, cfg.order)
        timings["tissue_s"] = time.perf_counter() - t0
        tissue_mm2 = float(tissue.sum()) * overview_mpp**2 / 1e6
        return _Tissue(overview, overview_mpp, tissue, tiles, tissue_mm2)

    def _block_objects(
        self, slide: Slide, found: _Tissue, blender: DiskBlender, mask: DiskArray, timings: dict[str, float]
    ) -> _Objects:
        """Threshold and clean the blended map block by block into ``mask``; one polygon per object."""
        cfg = self.settings
        t0 = time.perf_counter()
        objects = _Objects()
        min_area_px = cfg.min_object_um2 / cfg.model_mpp_um**2
        halo = math.ceil(cfg.max_object_um / cfg.model_mpp_um)
        in_tissue = self._tissue_window(found) if cfg.restrict_to_tissue and found.tiles else None
        blocks = clean_blocks(
            blender, cfg.threshold, min_area_px, cfg.fill_holes, halo=halo, region_mask=in_tissue
        )
        for block in blocks if found.tiles else ():
            mask.write(block.y0, block.x0, block.core(block.mask).astype(np.uint8))
            if block.n == 0:
                continue
            for ring, area_um2, mean_prob, cut in self._objects_in(slide, block, mask.shape):
                objects.truncated += int(cut)
                objects.areas.append(area_um2)
                name = f"Glomerulus {len(objects.features) + 1}"
                objects.features.append(geojson_feature(ring, area_um2, mean_prob, name))
        if objects.truncated:
            logger.warning(
                "%s: %d objects are larger than max_object_um=%g: their outlines may be cut",
                slide.path,
                objects.truncated,
                cfg.max_object_um,
            )
        timings["clean_s"] = time.perf_counter() - t0
        return objects

    def _tissue_window(self, found: _Tissue) -> Callable[[int, int, int, int], np.ndarray]:
        """``(y0, x0, y1, x1) ->`` where the map's window may hold objects: the tissue, grown.

        The tissue mask, grown by one overview pixel, sampled at the map's pixel centres: the
        network sees glass at the tissue's edge and some models "find" glomeruli there.
        """
        grown = ndimage.binary_dilation(found.tissue, iterations=1)
        per_px = self.settings.model_mpp_um / found.overview_mpp  # overview pixels per map pixel

        def in_tissue(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
            rows = np.minimum(((np.arange(y0, y1) + 0.5) * per_px).astype(np.int64), grown.shape[0] - 1)
            cols = np.minimum(((np.arange(x0, x1) + 0.5) * per_px).astype(np.int64), grown.shape[1] - 1)
            return grown[np.ix_(rows, cols)]

        return in_tissue

    def _objects_in(
        self, slide: Slide, block: Block, shape: tuple[int, int]
    ) -> Iterator[tuple[np.ndarray, float, float, bool]]:
        """The objects ``block`` owns: ``(ring in level-0 pixels, area um^2, mean probability, cut)``.

        An object belongs to the block holding its top-left pixel; ``cut`` marks one touching an
        inner edge of the block's window (larger than the halo: its outline may be cut there).
        """
        mpp = self.settings.model_mpp_um
        to_level0 = mpp / slide.mpp_um  # level-0 pixels per working pixel
        wh, ww = block.labels.shape
        for label, sl in enumerate(ndimage.find_objects(block.labels), start=1):
            if sl is None:
                continue
            top, left = sl[0].start + block.wy0, sl[1].start + block.wx0
            if not (block.y0 <= top < block.y1 and block.x0 <= left < block.x1):
                continue  # another block owns it
            crop = block.labels[sl] == label
            cut = (
                (sl[0].start == 0 and block.wy0 > 0)
                or (sl[1].start == 0 and block.wx0 > 0)
                or (sl[0].stop == wh and block.wy0 + wh < shape[0])
                or (sl[1].stop == ww and block.wx0 + ww < shape[1])
            )
            ring = object_polygon(crop)
            ring[:, 0] = (ring[:, 0] + left + 0.5) * to_level0
            ring[:, 1] = (ring[:, 1] + top + 0.5) * to_level0
            ring[:, 0] = np.clip(ring[:, 0], 0, slide.width)
            ring[:, 1] = np.clip(ring[:, 1], 0, slide.height)
            yield ring, float(crop.sum()) * mpp**2, float(block.prob[sl][crop].mean()), cut

    def _write_outputs(
        self,
        slide: Slide,
        work: Path,
        found: _Tissue,
        mask: DiskArray,
        features: list[dict[str, Any]],
        timings: dict[str, float],
    ) -> None:
        """``glomeruli.geojson``, and with ``write_images`` ``mask.tif`` and ``thumbnail.png``."""
        cfg = self.settings
        t0 = time.perf_counter()
        atomic_write_json(work / "glomeruli.geojson", {"type": "FeatureCollection", "features": features})
        if cfg.write_images:
            atomic_write(
                work / "mask.tif",
                lambda tmp: write_mask_pyramid(
                    tmp, mask, cfg.model_mpp_um, slide.width, slide.height, slide.mpp_um
                ),
            )
            thumbnail = draw_contours(found.overview, self._overview_mask(found, mask) > 0)
            atomic_write(
                work / "thumbnail.png", lambda tmp: Image.fromarray(thumbnail).save(tmp, format="PNG")
            )
        timings["write_s"] = time.perf_counter() - t0

    def _overview_mask(self, found: _Tissue, mask: DiskArray) -> np.ndarray:
        """The cleaned mask sampled onto the overview's pixels, 256 x 256 at a time."""
        out = np.zeros(found.overview.shape[:2], dtype=np.uint8)
        scale = found.overview_mpp / self.settings.model_mpp_um
        for y in range(0, out.shape[0], 256):
            for x in range(0, out.shape[1], 256):
                h, w = min(256, out.shape[0] - y), min(256, out.shape[1] - x)
                out[y : y + h, x : x + w] = sample_mask(mask, scale, y, x, h, w)
        return out

    def _summary(
        self,
        slide: Slide,
        region: Sequence[int] | None,
        found: _Tissue,
        objects: _Objects,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """``summary.json``: the slide, what was found, the settings and the timings."""
        cfg = self.settings
        n_tiles, areas, tissue_mm2 = len(found.tiles), objects.areas, found.tissue_mm2
        return {
            "slide": str(slide.path),
            "name": slide.name,
            "reader": slide.backend,
            "width_px": slide.width,
            "height_px": slide.height,
            "mpp_um": slide.mpp_um,
            "levels": len(slide.levels),
            "read_level": slide.best_level(cfg.model_mpp_um),
            "tissue_mm2": round(tissue_mm2, 4),
            "region": None if region is None else [int(v) for v in region],
            "tiles": n_tiles,
            "count": len(objects.features),
            "areas_um2": [round(a, 2) for a in areas],
            "mean_area_um2": round(float(np.mean(areas)), 2) if areas else None,
            "objects_cut_by_halo": objects.truncated,
            "message": None if n_tiles else "no tissue found",
            "settings": {**asdict(cfg), "tile_px": cfg.tile_px},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "tiles_per_s": round(n_tiles / timings["network_s"], 3)
            if n_tiles and timings.get("network_s")
            else None,
            "s_per_mm2_tissue": round(timings["total_s"] / tissue_mm2, 3) if tissue_mm2 > 0 else None,
        }

    # ------------------------------------------------------------------ tiles through the network
    def _tile_chunks(
        self, slide: Slide, tiles: list[Tile], timings: dict[str, float]
    ) -> Iterator[torch.Tensor]:
        """``[1, 3, c, P, P]`` normalised tile chunks, the next one read in a background thread."""
        cfg = self.settings
        px = cfg.tile_px
        to_level0 = 1.0 / slide.mpp_um  # level-0 pixels per micrometre
        mean = torch.tensor(SAM2_PIXEL_MEAN).view(1, 3, 1, 1, 1)
        std = torch.tensor(SAM2_PIXEL_STD).view(1, 3, 1, 1, 1)

        def read(chunk: list[Tile]) -> torch.Tensor:
            t0 = time.perf_counter()
            rgb = np.stack(
                [
                    slide.read_scaled(
                        t.x_um * to_level0,
                        t.y_um * to_level0,
                        t.size_um * to_level0,
                        t.size_um * to_level0,
                        px,
                        px,
                    )
                    for t in chunk
                ]
            )  # [c, P, P, 3]
            x = torch.from_numpy(rgb).permute(3, 0, 1, 2)[None].float() / 255.0
            timings["read_s"] = timings.get("read_s", 0.0) + time.perf_counter() - t0
            return (x - mean) / std

        chunks = [tiles[i : i + cfg.chunk] for i in range(0, len(tiles), cfg.chunk)]
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, chunks[0])
            for i in range(len(chunks)):
                x = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(read, chunks[i + 1])
                yield x.to(self.device)

    def _infer_tiles(
        self,
        slide: Slide,
        tiles: list[Tile],
        blender: DiskBlender,
        timings: dict[str, float],
        progress: ProgressCallback | None = None,
    ) -> None:
        cfg = self.settings
        net = self.network
        net.eval()
        n = len(tiles)
        positions = torch.tensor([t.centre_um for t in tiles], dtype=torch.float32, device=self.device)[None]
        old_unit = getattr(net, "distance_unit_um", None)
        t0 = time.perf_counter()
        last_log = t0
        stitch = 0.0
        try:
            if old_unit is not None:
                net.distance_unit_um = float(cfg.stride_um)  # Eq. 1's unit: one tile step
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                for t, logits in enumerate(self._tile_logits(slide, tiles, positions, timings)):
                    ts = time.perf_counter()
                    prob = torch.sigmoid(logits.float()).cpu().numpy()
                    tile = tiles[t]
                    blender.add(
                        round(tile.y_um / cfg.model_mpp_um), round(tile.x_um / cfg.model_mpp_um), prob
                    )
                    stitch += time.perf_counter() - ts
                    if progress is not None:
                        progress(t + 1, n)
                    now = time.perf_counter()
                    if now - last_log > 10.0 or t + 1 == n:
                        rate = (t + 1) / max(now - t0, 1e-9)
                        logger.info(
                            "%s: tiles %d/%d, %.2f tiles/s, ETA %s",
                            slide.name,
                            t + 1,
                            n,
                            rate,
                            _format_eta((n - t - 1) / rate),
                        )
                        last_log = now
        finally:
            if old_unit is not None:
                net.distance_unit_um = old_unit
        # reads run in a background thread, overlapping the network: "network_s" is the tile loop's
        # wall time less stitching (it includes any wait for a read), "read_s" the reader's busy time
        timings["stitch_s"] = stitch
        timings["network_s"] = time.perf_counter() - t0 - stitch

    def _tile_logits(
        self, slide: Slide, tiles: list[Tile], positions: torch.Tensor, timings: dict[str, float]
    ) -> Iterator[torch.Tensor]:
        """Per tile, in order, its ``[P, P]`` logits."""
        chunks = self._tile_chunks(slide, tiles, timings)
        if self.settings.per_tile:
            for x in chunks:  # [1, 3, c, P, P] -> c independent one-slice sequences
                batch = x[0].transpose(0, 1).unsqueeze(2)  # [c, 3, 1, P, P]
                for step in self.network.iter_slices(batch):
                    yield from step["logits"][:, 0]
        else:
            slide_coords = getattr(self.network, "memory_coordinates", "sequence") == "slide"
            geometry = (
                {"tile_um": self.settings.tile_um, "stride_um": self.settings.stride_um}
                if slide_coords
                else {}
            )
            for step in self.network.iter_slice_stream(chunks, positions, num_slices=len(tiles), **geometry):
                yield step["logits"][0, 0]
