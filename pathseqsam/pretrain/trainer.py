"""SAM2's pretraining on a CPU: promptable segmentation of single images and propagation through memory.

One iteration is either an image batch (``images_per_batch`` single sections, as SAM2 trains on
SA-1B) or a video batch (``videos_per_batch`` stacks of ``frames`` sections), each with ``objects``
objects (:mod:`pathseqsam.pretrain.samples`). As in SAM2's trainer (``training/model/sam2.py``),
the image encoder runs once per section and every object reads its section's features; the first
section is the conditioning frame, prompted by the ground-truth mask (video batches only, p =
``mask_prompt_fraction``), else by a noisy box (p = ``box_fraction``) or one click sampled in the
object, followed by ``corrections`` correction clicks sampled from the error region (from the object
with p = 0.1), each fed back with the previous low-resolution mask; every later section is
segmented from memory alone (SAM2's ``_track_step``, memory encoder on every prediction). The loss
is SAM2's (:func:`pathseqsam.pretrain.loss.sam2_frame_loss`) summed over frames and correction
steps. Prompts come from SAM2's own samplers (``sam2.modeling.sam2_utils``).

Determinism: the model is initialised from ``seed``; the data of iteration ``i`` depends only on
``(PRETRAIN_SEEDS[seed], i)`` and the torch generator is re-seeded from them at each iteration
(prompts, dropout), so a run interrupted and resumed from its saved state ends with the same weights
as an uninterrupted one (same platform and thread count).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathseqsam import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from pathseqsam.atomic import atomic_torch_save, atomic_write
from pathseqsam.modeling.build import instantiate_sam2
from pathseqsam.modeling.checkpoint import load_sam2_checkpoint
from pathseqsam.pretrain.loss import sam2_frame_loss
from pathseqsam.pretrain.samples import VideoSample, make_video_sample
from pathseqsam.synthetic.seeds import pretrain_data_seed

__all__ = [
    "PretrainConfig",
    "evaluate_propagation",
    "other_object_of_same_stack",
    "pretrain",
    "run_batch",
    "save_sam2_checkpoint",
]

logger = logging.getLogger(__name__)

_TERMS = ("mask", "dice", "iou", "class")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a pretraining run (all of them enter the run's identity: a saved state is resumed
    only by the same settings). The defaults are the run whose checkpoint fine-tunes best so far
    (``scripts/pretrain_tiny_sam2.py`` reads them from here); the memory path does not learn with
    them (docs/experiments/2026-12-01-pretraining.md).

    Attributes:
        iterations: optimiser steps (the run's length; fixed, not a time budget).
        seed: run seed; model init and ``PRETRAIN_SEEDS[seed]`` for the data.
        image_size: model input side in pixels.
        frames: sections per video.
        videos_per_batch: stacks per video batch.
        images_per_batch: single sections per image batch.
        objects: objects per stack or image.
        video_fraction: probability that an iteration is a video batch.
        mask_prompt_fraction: probability that a video batch is prompted with masks.
        box_fraction: probability that a point-prompted batch gets boxes instead of one click.
        corrections: correction clicks on the conditioning frame of point-prompted batches.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 1 %).
        weight_decay: AdamW weight decay.
        warmup: warm-up iterations.
        grad_clip: gradient-norm clip.
        mpp_range: micrometres per pixel, drawn log-uniformly per sample.
        stain: stain preset of the pretraining data.
        focal_weight: weight of the focal term (SAM2's 20). From random init on this data SAM2's 20
            collapsed to empty masks for 500+ iterations; 1 starts learning within 100.
        union_fraction: probability that an object is every instance of its structure together
            (:func:`pathseqsam.pretrain.samples.make_video_sample`).
        instance_fraction: probability that an object is drawn uniformly among all instances rather
            than structure first (same function).
        multimask_tracking: SAM2's ``multimask_output_for_tracking`` (true in its configs). The
            bundle decodes every slice with the single-mask token (``multimask_output: false``);
            false here trains that token on the propagated sections too, not only on boxes.
    """

    iterations: int = 2500
    seed: int = 0
    image_size: int = 128
    frames: int = 4
    videos_per_batch: int = 2
    images_per_batch: int = 2
    objects: int = 8
    video_fraction: float = 0.5
    mask_prompt_fraction: float = 0.5
    box_fraction: float = 0.5
    corrections: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    mpp_range: tuple[float, float] = (1.4, 2.8)
    stain: str = "he"
    focal_weight: float = 1.0
    union_fraction: float = 0.25
    multimask_tracking: bool = False
    instance_fraction: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        out = dataclasses.asdict(self)
        out["mpp_range"] = list(self.mpp_range)
        return out


