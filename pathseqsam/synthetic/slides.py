"""Synthetic whole slides: tissue sections with glomeruli, written tile by tile as pyramidal TIFFs.

A slide is a small analytic scene (section outlines, glomerulus discs) evaluated at the pixel
centres of one tile at a time, for every pyramid level, so a 40,000 x 40,000 slide is written
without ever being in memory. Each slide comes with its exact glomerulus mask TIFF in the same
geometry, in the KPIs Task 2 layout (``Task2_WSI_level/<class>/<id>_wsi.tiff`` + ``<id>_mask.tiff``).

:func:`write_synthetic_slide` also writes an Aperio-layout ``.svs`` (JPEG tiles, an Aperio
``ImageDescription`` with ``MPP``) that OpenSlide's Aperio driver opens.

The bundle's demo slides (``<bundle_root>/data/synthetic_wsi``) are written by a command, never by
an inference or evaluation job (:func:`require_synthetic_task2` says which)::

    python -m pathseqsam.synthetic slides --out bundle/data/synthetic_wsi
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathseqsam.atomic import atomic_write
from pathseqsam.synthetic.slide_fields import MAX_BLUR_UM, SlideFields, apply_fields, make_slide_fields

__all__ = [
    "SYNTHETIC_SLIDES_META",
    "SYNTHETIC_SLIDE_CLASS",
    "SyntheticSlideScene",
    "demo_slides_command",
    "ensure_synthetic_task2",
    "main",
    "make_slide_scene",
    "require_synthetic_task2",
    "write_synthetic_slide",
    "write_synthetic_task2",
]

SYNTHETIC_SLIDE_CLASS = "synthetic"
SYNTHETIC_SLIDES_META = "synthetic_slides.json"
_TILE = 256
_BACKGROUND = np.array([243.0, 241.0, 244.0])
_TISSUE = np.array([226.0, 150.0, 190.0])
_GLOMERULUS = np.array([150.0, 70.0, 150.0])
_BOWMAN = np.array([238.0, 215.0, 230.0])


@dataclass
class SyntheticSlideScene:
    """An analytic slide: sections (wobbly ellipses) and glomeruli (discs), in level-0 pixels.

    Attributes:
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp_um: micrometres per level-0 pixel.
        sections: rows ``(cx, cy, rx, ry, angle, a2, p2, a3, p3, a5, p5)``: centre, radii, rotation and
            the outline's wobble (relative amplitudes and phases of harmonics 2, 3, 5).
        glomeruli: rows ``(cx, cy, r)``.
        fields: stain, thickness, focus and damage over the slide
            (:mod:`~pathseqsam.synthetic.slide_fields`); None: uniform (the demo slides).
    """

    width: int
    height: int
    mpp_um: float
    sections: np.ndarray = field(default_factory=lambda: np.zeros((0, 11)))
    glomeruli: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    fields: SlideFields | None = None

    def _in_section(self, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
        cx, cy, rx, ry, ang, a2, p2, a3, p3, a5, p5 = s
        c, sn = math.cos(ang), math.sin(ang)
        u, v = (x - cx) * c + (y - cy) * sn, -(x - cx) * sn + (y - cy) * c
        rho = np.hypot(u / rx, v / ry)
        # only pixels near the outline need the (costly) angle: the wobble is at most sum |a_k|
        wobble = abs(a2) + abs(a3) + abs(a5)
        inside = rho < 1.0 - wobble
        band = ~inside & (rho < 1.0 + wobble)
        if band.any():
            theta = np.arctan2(v[band] / ry, u[band] / rx)
            edge = (
                1.0 + a2 * np.cos(2 * theta + p2) + a3 * np.cos(3 * theta + p3) + a5 * np.cos(5 * theta + p5)
            )
            inside[band] = rho[band] < edge
        return inside

    def render(
        self, x0: float, y0: float, width: int, height: int, downsample: float = 1.0, mask_only: bool = False
    ):
        """RGB ``uint8 [height, width, 3]`` and mask ``bool [height, width]`` of one region of a level.

        Args:
            x0: left edge in LEVEL pixels.
            y0: top edge in level pixels.
            width: region width in level pixels.
            height: region height in level pixels.
            downsample: the level's downsample from level 0.
            mask_only: skip the colours (``rgb`` is None): for writing the mask.

        Returns:
            ``(rgb, mask)``.
        """
        xs = ((x0 + np.arange(width) + 0.5) * downsample).astype(np.float32)
        ys = ((y0 + np.arange(height) + 0.5) * downsample).astype(np.float32)
        x, y = np.meshgrid(xs, ys)
        reach_x0, reach_x1, reach_y0, reach_y1 = xs[0], xs[-1], ys[0], ys[-1]
        tissue = np.zeros((height, width), bool)
        for s in self.sections:
            reach = max(s[2], s[3]) * (1.0 + abs(s[5]) + abs(s[7]) + abs(s[9]))
            if (
                s[0] + reach < reach_x0
                or s[0] - reach > reach_x1
                or s[1] + reach < reach_y0
                or s[1] - reach > reach_y1
            ):
                continue
            tissue |= self._in_section(x, y, s)
        glom = np.zeros((height, width), bool)
        bowman = np.zeros((height, width), bool)
        values = None if self.fields is None else self.fields.at(x, y)
        if values is not None:  # focus: glomerulus edges soft over 2 sigma (level-0 pixels)
            edge_px = np.maximum(2.0 * values[2] * MAX_BLUR_UM / self.mpp_um, 1e-3)
            alpha = np.zeros((height, width), np.float32)
        g = self.glomeruli
        near = (
            (g[:, 0] + 1.2 * g[:, 2] >= reach_x0)
            & (g[:, 0] - 1.2 * g[:, 2] <= reach_x1)
            & (g[:, 1] + 1.2 * g[:, 2] >= reach_y0)
            & (g[:, 1] - 1.2 * g[:, 2] <= reach_y1)
        )
        for cx, cy, r in g[near]:
            d = np.hypot(x - np.float32(cx), y - np.float32(cy))
            glom |= d < r
            bowman |= (d >= r) & (d < 1.15 * r)
            if values is not None:
                alpha = np.maximum(alpha, np.clip((np.float32(r) - d) / edge_px + 0.5, 0.0, 1.0))
        glom &= tissue
        if mask_only:
            return None, glom
        if values is not None:
            return self._render_with_fields(x, y, tissue, bowman, alpha * tissue, values), glom
        # low-frequency texture from level-0 coordinates: the same tissue at every level and tile
        tex = 0.5 + 0.25 * np.sin(x * 0.045 + np.sin(y * 0.013)) * np.cos(y * 0.037 + np.sin(x * 0.011))
        rgb = np.broadcast_to(_BACKGROUND, (height, width, 3)).copy()
        rgb[tissue] = _TISSUE - 40.0 * tex[tissue, None]
        rgb[tissue & bowman] = _BOWMAN
        rgb[glom] = _GLOMERULUS - 30.0 * tex[glom, None]
        return np.clip(rgb, 0, 255).astype(np.uint8), glom

    def _render_with_fields(
        self,
        x: np.ndarray,
        y: np.ndarray,
        tissue: np.ndarray,
        bowman: np.ndarray,
        alpha: np.ndarray,
        values: np.ndarray,
    ) -> np.ndarray:
        """The region's colours under the slide's factor fields (focus flattens texture, softens edges)."""
        height, width = tissue.shape
        sharp = (1.0 - 0.8 * values[2])[..., None]
        tex = (0.5 + 0.25 * np.sin(x * 0.045 + np.sin(y * 0.013)) * np.cos(y * 0.037 + np.sin(x * 0.011)))[
            ..., None
        ]
        tissue_rgb = _TISSUE - 40.0 * (0.5 + sharp * (tex - 0.5))
        tissue_rgb = np.where(bowman[..., None] & (alpha[..., None] < 0.5), _BOWMAN, tissue_rgb)
        glom_rgb = _GLOMERULUS - 30.0 * (0.5 + sharp * (tex - 0.5))
        a = alpha[..., None]
        rgb = np.broadcast_to(_BACKGROUND, (height, width, 3)).copy()
        rgb = np.where(tissue[..., None], (1 - a) * tissue_rgb + a * glom_rgb, rgb)
        rgb = apply_fields(rgb, _BACKGROUND, tissue, alpha, values, _TISSUE, _GLOMERULUS)
        return np.clip(rgb, 0, 255).astype(np.uint8)


def make_slide_scene(
    width: int,
    height: int,
    mpp_um: float = 0.5,
    n_sections: int = 3,
    n_glomeruli: int = 60,
    glomerulus_radius_um: tuple[float, float] = (40.0, 75.0),
    seed: int = 0,
    ell_strides: float | None = None,
    stride_um: float = 128.0,
) -> SyntheticSlideScene:
    """A random scene: ``n_sections`` sections in a row, ``n_glomeruli`` non-overlapping glomeruli in them.

    Args:
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp_um: micrometres per pixel.
        n_sections: tissue sections, side by side.
        n_glomeruli: glomeruli to place (fewer if the sections are too small; see ``len(scene.glomeruli)``).
        glomerulus_radius_um: radius range in micrometres.
        seed: random seed.
        ell_strides: correlation length of stain, thickness, focus and damage in tile strides
            (:mod:`~pathseqsam.synthetic.slide_fields`); None: none of them (uniform slides). The
            fields draw from their own seed, so the sections and glomeruli do not depend on it.
        stride_um: the tile stride ``ell_strides`` is counted in.

    Returns:
        The scene.
    """
    rng = np.random.default_rng(seed)
    sections = []
    cell_w = width / n_sections
    for i in range(n_sections):
        rx = cell_w * rng.uniform(0.32, 0.4)
        ry = height * rng.uniform(0.3, 0.38)
        amps = rng.uniform(0.0, 0.06, 3)
        phases = rng.uniform(0, 2 * math.pi, 3)
        sections.append(
            [cell_w * (i + 0.5), height * rng.uniform(0.45, 0.55), rx, ry, rng.uniform(-0.3, 0.3)]
            + [v for pair in zip(amps, phases) for v in pair]
        )
    scene = SyntheticSlideScene(width, height, mpp_um, np.array(sections), np.zeros((0, 3)))
    glomeruli: list[tuple[float, float, float]] = []
    for _ in range(n_glomeruli * 60):
        if len(glomeruli) >= n_glomeruli:
            break
        r = rng.uniform(*glomerulus_radius_um) / mpp_um
        s = scene.sections[rng.integers(len(scene.sections))]
        ang = rng.uniform(0, 2 * math.pi)
        rad = math.sqrt(rng.uniform(0, 0.8))
        c, sn = math.cos(s[4]), math.sin(s[4])
        u, v = rad * s[2] * math.cos(ang), rad * s[3] * math.sin(ang)
        cx, cy = s[0] + u * c - v * sn, s[1] + u * sn + v * c
        if not bool(scene._in_section(np.array([cx]), np.array([cy]), s)[0]):
            continue
        if glomeruli:
            g = np.asarray(glomeruli)
            if (np.hypot(g[:, 0] - cx, g[:, 1] - cy) < 1.3 * (r + g[:, 2])).any():
                continue
        glomeruli.append((cx, cy, r))
    scene.glomeruli = np.array(glomeruli, dtype=np.float64).reshape(-1, 3)
    if ell_strides is not None:
        scene.fields = make_slide_fields(
            width, height, mpp_um, stride_um, ell_strides, np.random.SeedSequence([seed, 7919])
        )
    return scene


def _levels(width: int, height: int, min_side: int = 512) -> list[int]:
    """Downsample factors 1, 2, 4, ... until the level's longer side is <= ``min_side``."""
    factors = [1]
    while max(width, height) / factors[-1] > min_side:
        factors.append(factors[-1] * 2)
    return factors


