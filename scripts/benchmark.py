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

VARIANTS = ("encoder", "sam2", "pathseqsam", "pathseqsam_compressed")
# where a slice's time goes; "memory_self_mlp" is memory attention less its cross-attention
COMPONENTS = ("image_encoder", "memory_self_mlp", "memory_cross", "memory_encoder", "decoder")
STEADY_FROM = 6  # slices t >= 6 have a full memory (SAM2's 6 recent frames; K = 5 plus the first)


class ComponentTimer:
    """Wall time per slice spent in each part of a SAM2-style model, from forward hooks.

    A slice starts at each image-encoder call (every variant encodes one slice per call). On CUDA
    each hook synchronises, so the split is measured in a pass of its own, never in the timed runs.
    """

    def __init__(self, net: torch.nn.Module, sync) -> None:
        self.sync, self.slice, self.handles = sync, -1, []
        self.times: list[dict[str, float]] = []
        parts = {
            "image_encoder": [net.image_encoder],
            "memory_attention": [getattr(net, "memory_attention", None)],
            "memory_cross": [layer.cross_attn_image for layer in net.memory_attention.layers],
            "memory_encoder": [getattr(net, "memory_encoder", None)],
            "decoder": [net.sam_prompt_encoder, net.sam_mask_decoder],
        }
        for name, modules in parts.items():
            for module in modules:
                if module is not None:
                    self._hook(name, module)

    def _hook(self, name: str, module: torch.nn.Module) -> None:
        start: list[float] = []

        def pre(_m, _i):
            self.sync()
            if name == "image_encoder":
                self.slice += 1
                self.times.append(dict.fromkeys(("image_encoder", "memory_attention", *COMPONENTS[2:]), 0.0))
            start.append(time.perf_counter())

        def post(_m, _i, _o):
            self.sync()
            if self.slice >= 0:
                self.times[self.slice][name] += time.perf_counter() - start.pop()

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def split(self, steady: bool = False) -> dict[str, float]:
        """Milliseconds per slice of each component (mean over all slices, or over t >= 6)."""
        rows = self.times[STEADY_FROM:] if steady else self.times
        if not rows:
            return {}
        out = {c: 0.0 for c in COMPONENTS}
        for r in rows:
            out["image_encoder"] += r["image_encoder"]
            out["memory_cross"] += r["memory_cross"]
            out["memory_self_mlp"] += r["memory_attention"] - r["memory_cross"]
            out["memory_encoder"] += r["memory_encoder"]
            out["decoder"] += r["decoder"]
        return {c: 1e3 * v / len(rows) for c, v in out.items()}


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


def _build(args, **settings):
    from pathseqsam import build_pathseqsam, merge_lora

    torch.manual_seed(0)
    net = build_pathseqsam(
        model=args.model,
        image_size=args.image_size,
        checkpoint=args.checkpoint,
        lora_rank=8,
        device=args.device,
        model_mpp_um=args.mpp_um,
        **settings,
    )
    # Deployment weights: LoRA folded into the encoder, as in the SAM2 variant, so the comparison
    # isolates the memory path (unmerged adapters add two small matmuls per attention projection).
    return merge_lora(net).eval()


def _stock_sam2(net, args):
    """SAM2Base of the same config with the same weights (LoRA merged away)."""
    from pathseqsam.modeling.build import instantiate_sam2
    from pathseqsam.modeling.lora import merged_state_dict

    stock = instantiate_sam2(args.model, args.image_size, pathseqsam_class=False)
    state = {
        k: v
        for k, v in merged_state_dict(net).items()
        if not k.startswith("distance_kernel.") and k != "model_mpp_um"
    }
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
    compressed = _build(args, memory_token_um=tuple(args.memory_token_um))
    stock = _stock_sam2(net, args)

    def consume(stream) -> None:
        for _ in stream:
            pass

    return {
        "encoder": lambda x, p: consume(net.forward_image(x[:, :, t]) for t in range(x.shape[2])),
        "sam2": lambda x, p: consume(_run_stock(stock, x)),
        "pathseqsam": lambda x, p: consume(net.iter_slices(x, positions=p)),
        "pathseqsam_compressed": lambda x, p: consume(compressed.iter_slices(x, positions=p)),
    }, {"encoder": net, "sam2": stock, "pathseqsam": net, "pathseqsam_compressed": compressed}


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
    run = _runners(args)[0][args.variant]
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
    runners, models = _runners(args)
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
        for name, a, b in (
            ("pss/sam2", "pathseqsam", "sam2"),
            ("pss/enc", "pathseqsam", "encoder"),
            ("sam2/enc", "sam2", "encoder"),
            ("cmp/enc", "pathseqsam_compressed", "encoder"),
            ("cmp/pss", "pathseqsam_compressed", "pathseqsam"),
        ):
            out[n][name] = statistics.median(x / y for x, y in zip(times[a], times[b]))
        out[n]["split"] = _split(runners, models, x, pos, args)
        print(f"timed N={n}", file=sys.stderr)
    return out