def _apply_model_settings(model: nn.Module, cfg: PretrainConfig) -> None:
    """The run's settings that live on the SAM2 model rather than in the data or the loss."""
    model.multimask_output_for_tracking = cfg.multimask_tracking


def _iteration_rng(cfg: PretrainConfig, iteration: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(pretrain_data_seed(cfg.seed), spawn_key=(iteration,)))


def _torch_seed(cfg: PretrainConfig, iteration: int) -> int:
    seq = np.random.SeedSequence(pretrain_data_seed(cfg.seed), spawn_key=(iteration, 1 << 30))
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)


def plan_batch(cfg: PretrainConfig, iteration: int) -> dict[str, Any]:
    """What iteration ``iteration`` trains on: batch kind, prompt kind and its samples' spawn keys.

    Args:
        cfg: run settings.
        iteration: 0-based iteration.

    Returns:
        ``{"frames", "prompt" ("mask" | "box" | "click"), "keys": [(iteration, v), ...]}``.
    """
    rng = _iteration_rng(cfg, iteration)
    video = cfg.frames > 1 and rng.random() < cfg.video_fraction
    if video and rng.random() < cfg.mask_prompt_fraction:
        prompt = "mask"
    else:
        prompt = "box" if rng.random() < cfg.box_fraction else "click"
    count = cfg.videos_per_batch if video else cfg.images_per_batch
    return {
        "frames": cfg.frames if video else 1,
        "prompt": prompt,
        "keys": [(iteration, v) for v in range(count)],
    }


def _samples(cfg: PretrainConfig, plan: dict[str, Any]) -> list[VideoSample]:
    """Render the samples of one planned batch (module-level: runs in data worker processes)."""
    return [
        make_video_sample(
            pretrain_data_seed(cfg.seed),
            key,
            image_size=cfg.image_size,
            frames=plan["frames"],
            objects=cfg.objects,
            mpp_range=cfg.mpp_range,
            stain=cfg.stain,
            union_fraction=cfg.union_fraction,
            instance_fraction=cfg.instance_fraction,
        )
        for key in plan["keys"]
    ]