def _tiles(scene: SyntheticSlideScene, ds: int, want_mask: bool) -> Iterator[np.ndarray]:
    lw, lh = math.ceil(scene.width / ds), math.ceil(scene.height / ds)
    for ty in range(0, lh, _TILE):
        for tx in range(0, lw, _TILE):
            rgb, mask = scene.render(tx, ty, _TILE, _TILE, ds, mask_only=want_mask)
            yield (mask.astype(np.uint8) * 255) if want_mask else rgb


def _write_pyramid(path: Path, scene: SyntheticSlideScene, want_mask: bool, svs: bool) -> None:
    import tifffile

    factors = _levels(scene.width, scene.height)
    compression = "zlib" if want_mask else "jpeg"
    with tifffile.TiffWriter(path, bigtiff=not svs) as tif:
        for k, ds in enumerate(factors):
            lw, lh = math.ceil(scene.width / ds), math.ceil(scene.height / ds)
            kwargs: dict = {}
            if svs:
                kwargs["description"] = (
                    f"Aperio Image Library v12.0.15 \r\n{scene.width}x{scene.height} [0,0 {lw}x{lh}] "
                    f"({_TILE}x{_TILE}) JPEG/RGB Q=90|AppMag = 20|MPP = {scene.mpp_um:.4f}"
                )
                kwargs["metadata"] = None
            else:
                res = 1e4 / (scene.mpp_um * ds)  # pixels per centimetre
                kwargs["resolution"] = (res, res)
                kwargs["resolutionunit"] = "CENTIMETER"
            tif.write(
                _tiles(scene, ds, want_mask),
                shape=(lh, lw) if want_mask else (lh, lw, 3),
                dtype=np.uint8,
                tile=(_TILE, _TILE),
                compression=compression,
                compressionargs={"level": 90} if compression == "jpeg" else None,
                photometric="minisblack" if want_mask else "rgb",
                subfiletype=0 if k == 0 else 1,
                **kwargs,
            )


