#!/usr/bin/env python
"""Per-slice time and peak memory: image encoder alone vs stock SAM2 memory vs PathSeqSAM.

All three run on the same weights and the same random sequences, in inference mode:

* ``encoder``: ``forward_image`` on every slice (the floor any SAM2 video model pays);
* ``sam2``: SAM2's own ``SAM2Base.track_step`` frame after frame (slice 0 is its conditioning
  frame, the others attend to the last 6 frames and 15 object pointers, frame-index encoding).
  SAM2 keeps every frame's output; the harness evicts frames SAM2 can no longer read, as a
  long-sequence user would, so its memory is bounded too;
* ``pathseqsam``: PathSeqSAM with top-K memory (Eq. 2) and distance-aware attention (Eq. 1).

All three use the same weights with LoRA merged (``pathseqsam.merge_lora``), as deployed.

Each (variant, N) runs in a fresh subprocess, so peak memory is not polluted by earlier runs:
on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set size sampled every
2 ms during one forward, minus the size before it (workers run with
``MALLOC_MMAP_THRESHOLD_`` lowered so freed tensors go back to the OS and RSS tracks live memory).
Timing runs in the parent process, without the sampler, all variants interleaved repeat by repeat.

Example::

    python scripts/benchmark.py --model tiny --image-size 256 --lengths 4 16 64
    python scripts/benchmark.py --model sam2.1_hiera_t --image-size 1024 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext

import torch

VARIANTS = ("encoder", "sam2", "pathseqsam")


class PeakRSS:
    """Sample this process's resident set size in a thread; ``peak`` is the max seen (bytes)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _build(args):
    from pathseqsam import build_pathseqsam, merge_lora

    torch.manual_seed(0)
    net = build_pathseqsam(
        model=args.model,
        image_size=args.image_size,
        checkpoint=args.checkpoint,
        lora_rank=8,
        device=args.device,
    )
    # Deployment weights: LoRA folded into the encoder, as in the SAM2 variant, so the comparison
    # isolates the memory path (unmerged adapters add two small matmuls per attention projection).
    return merge_lora(net).eval()


def _stock_sam2(net, args):
    """SAM2Base of the same config with the same weights (LoRA merged away)."""
    from pathseqsam.modeling.build import instantiate_sam2
    from pathseqsam.modeling.lora import merged_state_dict

    stock = instantiate_sam2(args.model, args.image_size, pathseqsam_class=False)
    state = {k: v for k, v in merged_state_dict(net).items() if not k.startswith("distance_kernel.")}
    stock.load_state_dict(state, strict=True)
    return stock.to(args.device).eval()


