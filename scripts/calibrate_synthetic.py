"""Calibrate the synthetic serial sections with a per-slice model.

Trains the CPU-sized PathSeqSAM (``model="tiny"``, 256 px) on CLEAN training slices one at a time
(N = 1, so the memory never helps) for a fixed wall time, then reports validation Dice on clean and
on damaged slices. The clean Dice says whether the tissue is learnable; the drop on damaged slices
says how much a per-slice model loses there, i.e. what a sequence model could win back from the
neighbouring sections. As context it also prints the best Dice any global colour threshold reaches
on the clean validation slices (threshold chosen on those very slices, an optimistic baseline).

Loss: soft Dice + BCE on the mask logits (clamped to [-20, 20]: SAM2 writes -1024 where its object
score says "no object") + BCE of the object-score logit against "the slice has a glomerulus" (without
it the mask head gets no gradient, see the SAM2 notes). AdamW, lr 1e-3.

The tiny model has random weights, so its whole image encoder is trained (``train_image_encoder``,
no LoRA): LoRA on a frozen random encoder would measure the encoder's luck, not the data. SAM2's
3-mask output is off by default: prompt-free, SAM2 would pick one of three masks by its IoU head,
which this loss does not train, so the picked mask (and the one receiving gradient) is arbitrary.

Usage::

    PYTHONPATH=. python scripts/calibrate_synthetic.py [--minutes 2.5] [--cases 24] [--out outputs/calibration]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pathseqsam.data.datalist import load_datalist
from pathseqsam.data.transforms import LoadSequenced, NormalizeSAM2d
from pathseqsam.synthetic import SYNTHETIC_META, generate_synthetic_dataset


def load_slices(datalist: Path, split: str, image_size: int) -> dict[str, torch.Tensor]:
    """All slices of a split as tensors: image [S, 3, H, W] (normalised), label [S, 1, H, W],
    degraded [S], raw RGB [S, H, W, 3] in [0, 1] (for the colour baseline)."""
    load = LoadSequenced(("image", "label"), spatial_size=image_size)
    norm = NormalizeSAM2d("image")
    images, labels, degraded, rgb = [], [], [], []
    for item in load_datalist(datalist, split, require_label=True):
        d = load(item)
        rgb.append(d["image"].permute(1, 2, 3, 0))
        d = norm(d)
        images.append(d["image"].permute(1, 0, 2, 3))
        labels.append(d["label"].permute(1, 0, 2, 3))
        degraded.append(d["degraded"])
    return {
        "image": torch.cat(images),
        "label": torch.cat(labels),
        "degraded": torch.cat(degraded).bool(),
        "rgb": torch.cat(rgb),
    }


def seg_loss(out: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE on clamped mask logits (+ BCE on the object score when the model has one)."""
    logits = out["logits"].clamp(-20.0, 20.0).flatten(1)  # [B, HW]
    target = label.flatten(1)
    prob = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * target).sum(1) + 1.0) / (prob.sum(1) + target.sum(1) + 1.0)
    loss = dice.mean() + F.binary_cross_entropy_with_logits(logits, target)
    if "object_score_logits" in out:
        has_object = (target.sum(1) > 0).float()
        loss = loss + F.binary_cross_entropy_with_logits(out["object_score_logits"].flatten(), has_object)
    return loss