def write_synthetic_slide(
    path: str | os.PathLike,
    scene: SyntheticSlideScene,
    mask_path: str | os.PathLike | None = None,
    svs: bool = False,
) -> Path:
    """Write ``scene`` as a pyramidal tiled TIFF (JPEG tiles, resolution tags in cm), tile by tile.

    Reduced levels are top-level pages (OpenSlide's generic-TIFF reader ignores SubIFDs).

    Args:
        path: slide file (``.tiff``; ``.svs`` with ``svs=True``).
        scene: what to draw.
        mask_path: optional glomerulus mask TIFF (uint8 0/255, deflate, same geometry and pyramid).
        svs: write the Aperio layout (classic TIFF, Aperio ``ImageDescription`` with ``MPP``,
            no resolution tags) instead of a generic TIFF.

    Returns:
        The slide path.
    """
    path = Path(path)
    atomic_write(path, lambda tmp: _write_pyramid(tmp, scene, want_mask=False, svs=svs))
    if mask_path is not None:
        atomic_write(Path(mask_path), lambda tmp: _write_pyramid(tmp, scene, want_mask=True, svs=False))
    return path


def write_synthetic_task2(
    root: str | os.PathLike,
    n_slides: int = 1,
    size_px: int = 2048,
    mpp_um: float = 1.0,
    n_glomeruli: int = 60,
    seed: int = 0,
    ell_strides: float | Sequence[float] | None = None,
    stride_um: float = 128.0,
) -> list[dict[str, str]]:
    """Synthetic slides in the KPIs Task 2 layout: ``root/Task2_WSI_level/synthetic/<id>_{wsi,mask}.tiff``.

    Args:
        root: dataset root.
        n_slides: number of slides.
        size_px: level-0 side in pixels (square slides).
        mpp_um: micrometres per pixel.
        n_glomeruli: glomeruli per slide.
        seed: random seed (slide ``i`` uses ``seed + i``).
        ell_strides: correlation length of the slide-wide factors in strides (None: uniform slides);
            see :func:`make_slide_scene`. A sequence: slide ``i`` takes ``ell_strides[i % len]``.
        stride_um: the stride ``ell_strides`` is counted in.

    Returns:
        ``[{"slide": path, "mask": path}]``.
    """
    folder = Path(root) / "Task2_WSI_level" / SYNTHETIC_SLIDE_CLASS
    out = []
    for i in range(n_slides):
        scene = make_slide_scene(
            size_px,
            size_px,
            mpp_um,
            n_glomeruli=n_glomeruli,
            seed=seed + i,
            ell_strides=ell_strides[i % len(ell_strides)]
            if isinstance(ell_strides, Sequence)
            else ell_strides,
            stride_um=stride_um,
        )
        slide, mask = folder / f"syn_{i:02d}_wsi.tiff", folder / f"syn_{i:02d}_mask.tiff"
        write_synthetic_slide(slide, scene, mask)
        out.append({"slide": str(slide), "mask": str(mask)})
    return out


