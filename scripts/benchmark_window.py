#!/usr/bin/env python
"""Training-step time of the bundle's default job at two window lengths, measured in one run.

The default ``window`` went from 4 to 8 slices so that Eq. 2's top-K (K = 5) has something to
choose. This times the bundle's own training step (``train.json``: transforms, prepare-batch,
network, loss, AdamW step) on the synthetic demo set for each window, interleaved repeat by repeat
so that both sides see the same machine load, and prints seconds per iteration, their ratio and
what that makes of the default job's 40 epochs of 24 iterations.

Example::

    python scripts/benchmark_window.py --windows 4 8 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _step_fn(data: str, window: int, image_size: int):
    """One training iteration of the bundle at ``window``: a closure over the parsed components."""
    from monai.bundle import ConfigParser
    from monai.data import list_data_collate

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "train.json"))
    parser.update(
        {"dataset_dir": data, "window": window, "image_size": image_size, "device": "$torch.device('cpu')"}
    )
    torch.manual_seed(0)
    dataset = parser.get_parsed_content("train#dataset")
    net = parser.get_parsed_content("network").train()
    loss_fn = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    prepare = parser.get_parsed_content("train#prepare_batch")
    batch_size = parser["batch_size"]
    state = {"i": 0}

    def step() -> float:
        items = [dataset[(state["i"] + k) % len(dataset)] for k in range(batch_size)]
        state["i"] += batch_size
        start = time.perf_counter()
        images, label, args, kwargs = prepare(list_data_collate(items), torch.device("cpu"))
        loss = loss_fn(net(images, *args, **kwargs), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, nargs="+", default=[4, 8])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument(
        "--dataset-dir", default=None, help="synthetic demo set (generated into a temp folder if absent)"
    )
    args = p.parse_args(argv)

    from pathseqsam.engine import prepare_datalist

    data = args.dataset_dir or tempfile.mkdtemp(prefix="bench_window_")
    prepare_datalist(data, image_size=args.image_size)  # the demo set, as the bundle generates it
    steps = {w: _step_fn(data, w, args.image_size) for w in args.windows}
    for step in steps.values():  # warm-up
        step()
    times: dict[int, list[float]] = {w: [] for w in args.windows}
    for r in range(args.repeats):
        for w, step in steps.items():
            times[w].append(step())
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"window {w}: {t[-1]:.2f} s" for w, t in times.items()),
            flush=True,
        )
    base = statistics.median(times[args.windows[0]])
    result = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "seconds_per_iteration": {w: statistics.median(t) for w, t in times.items()},
        "ratio_to_first": {w: statistics.median(t) / base for w, t in times.items()},
        "default_job_training_minutes": {w: statistics.median(t) * 40 * 24 / 60 for w, t in times.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