def slice_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per slice ([S, H, W] bool); 1 when both are empty (the KPIs slide convention)."""
    inter = (pred & target).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).float()
    return torch.where(total == 0, torch.ones_like(total), 2.0 * inter / total.clamp(min=1))


def colour_threshold_dice(rgb: torch.Tensor, label: torch.Tensor) -> float:
    """Best pooled Dice of any threshold on smoothed haematoxylin density or darkness."""
    hed = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))[:, 0]
    arr, m = rgb.numpy(), label[:, 0].numpy() > 0.5
    od = -np.log(np.clip(arr, 1 / 255, 1))
    best = 0.0
    for base in (od @ hed, 1.0 - arr.mean(-1)):
        for sigma in (2.0, 4.0, 8.0):
            x = np.stack([ndimage.gaussian_filter(s, sigma) for s in base])
            for t in np.quantile(x, np.linspace(0.5, 0.995, 50)):
                p = x > t
                best = max(best, 2.0 * (p & m).sum() / (p.sum() + m.sum()))
    return float(best)


@torch.no_grad()
def predict(net: torch.nn.Module, data: dict[str, torch.Tensor], batch: int = 8) -> torch.Tensor:
    """Binary predictions [S, H, W] for every slice, one slice per sequence (N = 1)."""
    net.eval()
    preds = [
        net(data["image"][s : s + batch, :, None])[:, 0, 0] > 0 for s in range(0, len(data["image"]), batch)
    ]
    net.train()
    return torch.cat(preds)


class UNetPerSlice(torch.nn.Module):
    """Reference per-slice model (MONAI UNet) with the network's call signature (no object score:
    its loss is Dice + BCE only)."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.unet = UNet(2, 3, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)

    def forward(
        self, images: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.unet(images[:, :, 0])[:, :, None]  # [B, 1, 1, H, W]
        if not return_aux:
            return logits
        return {"logits": logits}


def evaluate(net: torch.nn.Module, data: dict[str, torch.Tensor], batch: int = 8) -> dict[str, float]:
    pred = predict(net, data, batch)
    target = data["label"][:, 0] > 0.5
    dice = slice_dice(pred, target)
    has_fg = target.flatten(1).any(1)
    result = {}
    for name, sel in (("clean", ~data["degraded"]), ("degraded", data["degraded"])):
        result[f"{name}_dice"] = float(dice[sel].mean())
        result[f"{name}_dice_fg_only"] = float(dice[sel & has_fg].mean())
        result[f"{name}_slices"] = int(sel.sum())
    return result


def save_predictions(
    path: Path, net: torch.nn.Module, data: dict[str, torch.Tensor], count: int = 12
) -> None:
    """Contact sheet of validation slices with a glomerulus: truth green, prediction cyan, damaged red."""
    from pathseqsam.synthetic.contact_sheet import save_contact_sheet

    has_fg = (data["label"][:, 0] > 0.5).flatten(1).any(1)
    picks = torch.cat(
        [
            torch.nonzero(has_fg & ~data["degraded"])[: count // 2, 0],
            torch.nonzero(has_fg & data["degraded"])[: count // 2, 0],
        ]
    )
    subset = {k: v[picks] for k, v in data.items()}
    pred = predict(net, subset)
    target = subset["label"][:, 0] > 0.5
    dice = slice_dice(pred, target)
    save_contact_sheet(
        path,
        list(subset["rgb"].numpy()),
        list(target.numpy()),
        [
            f"Dice {d:.2f}" + (" (damaged)" if g else "")
            for d, g in zip(dice.tolist(), subset["degraded"].tolist())
        ],
        predictions=list(pred.numpy()),
        highlight=subset["degraded"].tolist(),
        title="per-slice model on validation slices: truth green, prediction cyan, damaged sections red",
    )


def augment(
    image: torch.Tensor, label: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip / quarter turn for an image batch and its masks."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    image, label = torch.rot90(image, k, (-2, -1)), torch.rot90(label, k, (-2, -1))
    if torch.rand(1, generator=gen) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/calibration")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--sections", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=2.5, help="training wall time")
    parser.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead")
    parser.add_argument("--eval-every", type=float, default=0.0, help="also evaluate every this many minutes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    # One thread by default: with two, any other job on a 2-core machine makes OpenMP spin and a step
    # took 7.4 s instead of 0.35 s here.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--multimask",
        action="store_true",
        help="keep SAM2's 3-mask output (chosen by the IoU head, which this loss does not train)",
    )
    parser.add_argument(
        "--model",
        choices=("tiny", "unet"),
        default="tiny",
        help="tiny PathSeqSAM (the calibration) or a MONAI UNet (a reference for what the data allows)",
    )
    parser.add_argument("--eval-split", default="validation", choices=("validation", "test", "both"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    data_dir = out / "data"

    meta_path = data_dir / SYNTHETIC_META
    wanted = {"cases": args.cases, "seed": args.seed, "image_size": args.image_size}
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if any(meta.get(k) != v for k, v in wanted.items()) or meta.get("sections") != [args.sections] * 2:
        start = time.perf_counter()
        generate_synthetic_dataset(
            data_dir, cases=args.cases, seed=args.seed, image_size=args.image_size, sections=args.sections,
            stacks=False, workers=2, overwrite=data_dir.exists(),
        )  # fmt: skip
        print(f"generated {args.cases} cases in {time.perf_counter() - start:.1f} s -> {data_dir}")
    datalist = data_dir / "datalist.json"

    train = load_slices(datalist, "training", args.image_size)
    splits = ["validation", "test"] if args.eval_split == "both" else [args.eval_split]
    parts = [load_slices(datalist, s, args.image_size) for s in splits]
    val = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    clean = ~train["degraded"]
    x_train, y_train = train["image"][clean], train["label"][clean]
    print(
        f"training on {len(x_train)} clean slices ({int(train['degraded'].sum())} damaged ones left out); "
        f"evaluating on {len(val['image'])} {'+'.join(splits)} slices ({int(val['degraded'].sum())} damaged)"
    )

    if args.model == "tiny":
        from pathseqsam import build_pathseqsam

        net = build_pathseqsam(
            model="tiny",
            image_size=args.image_size,
            lora_rank=0,
            train_image_encoder=True,
            multimask_output=bool(args.multimask),
        )
    else:
        net = UNetPerSlice()
    params = [p for p in net.parameters() if p.requires_grad]
    print(f"{args.model}: {sum(p.numel() for p in params):,} trainable parameters")
    opt = torch.optim.AdamW(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    start, step, seen, losses = time.perf_counter(), 0, 0, []
    budget = args.minutes * 60.0
    curve, next_eval, eval_seconds = [], args.eval_every * 60.0, 0.0
    while (
        (step < args.steps)
        if args.steps is not None
        else (time.perf_counter() - start - eval_seconds < budget)
    ):
        idx = torch.randint(0, len(x_train), (args.batch,), generator=gen)
        image, label = augment(x_train[idx], y_train[idx], gen)
        out_ = net(image[:, :, None], return_aux=True)
        loss = seg_loss({**out_, "logits": out_["logits"][:, :, 0]}, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        seen += args.batch
        losses.append(loss.item())
        if step % 50 == 0:
            print(
                f"step {step}: loss {np.mean(losses[-50:]):.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        trained = time.perf_counter() - start - eval_seconds  # evaluation time is not training time
        if args.eval_every and trained >= next_eval:
            tick = time.perf_counter()
            r = evaluate(net, val)
            eval_seconds += time.perf_counter() - tick
            next_eval += args.eval_every * 60.0
            curve.append({"train_seconds": round(trained, 1), "steps": step, **r})
            print(
                f"  eval at step {step}: clean {r['clean_dice']:.3f}, damaged {r['degraded_dice']:.3f}",
                flush=True,
            )
    train_time = time.perf_counter() - start - eval_seconds

    result = evaluate(net, val)
    result["colour_threshold_clean_dice"] = colour_threshold_dice(
        val["rgb"][~val["degraded"]], val["label"][~val["degraded"]]
    )
    result.update(
        train_seconds=round(train_time, 1),
        steps=step,
        images_seen=seen,
        final_loss=float(np.mean(losses[-50:])) if losses else math.nan,
        eval_splits=splits,
        curve=curve,
    )
    drop = result["clean_dice"] - result["degraded_dice"]
    drop_fg = result["clean_dice_fg_only"] - result["degraded_dice_fg_only"]
    print(
        f"\nper-slice tiny model after {train_time:.0f} s ({step} steps, {seen} images):\n"
        f"  clean slices    Dice {result['clean_dice']:.3f}  (slices with a glomerulus: {result['clean_dice_fg_only']:.3f}, "
        f"n={result['clean_slices']})\n"
        f"  damaged slices  Dice {result['degraded_dice']:.3f}  (slices with a glomerulus: {result['degraded_dice_fg_only']:.3f}, "
        f"n={result['degraded_slices']})\n"
        f"  drop            {drop:.3f}  (slices with a glomerulus: {drop_fg:.3f})\n"
        f"  best colour threshold on the clean slices (oracle): Dice {result['colour_threshold_clean_dice']:.3f}"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    save_predictions(out / "predictions.png", net, val)
    print(f"wrote {out / 'results.json'} and {out / 'predictions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