def ensure_synthetic_task2(
    root: str | os.PathLike,
    n_slides: int = 2,
    size_px: int = 4096,
    mpp_um: float = 0.5,
    seed: int = 0,
    ell_strides: float | Sequence[float] | None = None,
    stride_um: float = 128.0,
) -> str:
    """The bundle's demo slides: write them into ``root`` unless already there; returns ``root``.

    ``root`` holds a ``synthetic_slides.json`` marker once written; a folder that exists without it
    is someone's data and is left alone (an error).

    Args:
        root: dataset root (KPIs Task 2 layout below it).
        n_slides: slides to write.
        size_px: level-0 side (4096 px at 0.5 um/px: 2 x 2 mm, a 40x-like pyramid).
        mpp_um: micrometres per pixel.
        seed: random seed.
        ell_strides: correlation length of stain, thickness, focus and damage in strides (None:
            uniform slides, the demo's).
        stride_um: the stride ``ell_strides`` is counted in.

    Returns:
        ``root`` as a string.
    """
    from pathseqsam.atomic import atomic_write_json

    root = Path(root)
    marker = root / SYNTHETIC_SLIDES_META
    if marker.is_file():
        return str(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root}: not a synthetic slide set (no {SYNTHETIC_SLIDES_META}); refusing to write into it"
        )
    pairs = write_synthetic_task2(
        root,
        n_slides=n_slides,
        size_px=size_px,
        mpp_um=mpp_um,
        seed=seed,
        ell_strides=ell_strides,
        stride_um=stride_um,
    )
    meta = {"n_slides": n_slides, "size_px": size_px, "mpp_um": mpp_um, "seed": seed, "pairs": pairs}
    if ell_strides is not None:  # the demo's marker stays as it was
        ells = list(ell_strides) if isinstance(ell_strides, Sequence) else [ell_strides]
        meta.update(ell_strides=[None if math.isinf(e) else e for e in ells], stride_um=stride_um)
    atomic_write_json(marker, meta)
    return str(root)