def _to_tensors(samples: list[VideoSample]) -> tuple[Tensor, Tensor, Tensor]:
    """Frame-major normalised images ``[T*V, 3, H, W]``, masks ``[T, B, 1, H, W]``, video of each object."""
    video = np.stack([s.images for s in samples], axis=1)  # [T, V, H, W, 3]
    t, v, h, w, _ = video.shape
    images = torch.from_numpy(video.reshape(t * v, h, w, 3)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(SAM2_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM2_PIXEL_STD).view(1, 3, 1, 1)
    images = (images - mean) / std
    masks = torch.from_numpy(np.concatenate([s.masks for s in samples]))  # [B, T, H, W]
    masks = masks.permute(1, 0, 2, 3).unsqueeze(2).float()  # [T, B, 1, H, W]
    video_of = torch.tensor([i for i, s in enumerate(samples) for _ in s.structures], dtype=torch.long)
    return images, masks, video_of


def run_batch(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    video_of: Tensor,
    prompt: str,
    corrections: int = 0,
    correction_from_gt: float = 0.1,
    focal_weight: float = 20.0,
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """SAM2's training forward over one batch of stacks: prompt the first frame, propagate the rest.

    Args:
        model: a ``SAM2Base`` (or subclass).
        images: ``[T*V, 3, H, W]`` normalised, frame-major (frame ``t`` of stack ``v`` at ``t*V + v``).
        masks: ``[T, B, 1, H, W]`` ground truth of the ``B`` objects.
        video_of: ``[B]`` stack of each object.
        prompt: ``"mask"``, ``"box"`` or ``"click"`` on frame 0.
        corrections: correction clicks on frame 0 (point prompts only).
        correction_from_gt: probability of sampling a correction click from the object rather than
            from the error region (SAM2's ``prob_to_sample_from_gt_for_train``).
        focal_weight: weight of the focal term in SAM2's loss.

    Returns:
        Summed loss terms (``mask``, ``dice``, ``iou``, ``class``, ``total``; summed over frames and
        correction steps as in SAM2), and the final high-resolution mask logits per frame ``[B, 1, H, W]``.
    """
    backbone_out = model.forward_image(images)
    _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    # SAM2 overwrites the mask logits with -1024 wherever the object-score logit is negative (a hard
    # torch.where): from random init every tracked frame starts "absent" and its masks get no
    # gradient (measured: propagated frames predicted nothing, whatever the prompt). The loss
    # therefore reads the decoder's ungated masks (hook, upsampled as SAM2 does), as the main
    # job's network does; memory encoding and evaluation keep SAM2's gated masks.
    raw: list[Tensor] = []
    hook = model.sam_mask_decoder.register_forward_hook(lambda _m, _i, output: raw.append(output[0]))
    try:
        return _run_frames(
            model,
            feats,
            pos,
            sizes,
            masks,
            video_of,
            prompt,
            corrections,
            correction_from_gt,
            raw,
            focal_weight,
        )
    finally:
        hook.remove()


def _ungated(model: nn.Module, raw: list[Tensor]) -> Tensor:
    """The last decoder call's mask logits before SAM2's object-score gate, at the input resolution."""
    return F.interpolate(
        raw[-1].float(), size=(model.image_size, model.image_size), mode="bilinear", align_corners=False
    )


def _run_frames(
    model: nn.Module,
    feats: list[Tensor],
    pos: list[Tensor],
    sizes: list[tuple[int, int]],
    masks: Tensor,
    video_of: Tensor,
    prompt: str,
    corrections: int,
    correction_from_gt: float,
    raw: list[Tensor],
    focal_weight: float,
) -> tuple[dict[str, Tensor], list[Tensor]]:
    from sam2.modeling.sam2_utils import get_next_point, sample_box_points
    from sam2.utils.misc import concat_points

    n_frames = masks.shape[0]
    n_videos = feats[-1].shape[1] // n_frames
    output_dict: dict[str, dict[int, Any]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    totals: dict[str, Tensor] = {}
    predictions = []
    for t in range(n_frames):
        idx = t * n_videos + video_of
        cur_feats = [x[:, idx] for x in feats]
        cur_pos = [x[:, idx] for x in pos]
        gt = masks[t]
        gt_bool = gt > 0.5
        point_inputs, mask_inputs = None, None
        if t == 0:
            if prompt == "mask":
                mask_inputs = gt
            elif prompt == "box":
                coords, labels = sample_box_points(gt_bool)
                point_inputs = {"point_coords": coords, "point_labels": labels}
            elif prompt == "click":
                coords, labels = get_next_point(gt_bool, None, "uniform")
                point_inputs = {"point_coords": coords, "point_labels": labels}
            else:
                raise ValueError(f"prompt must be 'mask', 'box' or 'click', got {prompt!r}")
        raw.clear()
        current_out, sam_outputs, high_res_features, pix_feat = model._track_step(
            t,
            t == 0,
            cur_feats,
            cur_pos,
            sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            n_frames,
            False,
            None,
        )
        # a mask prompt is SAM2's output as it is (use_mask_input_as_output_without_sam): nothing to learn
        mask_as_output = mask_inputs is not None and model.use_mask_input_as_output_without_sam
        steps = [(sam_outputs[1] if mask_as_output else _ungated(model, raw), sam_outputs)]
        if t == 0 and point_inputs is not None:
            for _ in range(corrections):
                from_gt = bool(torch.rand(()) < correction_from_gt)
                new_pts, new_labels = get_next_point(
                    gt_bool, None if from_gt else sam_outputs[4] > 0, "uniform"
                )
                point_inputs = concat_points(point_inputs, new_pts, new_labels)
                sam_outputs = model._forward_sam_heads(
                    backbone_features=pix_feat,
                    point_inputs=point_inputs,
                    mask_inputs=sam_outputs[3],
                    high_res_features=high_res_features,
                    multimask_output=model._use_multimask(True, point_inputs),
                )
                steps.append((_ungated(model, raw), sam_outputs))
        for logits, step in steps:
            terms = sam2_frame_loss(logits, step[2], step[6], gt, focal_weight)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_scores = sam_outputs
        current_out.update(
            point_inputs=point_inputs,
            pred_masks=low_res_masks,
            pred_masks_high_res=high_res_masks,
            obj_ptr=obj_ptr,
        )
        model._encode_memory_in_output(
            cur_feats, sizes, point_inputs, n_frames > 1, high_res_masks, object_scores, current_out
        )
        output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = current_out
        predictions.append(high_res_masks)
    return totals, predictions


def _lr_factor(cfg: PretrainConfig, iteration: int) -> float:
    if iteration < cfg.warmup:
        return (iteration + 1) / cfg.warmup
    progress = (iteration - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _dice(logits: Tensor, target: Tensor) -> Tensor:
    pred, gt = (logits > 0).flatten(1), (target > 0.5).flatten(1)
    inter = (pred & gt).sum(1).float()
    total = (pred.sum(1) + gt.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def other_object_of_same_stack(video_of: Tensor) -> Tensor:
    """For each object, the index of the next object of its own stack (cyclically): a derangement
    within each stack, so every object is prompted with a mask that is not its own but lies in the
    same images. A stack with a single object keeps it.

    Args:
        video_of: ``[B]`` stack of each object.

    Returns:
        ``[B]`` long indices.
    """
    out = torch.arange(len(video_of))
    for v in video_of.unique():
        members = torch.nonzero(video_of == v).flatten()
        out[members] = members.roll(-1)
    return out


@torch.no_grad()
def evaluate_propagation(model: nn.Module, cfg: PretrainConfig, videos: int = 6) -> dict[str, float]:
    """Dice of the prompted frame and of the propagated frames on held-out stacks (keys
    ``(2**31 - 1, v)``, never trained on), prompted on the first frame by one click drawn uniformly in the
    object, and by its mask.

    Args:
        model: the SAM2 model (put back in its previous mode afterwards).
        cfg: run settings (stack shape, resolution, stain, seed).
        videos: held-out stacks.

    Returns:
        ``{"click_first", "click_propagated", "mask_propagated", "other_mask_propagated",
        "other_click_first"}`` mean Dice over objects (propagated: over frames 1..T-1; a frame where
        the object has gone and nothing is predicted counts 1). ``other_mask_propagated`` prompts each
        object's first frame with the mask of another object of its stack
        (:func:`other_object_of_same_stack`) and scores the propagation against the object itself: a
        memory that carries the prompt drives it well below ``mask_propagated``; equal values mean the
        propagated frames ignore their memory. ``other_click_first`` does the same for the click on
        the prompted frame: a decoder that follows clicks scores far below ``click_first`` there;
        equal values mean it predicts the same mask wherever the click is. Every run draws its
        clicks from the same random state, so with one object per stack the ``other_`` rows equal
        their own-prompt rows exactly.
    """
    was_training = model.training
    model.eval()
    plan = {"frames": cfg.frames, "prompt": "click", "keys": [(2**31 - 1, v) for v in range(videos)]}
    # single instances only, so that runs with other object mixes are scored on the same objects
    images, masks, video_of = _to_tensors(
        _samples(dataclasses.replace(cfg, union_fraction=0.0, instance_fraction=0.0), plan)
    )
    out = {}
    swapped = masks.clone()
    swapped[0] = masks[0, other_object_of_same_stack(video_of)]
    for name, prompt, prompted in (
        ("click", "click", masks),
        ("mask", "mask", masks),
        ("other_mask", "mask", swapped),
    ):
        torch.manual_seed(0)  # the clicks' random state (mask prompts draw nothing)
        _, preds = run_batch(model, images, prompted, video_of, prompt)
        if prompt == "click":
            out[f"{name}_first"] = float(_dice(preds[0], masks[0]).mean())
        later = torch.stack([_dice(p, m) for p, m in zip(preds[1:], masks[1:])]) if len(preds) > 1 else None
        out[f"{name}_propagated"] = float(later.mean()) if later is not None else float("nan")
    # another object's click scores the prompted frame only: run frame 0 alone (it never reads
    # memory, so the figure is the one of the whole stack), from the same random state
    torch.manual_seed(0)
    _, preds = run_batch(model, images[:videos], swapped[:1], video_of, "click")
    out["other_click_first"] = float(_dice(preds[0], masks[0]).mean())
    model.train(was_training)
    return out


def save_sam2_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write SAM2's checkpoint format ``{"model": state_dict}`` (SAM2's key names), atomically.

    Args:
        model: the SAM2 model.
        path: destination ``.pt``.

    Returns:
        The written path.
    """
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return atomic_torch_save({"model": state}, path)


def _fmt_time(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | os.PathLike,
    save_every: int = 100,
    log_every: int = 10,
    eval_every: int = 0,
    progress: Callable[[str], None] | None = None,
    stop_after: int | None = None,
    data_workers: int = 0,
    init_checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Pretrain the ``tiny`` SAM2 (resuming ``out_dir/state.pt`` when its settings match).

    Args:
        cfg: run settings.
        out_dir: folder for ``state.pt`` (resumable state), ``history.json`` and ``sam2_tiny_pretrained.pt``.
        save_every: iterations between saved states (and at the end).
        log_every: iterations between progress lines.
        eval_every: iterations between held-out evaluations (0: only at the end).
        progress: receives each progress line (default: the module logger).
        stop_after: stop (with the state saved) once this many iterations are done in total, without
            writing the final checkpoint: for tests of resuming.
        data_workers: processes rendering the next batches while the model trains (0: render in this
            process). The samples are a function of the iteration, so results do not depend on it.
        init_checkpoint: SAM2 checkpoint (``{"model": state_dict}``, e.g. an earlier run's) to start
            from instead of random weights; ignored when resuming. SAM2 is pretrained in two stages
            the same way: images first (SA-1B), then the mix with videos.

    Returns:
        ``{"checkpoint": path or None, "history": [...], "evaluations": [...], "seconds": float}``.

    Raises:
        ValueError: ``out_dir/state.pt`` belongs to other settings.
        FileNotFoundError: ``init_checkpoint`` does not exist.
    """
    say = progress or logger.info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    torch.manual_seed(cfg.seed)
    model = instantiate_sam2("tiny", cfg.image_size, pathseqsam_class=False)
    if init_checkpoint is not None and not state_path.is_file():
        init = Path(init_checkpoint)
        if not init.is_file():
            raise FileNotFoundError(f"init checkpoint not found: {init}")
        load_sam2_checkpoint(model, init)  # strict, errors name the keys (as for official weights)
        say(f"starting from the weights of {init}")
    _apply_model_settings(model, cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    evaluations: list[dict[str, float]] = []
    start_iteration, seconds_before = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config"] != cfg.as_dict():
            raise ValueError(
                f"{state_path} was written by other settings ({json.dumps(state['config'])}); "
                "use another output folder or the same settings"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_iteration, history = state["iteration"], state["history"]
        evaluations, seconds_before = state["evaluations"], state["seconds"]
        say(f"resuming {state_path} at iteration {start_iteration}/{cfg.iterations}")

    def save_state(iteration: int, seconds: float) -> None:
        state = {
            "config": cfg.as_dict(),
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "evaluations": evaluations,
            "seconds": seconds,
        }
        atomic_torch_save(state, state_path)
        atomic_write(
            out / "history.json",
            lambda tmp: tmp.write_text(
                json.dumps(
                    {"config": cfg.as_dict(), "history": history, "evaluations": evaluations}, indent=1
                )
            ),
        )

    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    t0, cpu0 = time.perf_counter(), time.process_time()
    plans = {i: plan_batch(cfg, i) for i in range(start_iteration, end)}
    pool = ProcessPoolExecutor(data_workers, mp_context=get_context("spawn")) if data_workers > 0 else None
    ahead: dict[int, Future] = {}
    try:
        for iteration in range(start_iteration, end):
            plan = plans[iteration]
            t_data = time.perf_counter()
            if pool is None:
                samples = _samples(cfg, plan)
            else:  # keep the workers busy a few batches ahead
                for i in range(iteration, min(end, iteration + 2 * data_workers + 1)):
                    if i not in ahead:
                        ahead[i] = pool.submit(_samples, cfg, plans[i])
                samples = ahead.pop(iteration).result()
            images, masks, video_of = _to_tensors(samples)
            t_data = time.perf_counter() - t_data
            row = _train_step(model, optimizer, cfg, iteration, plan, images, masks, video_of)
            history.append({**row, "data_wait_s": round(t_data, 4)})
            done = iteration + 1 - start_iteration
            if (iteration + 1) % log_every == 0 or iteration + 1 == end:
                rate = (time.perf_counter() - t0) / done
                recent = history[-log_every:]

                def mean(key: str, recent: list[dict[str, Any]] = recent) -> float:
                    return float(np.mean([r[key] for r in recent]))

                say(
                    f"iter {iteration + 1}/{cfg.iterations} loss/frame {mean('loss'):.3f} (focal {mean('mask'):.4f} "
                    f"dice {mean('dice'):.3f} iou {mean('iou'):.3f} obj {mean('class'):.3f}) lr {row['lr']:.2e} "
                    f"{rate:.2f} s/it (cpu {(time.process_time() - cpu0) / done:.2f} s/it) "
                    f"ETA {_fmt_time(rate * (end - iteration - 1))}"
                )
            if eval_every and (iteration + 1) % eval_every == 0 and iteration + 1 < cfg.iterations:
                evaluations.append({"iteration": iteration + 1, **evaluate_propagation(model, cfg)})
                say(f"held-out Dice at {iteration + 1}: {_rounded(evaluations[-1])}")
            if (iteration + 1) % save_every == 0 and iteration + 1 < end:
                save_state(iteration + 1, seconds_before + time.perf_counter() - t0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = seconds_before + time.perf_counter() - t0
    checkpoint = None
    if end == cfg.iterations:
        if not evaluations or evaluations[-1]["iteration"] != cfg.iterations:
            evaluations.append({"iteration": cfg.iterations, **evaluate_propagation(model, cfg)})
            say(f"held-out Dice at the end: {_rounded(evaluations[-1])}")
        checkpoint = save_sam2_checkpoint(model, out / "sam2_tiny_pretrained.pt")
    save_state(end, seconds)
    return {"checkpoint": checkpoint, "history": history, "evaluations": evaluations, "seconds": seconds}


def _rounded(row: dict[str, float]) -> str:
    return json.dumps({k: round(v, 4) for k, v in row.items()})


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: PretrainConfig,
    iteration: int,
    plan: dict[str, Any],
    images: Tensor,
    masks: Tensor,
    video_of: Tensor,
) -> dict[str, Any]:
    """One optimiser step; returns the iteration's history row (loss terms per frame)."""
    torch.manual_seed(_torch_seed(cfg, iteration))  # prompts and dropout: a function of the iteration
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * _lr_factor(cfg, iteration)
    cpu = time.process_time()
    terms, _ = run_batch(
        model, images, masks, video_of, plan["prompt"], cfg.corrections, focal_weight=cfg.focal_weight
    )
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    frames = plan["frames"]
    return {
        "iteration": iteration + 1,
        "frames": frames,
        "prompt": plan["prompt"],
        "loss": float(terms["total"].detach()) / frames,
        **{k: float(terms[k].detach()) / frames for k in _TERMS},
        "grad_norm": grad_norm,
        "lr": optimizer.param_groups[0]["lr"],
        "step_cpu_s": round(time.process_time() - cpu, 4),
    }
