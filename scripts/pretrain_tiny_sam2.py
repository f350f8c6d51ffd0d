#!/usr/bin/env python
"""Pretrain the CPU-sized ``tiny`` SAM2 the way SAM2 was pretrained, on synthetic H&E tissue (not the task).

Promptable segmentation (clicks, boxes, masks, correction clicks) of every structure of the synthetic
tissue model (glomeruli, tufts, tubules, tubule lumens, arterioles, infiltrates) on single sections
and on short stacks prompted on their first section and propagated through SAM2's memory, at 0.5-2
um per pixel, from the pretraining seed range (disjoint from the demo's, the tests' and the
comparison's: :mod:`pathseqsam.synthetic.seeds`). See :mod:`pathseqsam.pretrain.trainer`.

The run's length is a number of iterations (deterministic for a seed on one platform and thread
count, not a time budget). It prints progress lines (iteration, loss, ETA), saves a resumable state
every ``--save-every`` iterations (run the same command again to resume), and at the end writes

* ``OUT/sam2_tiny_pretrained.pt``: SAM2's checkpoint format ``{"model": state_dict}``, SAM2's key
  names, loadable by ``build_pathseqsam(model="tiny", image_size=256, checkpoint=...)``;
* ``OUT/pretrain_curve.png``, ``OUT/history.json``, ``OUT/record.json`` (SHA-256, command, commit,
  settings, wall time, held-out Dice);
* with ``--install PATH``: the checkpoint copied to PATH and its record to ``PATH`` with ``.json``.

The defaults are the run whose checkpoint fine-tunes best so far (run G; not shipped: below the demo's
floor), though its memory path is not learned (docs/experiments/2026-12-01-pretraining.md)::

    python scripts/pretrain_tiny_sam2.py --out outputs/pretrain
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    from pathseqsam.pretrain import PretrainConfig

    d = PretrainConfig()  # the defaults live in one place: the dataclass
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/pretrain", help="run folder (state, history, checkpoint)")
    parser.add_argument("--iterations", type=int, default=d.iterations)
    parser.add_argument("--seed", type=int, default=d.seed, help="run seed (data from PRETRAIN_SEEDS[seed])")
    parser.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="model input side (the demo's; keys do not depend on it)",
    )
    parser.add_argument("--frames", type=int, default=d.frames, help="sections per stack")
    parser.add_argument("--videos-per-batch", type=int, default=d.videos_per_batch)
    parser.add_argument("--images-per-batch", type=int, default=d.images_per_batch)
    parser.add_argument(
        "--objects",
        type=int,
        default=d.objects,
        help="objects per stack or image (more breaks the prompt symmetry sooner)",
    )
    parser.add_argument(
        "--corrections", type=int, default=d.corrections, help="correction clicks on the prompted section"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="peak lr (3e-3 was slower to pick up prompts on a toy; 256 px at 1e-3 with the old loss "
        "predicted nothing after 240 iterations)",
    )
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument(
        "--mpp-range", type=float, nargs=2, default=d.mpp_range, help="micrometres per pixel (min, max)"
    )
    parser.add_argument(
        "--video-fraction", type=float, default=d.video_fraction, help="share of stack batches"
    )
    parser.add_argument(
        "--mask-prompt-fraction",
        type=float,
        default=d.mask_prompt_fraction,
        help="share of stack batches prompted by a mask",
    )
    parser.add_argument(
        "--box-fraction", type=float, default=d.box_fraction, help="share of point prompts that are boxes"
    )
    parser.add_argument(
        "--focal-weight",
        type=float,
        default=d.focal_weight,
        help="focal term weight (SAM2's 20; from random init 20 collapsed to empty masks here, 1 did not)",
    )
    parser.add_argument(
        "--union-fraction",
        type=float,
        default=d.union_fraction,
        help="share of objects that are every instance of a structure together (multi-part objects)",
    )
    parser.add_argument(
        "--instance-fraction",
        type=float,
        default=d.instance_fraction,
        help="share of objects drawn uniformly among all instances (SAM2's masklet sampling) instead of "
        "structure first (which over-samples glomeruli: the decoder learned to ignore clicks)",
    )
    parser.add_argument(
        "--multimask-tracking",
        choices=("true", "false"),
        default=str(d.multimask_tracking).lower(),
        help="SAM2's multimask_output_for_tracking (false: propagated sections train the single-mask "
        "token the bundle decodes with)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: this model's operations are small; on a busy 2-core machine 2 threads "
        "were measured 8x slower than 1)",
    )
    parser.add_argument(
        "--data-workers",
        type=int,
        default=1,
        help="processes rendering the next batches (results do not depend on it)",
    )
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument(
        "--eval-every", type=int, default=500, help="held-out Dice every N iterations (0: at the end)"
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this SAM2 checkpoint (an earlier run's) instead of random weights: SAM2's "
        "second stage, the video mix after images only",
    )
    parser.add_argument(
        "--install", default=None, help="copy the final checkpoint here (and its record next to it)"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pathseqsam.atomic import atomic_write, atomic_write_text
    from pathseqsam.pretrain import pretrain
    from pathseqsam.pretrain.report import plot_pretraining_curve, sha256_of

    cfg = PretrainConfig(
        iterations=args.iterations,
        seed=args.seed,
        image_size=args.image_size,
        frames=args.frames,
        videos_per_batch=args.videos_per_batch,
        images_per_batch=args.images_per_batch,
        objects=args.objects,
        corrections=args.corrections,
        lr=args.lr,
        warmup=min(args.warmup, max(1, args.iterations // 10)),
        mpp_range=tuple(args.mpp_range),
        video_fraction=args.video_fraction,
        mask_prompt_fraction=args.mask_prompt_fraction,
        box_fraction=args.box_fraction,
        focal_weight=args.focal_weight,
        union_fraction=args.union_fraction,
        instance_fraction=args.instance_fraction,
        multimask_tracking=args.multimask_tracking == "true",
    )
    out = Path(args.out)
    print(f"pretraining tiny SAM2: {json.dumps(cfg.as_dict())}, {args.threads} threads -> {out}", flush=True)
    start = time.time()
    result = pretrain(
        cfg,
        out,
        save_every=args.save_every,
        log_every=args.log_every,
        eval_every=args.eval_every,
        data_workers=args.data_workers,
        init_checkpoint=args.init,
        progress=lambda line: print(time.strftime("%H:%M:%S ") + line, flush=True),
    )
    checkpoint = Path(result["checkpoint"])
    curve = plot_pretraining_curve(
        result["history"],
        result["evaluations"],
        out / "pretrain_curve.png",
        title=f"tiny SAM2 pretraining on synthetic H&E ({cfg.iterations} iterations, seed {cfg.seed})",
        focal_weight=cfg.focal_weight,
    )
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    record = {
        "file": checkpoint.name,
        "sha256": sha256_of(checkpoint),
        "bytes": checkpoint.stat().st_size,
        "command": "python scripts/pretrain_tiny_sam2.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "commit": _git("rev-parse", "HEAD") + (" (uncommitted changes)" if dirty else ""),
        "config": cfg.as_dict(),
        "init": None if args.init is None else {"file": args.init, "sha256": sha256_of(Path(args.init))},
        "threads": args.threads,
        "seconds": round(result["seconds"], 1),
        "wall_seconds_this_invocation": round(time.time() - start, 1),
        "evaluations": result["evaluations"],
        "final_loss_per_frame_mean_of_last_100": round(
            sum(r["loss"] for r in result["history"][-100:]) / max(1, len(result["history"][-100:])), 4
        ),
        "platform": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    atomic_write_text(out / "record.json", json.dumps(record, indent=1) + "\n")
    print(f"checkpoint {checkpoint} sha256 {record['sha256']} ({record['bytes']} bytes); curve {curve}")
    if args.install:
        target = Path(args.install)
        atomic_write(target, lambda tmp: shutil.copyfile(checkpoint, tmp))
        atomic_write_text(
            target.with_suffix(".json"), json.dumps({**record, "file": target.name}, indent=1) + "\n"
        )
        print(f"installed {target} and {target.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