def demo_slides_command(root: str | os.PathLike) -> str:
    """The one shell command that writes :func:`ensure_synthetic_task2`'s demo slides into ``root``."""
    return "python -m pathseqsam.synthetic slides " + shlex.join(["--out", str(root)])


def require_synthetic_task2(root: str | os.PathLike) -> str:
    """``root`` if it holds the demo slides (:func:`ensure_synthetic_task2`'s marker); else an error.

    The whole-slide inference and evaluation jobs call this when left at their default input, the
    bundle's demo folder: they never write data themselves, so a missing demo set stops them with the
    command that makes it.

    Args:
        root: the demo folder (KPIs Task 2 layout below it).

    Returns:
        ``root`` as a string.

    Raises:
        FileNotFoundError: no demo slides there (the folder, what is missing and the command named).
    """
    root = Path(root)
    if (root / SYNTHETIC_SLIDES_META).is_file():
        return str(root)
    state = "does not exist" if not root.exists() else f"holds no {SYNTHETIC_SLIDES_META}"
    raise FileNotFoundError(
        f"demo slide folder {root} {state}: the whole-slide jobs read the synthetic demo slides from it "
        f"(Task2_WSI_level/<class>/<id>_wsi.tiff) but never write them. Make them with: "
        f"{demo_slides_command(root)} (or give your own slides: --slides PATH_OR_GLOB, "
        "and for evaluation --masks PATH_OR_GLOB or --dataset_dir KPIS_ROOT)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pathseqsam.synthetic slides``: write the demo slides (KPIs Task 2 layout).

    Args:
        argv: arguments after ``slides`` (default: ``sys.argv[2:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pathseqsam.synthetic slides",
        description="Synthetic whole slides with their glomerulus masks (pyramidal TIFFs, KPIs Task 2 "
        "layout), as the bundle's whole-slide jobs read them from <bundle_root>/data/synthetic_wsi.",
    )
    parser.add_argument("--out", required=True, help="new or empty folder (kept if it holds them already)")
    parser.add_argument("--slides", type=int, default=2, help="number of slides")
    parser.add_argument("--size-px", type=int, default=4096, help="level-0 side of each (square) slide")
    parser.add_argument("--mpp-um", type=float, default=0.5, help="micrometres per level-0 pixel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ell-strides",
        type=float,
        default=None,
        help="vary stain, thickness, focus and damage over each slide with this correlation length in "
        "tile strides (0: cell by cell, inf: one value per slide); default: uniform slides",
    )
    parser.add_argument(
        "--stride-um", type=float, default=128.0, help="the tile stride --ell-strides counts in"
    )
    args = parser.parse_args(sys.argv[2:] if argv is None else argv)
    if args.slides < 1 or args.size_px < 512 or not args.mpp_um > 0:
        parser.error("expected --slides >= 1, --size-px >= 512 and --mpp-um > 0")
    if (args.ell_strides is not None and args.ell_strides < 0) or not args.stride_um > 0:
        parser.error("expected --ell-strides >= 0 (or inf) and --stride-um > 0")
    root = Path(args.out)
    if (root / SYNTHETIC_SLIDES_META).is_file():
        print(f"{root}: demo slides already there ({root / SYNTHETIC_SLIDES_META}); nothing written")
        return 0
    start = time.perf_counter()
    try:
        ensure_synthetic_task2(
            root, args.slides, args.size_px, args.mpp_um, args.seed, args.ell_strides, args.stride_um
        )
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.slides} slides with masks into {root} in {time.perf_counter() - start:.1f} s")
    return 0
