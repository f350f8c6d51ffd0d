#!/usr/bin/env python
"""Quick look at the PathSeqSAM network: build it, segment one sequence, report and draw.

Runs on CPU in seconds with the tiny configuration (random weights: the masks are meaningless,
the point is to see shapes, memory choices and parameter counts). With an official checkpoint::

    python scripts/demo_network.py --model sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt --image-size 1024
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--out", default="outputs/demo_network")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from pathseqsam import build_pathseqsam
    from pathseqsam.modeling.lora import trainable_summary

    torch.manual_seed(0)
    net = build_pathseqsam(
        model=args.model, image_size=args.image_size, checkpoint=args.checkpoint, device=args.device
    )
    net.eval()
    counts = trainable_summary(net)
    print(
        f"PathSeqSAM({args.model}): {counts['total']:,} parameters, {counts['trainable']:,} trainable "
        f"({100 * counts['trainable_fraction']:.1f}%), LoRA {counts['lora']:,}"
    )

    # a sequence of slices 4 um apart with a bright disc drifting through them
    n, s = args.slices, args.image_size
    yy, xx = np.mgrid[:s, :s] / s
    images = np.zeros((1, 3, n, s, s), np.float32)
    for t in range(n):
        disc = ((yy - 0.5) ** 2 + (xx - 0.3 - 0.05 * t) ** 2) < 0.02
        images[0, :, t] = np.where(disc, 1.5, -1.0)
    positions = torch.arange(n, dtype=torch.float32)[None] * 4.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda"))
    with torch.inference_mode(), autocast:
        out = net(
            torch.from_numpy(images).to(args.device), positions=positions.to(args.device), return_aux=True
        )
    print(
        f"logits {tuple(out['logits'].shape)}; object scores {out['object_score_logits'][0].cpu().numpy().round(2)}"
    )
    for t in range(n):
        mem = [j for j in out["memory_indices"][0, t].tolist() if j >= 0]
        print(f"  slice {t}: memory slices {mem}")

    from PIL import Image

    probs = torch.sigmoid(out["logits"][0, 0].float()).cpu().numpy()
    tiles = [np.concatenate([(images[0, 0, t] > 0) * 255, probs[t] * 255], axis=0) for t in range(n)]
    path = Path(args.out) / "slices_and_probabilities.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1).astype(np.uint8)).save(path)
    print(f"wrote {path} (top: input disc, bottom: predicted probability)")


if __name__ == "__main__":
    main()
