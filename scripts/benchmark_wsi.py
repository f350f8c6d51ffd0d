#!/usr/bin/env python
"""Whole-slide inference benchmark: tiles/s, seconds per mm^2 of tissue, peak RSS, on synthetic slides.

For each slide size (default 8192 and 32768 px square at 0.5 um/px, i.e. 4 x 4 mm and 16 x 16 mm):

1. the synthetic slide is written (tile by tile) into ``--out`` unless it is already there (the
   generator's own time and peak RSS are reported too);
2. a fresh subprocess builds the network, times the patch pipeline (``net.iter_slices`` on a
   random ``[1, 3, N, P, P]`` sequence held in memory, ms per window), then segments the slide with
   :class:`pathseqsam.wsi.segment.SlideSegmenter` and reports the slide's figures and its
   peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: Python, torch,
   the model, the slide pipeline), plus the RSS right before the slide for reference.

Printed: a table per size and the ratios of every size's peak RSS to the smallest's (goals: <= 1.2
from 8k to 16k or 32k, <= 1.3 from 8k to 64k) and slide ms per window / patch ms per window (goal
within 10 %), in one run. ``--device cuda`` on a CUDA machine; ``--model sam2.1_hiera_t --image-size
1024`` for the full-size figures (random weights: timing only).

``--slides full`` benchmarks full-tissue slides instead (``full_tissue_<size>.tiff``): a 1 x 1 mm
synthetic tissue patch with glomeruli, mirrored over the whole slide, written tile by tile (memory
does not depend on the slide's size; about a minute per 32k px on 2 cores). Their pyramid has the
levels ``--full-levels`` (default 1x and 4x, i.e. 0.5 and 2 um/px: a scan without coarse levels, so
the overview of a large slide is resampled from many level pixels). ``--stage tissue`` stops the
slide command after the overview, tissue mask and tile grid (``max_tiles=1``; no tile goes through
the network, no patch timing): the only stage whose memory grew with the slide's area, measurable at
64k px where the whole command (every tissue tile through the network) takes hours on a CPU.

Example::

    python scripts/benchmark_wsi.py --sizes 8192 32768
    python scripts/benchmark_wsi.py --sizes 8192 --model sam2.1_hiera_t --image-size 1024 --device cuda
    python scripts/benchmark_wsi.py --slides full --sizes 8192 16384
    python scripts/benchmark_wsi.py --slides full --stage tissue --sizes 8192 16384 32768 65536
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _make_slide(args: argparse.Namespace, size: int) -> dict:
    """Child: write one synthetic slide, report time and peak RSS."""
    from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide

    path = Path(args.out) / f"synthetic_{size}.tiff"
    t0 = time.perf_counter()
    area_mm2 = (size * args.mpp / 1000.0) ** 2
    scene = make_slide_scene(size, size, args.mpp, n_glomeruli=max(60, int(15 * area_mm2)), seed=size)
    write_synthetic_slide(path, scene)
    return {
        "path": str(path),
        "glomeruli": len(scene.glomeruli),
        "write_s": time.perf_counter() - t0,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _texture(mpp: float, downsample: int, side: int = 2048, seed: int = 0):
    """The full-tissue texture's period at one level: a ``side``-px (level 0) tissue patch, mirrored.

    One section larger than the patch (so every pixel is tissue) and non-overlapping glomeruli,
    rendered at the level's pixel centres; mirrored into a ``2 side`` period so it tiles seamlessly.
    """
    import numpy as np

    from pathseqsam.synthetic.slides import SyntheticSlideScene

    rng = np.random.default_rng(seed)
    section = [side / 2, side / 2, 100.0 * side, 100.0 * side, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    glomeruli: list[tuple[float, float, float]] = []
    n_wanted = max(1, round(8 * (side * mpp / 1000.0) ** 2))  # about 8 per mm^2
    for _ in range(200 * n_wanted):
        if len(glomeruli) >= n_wanted:
            break
        r = rng.uniform(40.0, 75.0) / mpp
        cx, cy = rng.uniform(r, side - r, 2)
        if all(np.hypot(cx - gx, cy - gy) > 1.3 * (r + gr) for gx, gy, gr in glomeruli):
            glomeruli.append((cx, cy, r))
    scene = SyntheticSlideScene(side, side, mpp, np.array([section]), np.array(glomeruli).reshape(-1, 3))
    n = side // downsample
    patch, _ = scene.render(0, 0, n, n, downsample)
    top = np.concatenate([patch, patch[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def _make_full_tissue(args: argparse.Namespace, size: int) -> dict:
    """Child: write one full-tissue pyramidal slide tile by tile, report time and peak RSS."""
    import numpy as np
    import tifffile

    from pathseqsam.atomic import atomic_write

    path = Path(args.out) / f"full_tissue_{size}.tiff"
    t0 = time.perf_counter()
    tile = 256

    def tiles(period: np.ndarray, lw: int, lh: int):
        ph, pw = period.shape[:2]
        for ty in range(0, lh, tile):
            rows = np.arange(ty, ty + tile) % ph
            for tx in range(0, lw, tile):
                yield period[np.ix_(rows, np.arange(tx, tx + tile) % pw)]

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for k, ds in enumerate(args.full_levels):
                lw, lh = -(-size // ds), -(-size // ds)
                res = 1e4 / (args.mpp * ds)  # pixels per centimetre
                tif.write(
                    tiles(_texture(args.mpp, ds), lw, lh),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    compression="jpeg",
                    compressionargs={"level": 90},
                    photometric="rgb",
                    subfiletype=0 if k == 0 else 1,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                )

    atomic_write(path, write)
    return {"path": str(path), "write_s": time.perf_counter() - t0, "peak_rss_mib": _peak_rss_mib()}


def _segment(args: argparse.Namespace, slide: str) -> dict:
    """Child: the patch pipeline's ms per window, then the slide pipeline on ``slide``."""
    import torch

    from pathseqsam import build_pathseqsam
    from pathseqsam.wsi.segment import SlideSegmenter, SlideTooLarge

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_pathseqsam(model=args.model, image_size=args.image_size).to(device).eval()
    amp = device.type == "cuda"
    out = Path(args.out) / "runs" / f"{Path(slide).stem}_{'per_tile' if args.per_tile else 'sequence'}"
    if out.exists():
        shutil.rmtree(out)
    if args.stage == "tissue":
        # the slide command up to its tile grid: overview, tissue mask, tiles; max_tiles=1 stops it there
        rss_before = _current_rss_mib()
        segmenter = SlideSegmenter(
            net, out, device=device, amp=amp, model_mpp_um=args.model_mpp, chunk=args.chunk, max_tiles=1
        )
        t0 = time.perf_counter()
        try:
            segmenter.segment(slide)
            raise RuntimeError(f"{slide}: no tissue tile found; the tissue stage was not measured")
        except SlideTooLarge as exc:
            message = str(exc)
        return {
            "slide": slide,
            "stage": "tissue",
            "tiles": int(message.split(": ", 1)[1].split()[0]),  # "<name>: N tissue tiles of ..."
            "tissue_stage_s": time.perf_counter() - t0,
            "rss_before_slide_mib": rss_before,
            "peak_rss_mib": _peak_rss_mib(),
        }

    # patch pipeline: one in-memory sequence of windows through iter_slices; a full warm-up pass,
    # then 3 timed passes before the slide and 3 after it (the median of the 6: shared CPUs are noisy)
    # same geometry as the slide: windows one stride apart, the stride as Eq. 1's unit
    stride_um = args.image_size * args.model_mpp / 2.0
    x = torch.randn(1, 3, args.patch_windows, args.image_size, args.image_size, device=device)
    steps = torch.arange(args.patch_windows, dtype=torch.float32) * stride_um
    pos = torch.stack([steps, torch.zeros_like(steps)], -1)[None].to(device)
    net.distance_unit_um = stride_um

    def patch_pass() -> float:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in net.iter_slices(x, pos):
                pass
            if device.type == "cuda":
                torch.cuda.synchronize()
            return 1000.0 * (time.perf_counter() - t0) / args.patch_windows

    patch_pass()
    patch_times = [patch_pass() for _ in range(3)]
    rss_before = _current_rss_mib()

    segmenter = SlideSegmenter(
        net,
        out,
        device=device,
        amp=amp,
        model_mpp_um=args.model_mpp,
        per_tile=args.per_tile,
        chunk=args.chunk,
    )
    summary = segmenter.segment(slide)
    t = summary["timings_s"]
    patch_times += [patch_pass() for _ in range(3)]
    patch_ms = sorted(patch_times)[len(patch_times) // 2]
    return {
        "slide": slide,
        "stage": "all",
        "tiles": summary["tiles"],
        "count": summary["count"],
        "tissue_mm2": summary["tissue_mm2"],
        "total_s": t["total_s"],
        "tiles_per_s": summary["tiles"] / t["network_s"],
        "s_per_mm2": t["total_s"] / summary["tissue_mm2"],
        "slide_ms_per_window": 1000.0 * t["network_s"] / summary["tiles"],
        "patch_ms_per_window": patch_ms,
        "patch_ms_per_window_all": patch_times,
        "timings_s": t,
        "rss_before_slide_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _child(mode: str, args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, *extra, *_forward(args)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-4000:]}")
    sys.stderr.write(proc.stderr)  # the child's progress lines
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        "--out",
        args.out,
        "--mpp",
        str(args.mpp),
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--model-mpp",
        str(args.model_mpp),
        "--device",
        args.device,
        "--chunk",
        str(args.chunk),
        "--threads",
        str(args.threads),
        "--patch-windows",
        str(args.patch_windows),
        "--slides",
        args.slides,
        "--stage",
        args.stage,
        "--full-levels",
        *[str(ds) for ds in args.full_levels],
    ] + (["--per-tile"] if args.per_tile else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768], help="slide sides in pixels")
    parser.add_argument("--mpp", type=float, default=0.5, help="synthetic slides' um per pixel")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmark_wsi"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--model-mpp", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch-windows", type=int, default=64)
    parser.add_argument(
        "--per-tile", action="store_true", help="the no-memory baseline instead of the sequence"
    )
    parser.add_argument(
        "--slides",
        choices=["synthetic", "full"],
        default="synthetic",
        help="synthetic: three sections on glass (about 40 %% tissue); full: tissue everywhere",
    )
    parser.add_argument(
        "--full-levels",
        type=int,
        nargs="+",
        default=[1, 4],
        help="downsample factors of the full-tissue slides' pyramid levels",
    )
    parser.add_argument(
        "--stage",
        choices=["all", "tissue"],
        default="all",
        help="all: the whole slide command; tissue: up to the tile grid (overview + tissue mask)",
    )
    parser.add_argument("--child", choices=["make", "segment"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "make":
        make = _make_full_tissue if args.slides == "full" else _make_slide
        print(json.dumps(make(args, args.size)))
        return
    if args.child == "segment":
        print(json.dumps(_segment(args, args.slide)))
        return

    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {}
    prefix = "full_tissue" if args.slides == "full" else "synthetic"
    for size in args.sizes:
        path = Path(args.out) / f"{prefix}_{size}.tiff"
        made = None
        if not path.is_file():
            print(f"writing {path} ...", file=sys.stderr, flush=True)
            made = _child("make", args, ["--size", str(size)])
            print(
                f"  written in {made['write_s']:.1f} s, peak RSS {made['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
        print(f"segmenting {path} ...", file=sys.stderr, flush=True)
        results[size] = {"made": made, **_child("segment", args, ["--slide", str(path)])}

    print(
        f"\nmodel {args.model} at {args.image_size} px, {args.model_mpp} um/px, device {args.device}, "
        f"{'per tile' if args.per_tile else 'sequence'}, {args.slides} slides at {args.mpp} um/px"
        + (f" (levels {args.full_levels})" if args.slides == "full" else "")
        + (", tissue stage only" if args.stage == "tissue" else "")
    )
    if args.stage == "tissue":
        print("| slide px | tiles | tissue stage s | RSS before slide MiB | peak RSS MiB |")
        print("|---|---|---|---|---|")
        for size, r in results.items():
            print(
                f"| {size} | {r['tiles']} | {r['tissue_stage_s']:.1f} | {r['rss_before_slide_mib']:.0f} | "
                f"{r['peak_rss_mib']:.0f} |"
            )
    else:
        print(
            "| slide px | tissue mm^2 | tiles | tiles/s | s per mm^2 | slide ms/window | patch ms/window | RSS before slide MiB | peak RSS MiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for size, r in results.items():
            print(
                f"| {size} | {r['tissue_mm2']:.1f} | {r['tiles']} | {r['tiles_per_s']:.1f} | {r['s_per_mm2']:.2f} | "
                f"{r['slide_ms_per_window']:.1f} | {r['patch_ms_per_window']:.1f} | {r['rss_before_slide_mib']:.0f} | "
                f"{r['peak_rss_mib']:.0f} |"
            )
    sizes = sorted(results)
    for size in sizes[1:]:
        ratio = results[size]["peak_rss_mib"] / results[sizes[0]]["peak_rss_mib"]
        print(
            f"peak RSS {size} / {sizes[0]}: {ratio:.3f} (goals: <= 1.2 from 8k to 16k, <= 1.3 from 8k to 64k)"
        )
    if args.stage == "all":
        for size, r in results.items():
            print(
                f"slide / patch ms per window at {size}: {r['slide_ms_per_window'] / r['patch_ms_per_window']:.3f} (goal <= 1.1)"
            )
    name = (
        "results.json"
        if (args.slides, args.stage) == ("synthetic", "all")
        else f"results_{args.slides}_{args.stage}.json"
    )
    (Path(args.out) / name).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