def _run_stock(stock, images: torch.Tensor):
    """SAM2's own frame loop; yields each frame's mask (the caller consumes it)."""
    n = images.shape[2]
    keep = max(stock.num_maskmem, stock.max_obj_ptrs_in_encoder)
    output = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    for t in range(n):
        backbone = stock.forward_image(images[:, :, t])
        _, feats, pos, sizes = stock._prepare_backbone_features(backbone)
        out = stock.track_step(
            frame_idx=t,
            is_init_cond_frame=t == 0,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=None,
            mask_inputs=None,
            output_dict=output,
            num_frames=n,
            run_mem_encoder=t < n - 1,
        )
        output["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
        output["non_cond_frame_outputs"].pop(t - keep, None)  # frames SAM2 can no longer read
        yield out["pred_masks_high_res"]


def _runners(args) -> dict:
    """variant -> run(x, positions); every variant streams (each slice's result is dropped, as a
    writer of per-slice outputs would), so what is measured is the model's own working memory."""
    net = _build(args)
    stock = _stock_sam2(net, args)

    def consume(stream) -> None:
        for _ in stream:
            pass

    return {
        "encoder": lambda x, p: consume(net.forward_image(x[:, :, t]) for t in range(x.shape[2])),
        "sam2": lambda x, p: consume(_run_stock(stock, x)),
        "pathseqsam": lambda x, p: consume(net.iter_slices(x, positions=p)),
    }


def _inputs(args, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, n, args.image_size, args.image_size, generator=g).to(args.device)
    return x, (torch.arange(n, dtype=torch.float32) * 4.0)[None].to(args.device)


def _context(args):
    device = torch.device(args.device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()


def _sync(args) -> None:
    if torch.device(args.device).type == "cuda":
        torch.cuda.synchronize()


def memory_worker(args) -> dict:
    """Peak working memory of one variant at one length (run in a fresh process)."""
    run = _runners(args)[args.variant]
    x, pos = _inputs(args, args.n)
    cuda = torch.device(args.device).type == "cuda"
    with torch.inference_mode(), _context(args):
        run(x[:, :, : min(args.n, 2)], pos[:, : min(args.n, 2)])  # warm-up (allocator, kernels)
        _sync(args)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with PeakRSS() as rss:
            run(x, pos)
            _sync(args)
    peak = (torch.cuda.max_memory_allocated() - base) if cuda else (rss.peak - rss.start)
    return {"variant": args.variant, "n": args.n, "peak_bytes": peak}


def time_variants(args) -> dict:
    """Seconds per slice, variants interleaved repeat by repeat (A B C A B C ...) in one process, so
    a drift of the machine's speed hits all of them alike; ratios are taken pair by pair."""
    runners = _runners(args)
    out = {}
    for n in args.lengths:
        x, pos = _inputs(args, n)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        with torch.inference_mode(), _context(args):
            for v in VARIANTS:
                runners[v](x[:, :, : min(n, 2)], pos[:, : min(n, 2)])  # warm-up
            for _ in range(args.repeats):
                for v in VARIANTS:
                    t0 = time.perf_counter()
                    runners[v](x, pos)
                    _sync(args)
                    times[v].append((time.perf_counter() - t0) / n)
        out[n] = {v: statistics.median(times[v]) for v in VARIANTS}
        out[n]["pss/sam2"] = statistics.median(a / b for a, b in zip(times["pathseqsam"], times["sam2"]))
        out[n]["pss/enc"] = statistics.median(a / b for a, b in zip(times["pathseqsam"], times["encoder"]))
        print(f"timed N={n}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--checkpoint", default=None, help="official SAM2 .pt (optional; weights do not change cost)"
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the CUDA path)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.variant:  # child process
        print("RESULT " + json.dumps(memory_worker(args)), flush=True)
        return

    timing = time_variants(args)
    results = {}
    total = len(VARIANTS) * len(args.lengths)
    for i, (n, variant) in enumerate((n, v) for n in args.lengths for v in VARIANTS):
        cmd = [sys.executable, __file__, "--variant", variant, "--n", str(n), "--model", args.model]
        cmd += ["--image-size", str(args.image_size), "--device", args.device]
        cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        cmd += ["--bf16"] if args.bf16 else []
        t0 = time.time()
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"benchmark worker {variant} N={n} failed:\n{proc.stderr[-3000:]}")
        results[(variant, n)] = json.loads(lines[-1][7:])
        print(f"[{i + 1}/{total}] {variant:>10} N={n:<3} done in {time.time() - t0:.1f}s", file=sys.stderr)

    mib = 2**20
    print(
        f"\nmodel={args.model} image_size={args.image_size} device={args.device} bf16={args.bf16} repeats={args.repeats}"
    )
    print(
        f"{'N':>4} | {'encoder ms/slice':>16} {'sam2 ms/slice':>14} {'pathseqsam ms/slice':>19} | {'pss/sam2':>8} {'pss/enc':>8}"
        f" | {'enc MiB':>8} {'sam2 MiB':>8} {'pss MiB':>8}"
    )
    for n in args.lengths:
        t = timing[n]
        e, sm, p = (results[(v, n)]["peak_bytes"] / mib for v in VARIANTS)
        print(
            f"{n:>4} | {1e3 * t['encoder']:>16.2f} {1e3 * t['sam2']:>14.2f} {1e3 * t['pathseqsam']:>19.2f} | "
            f"{t['pss/sam2']:>8.3f} {t['pss/enc']:>8.3f} | {e:>8.1f} {sm:>8.1f} {p:>8.1f}"
        )
    lo, hi = min(args.lengths), max(args.lengths)
    for v in VARIANTS:
        a, b = results[(v, lo)]["peak_bytes"], results[(v, hi)]["peak_bytes"]
        print(f"peak memory {v:>10}: N={hi} / N={lo} = {b / max(a, 1):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"timing_s_per_slice": timing, "memory": [results[k] for k in sorted(results)]}, f, indent=2
            )


if __name__ == "__main__":
    main()