def _split(runners: dict, models: dict, x: torch.Tensor, pos: torch.Tensor, args) -> dict:
    """Per-component ms per slice of every variant (one hooked pass each, after the timed runs)."""
    split = {}
    with torch.inference_mode(), _context(args):
        for v in VARIANTS:
            timer = ComponentTimer(models[v], lambda: _sync(args))
            try:
                runners[v](x, pos)
            finally:
                timer.remove()
            if v == "encoder":  # the encoder variant runs the image encoder only
                timer.times = [
                    {**r, "memory_cross": 0.0, "memory_attention": 0.0, "memory_encoder": 0.0, "decoder": 0.0}
                    for r in timer.times
                ]
            split[v] = {"mean": timer.split(), "steady": timer.split(steady=True)}
    return split


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
    parser.add_argument(
        "--mpp-um",
        type=float,
        default=0.5,
        help="working resolution (sets the native token size; cost does not depend on it)",
    )
    parser.add_argument(
        "--memory-token-um",
        type=float,
        nargs="+",
        default=None,
        help="pathseqsam_compressed's budget, um per memory token nearest first (default: native x 1, 4, 4: "
        "the nearest slice at full resolution, the others pooled 4 x 4)",
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_token_um is None:
        from pathseqsam import token_budget_um

        args.memory_token_um = token_budget_um(args.mpp_um, (1, 4, 4))

    if args.variant:  # child process
        print("RESULT " + json.dumps(memory_worker(args)), flush=True)
        return

    timing = time_variants(args)
    results = {}
    total = len(VARIANTS) * len(args.lengths)
    for i, (n, variant) in enumerate((n, v) for n in args.lengths for v in VARIANTS):
        cmd = [sys.executable, __file__, "--variant", variant, "--n", str(n), "--model", args.model]
        cmd += ["--image-size", str(args.image_size), "--device", args.device, "--mpp-um", str(args.mpp_um)]
        cmd += ["--memory-token-um", *map(str, args.memory_token_um)]
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
        f"\nmodel={args.model} image_size={args.image_size} device={args.device} bf16={args.bf16} repeats={args.repeats} "
        f"compressed budget={args.memory_token_um} um/token"
    )
    short = {"encoder": "enc", "sam2": "sam2", "pathseqsam": "pss", "pathseqsam_compressed": "cmp"}
    print(
        f"{'N':>4} | "
        + " ".join(f"{short[v] + ' ms':>9}" for v in VARIANTS)
        + " | pss/sam2  pss/enc sam2/enc  cmp/enc  cmp/pss | "
        + " ".join(f"{short[v] + ' MiB':>9}" for v in VARIANTS)
    )
    for n in args.lengths:
        t = timing[n]
        print(
            f"{n:>4} | "
            + " ".join(f"{1e3 * t[v]:>9.2f}" for v in VARIANTS)
            + " | "
            + " ".join(f"{t[k]:>8.3f}" for k in ("pss/sam2", "pss/enc", "sam2/enc", "cmp/enc", "cmp/pss"))
            + " | "
            + " ".join(f"{results[(v, n)]['peak_bytes'] / mib:>9.1f}" for v in VARIANTS)
        )
    lo, hi = min(args.lengths), max(args.lengths)
    for v in VARIANTS:
        a, b = results[(v, lo)]["peak_bytes"], results[(v, hi)]["peak_bytes"]
        print(f"peak memory {v:>21}: N={hi} / N={lo} = {b / max(a, 1):.3f}")
    print("\nwhere a slice's time goes (ms per slice, share of the variant's hooked total; steady: t >= 6)")
    for n in args.lengths:
        for v in VARIANTS[1:]:
            for kind in ("mean", "steady"):
                part = timing[n]["split"][v][kind]
                if not part:
                    continue
                total = sum(part.values())
                cells = "  ".join(f"{c} {part[c]:.2f} ({100 * part[c] / total:.0f}%)" for c in COMPONENTS)
                print(f"N={n:<3} {v:>21} {kind:>6}: {cells}")
        steady = {v: timing[n]["split"][v]["steady"] for v in ("pathseqsam", "pathseqsam_compressed")}
        if all(steady.values()) and steady["pathseqsam_compressed"]["memory_cross"] > 0:
            # both read the same K slices per step, so the cross-attention ratio is the per-frame ratio
            ratio = steady["pathseqsam"]["memory_cross"] / steady["pathseqsam_compressed"]["memory_cross"]
            print(f"N={n:<3} memory cross-attention per memory frame, pathseqsam / compressed: {ratio:.2f}x")
    if args.json:
        from pathseqsam.atomic import atomic_write_json

        atomic_write_json(  # a rerun never leaves a half-written file
            args.json,
            {
                "timing_s_per_slice": {
                    n: {k: v for k, v in t.items() if k != "split"} for n, t in timing.items()
                },
                "split_ms_per_slice": {n: t["split"] for n, t in timing.items()},
                "memory_token_um": args.memory_token_um,
                "memory": [results[k] for k in sorted(results)],
            },
        )


if __name__ == "__main__":
    main()
