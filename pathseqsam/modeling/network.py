"""PathSeqSAM: SAM2 over the slices of one subject, with distance-aware and adaptive memory.

``PathSeqSAM`` subclasses ``sam2.modeling.sam2_base.SAM2Base`` and reuses its image encoder,
prompt encoder, mask decoder, memory encoder and memory attention as they are. What it changes:

* ``forward``: a differentiable, batched pass over a whole sequence (SAM2's video predictor runs
  under ``inference_mode`` and tracks one object at a time), prompt-free by default;
* memory assembly (replaces SAM2's ``_prepare_memory_conditioned_features`` loop over the last N
  frames): top-K slices by Eq. 2 from a bounded bank (see ``adaptive_memory``), with SAM2's temporal
  slot encodings kept (the frame gap, clipped to SAM2's 6 slots) so pretrained weights stay in
  distribution;
* the memory cross-attention keys are weighted by ``phi(d)`` of the physical distance (Eq. 1, see
  ``distance_attention``).

``memory_selection="last"`` with ``distance_mode="none"`` is SAM2 itself (the baseline of every
ablation; ``tests/modeling/test_sam2_equivalence.py`` checks it against ``SAM2Base.track_step`` to
1e-5): the first slice is SAM2's initial conditioning frame whether prompted or not, memory holds
the prompted slices plus the slices at most ``num_maskmem - 1`` back, object pointers those plus
the slices at most ``max_obj_ptrs_in_encoder - 1`` back, each with SAM2's temporal encodings.
Two things stay PathSeqSAM's own: a slice prompted after the first is segmented with memory (as
SAM2 treats clicks on a frame it has tracked, not as its predictor treats clicks given before
propagation), and in training the returned logits are the decoder's ungated masks (see
``_segment_slice``; the memory sees SAM2's gated ones, evaluation is unchanged).

Build it with :func:`pathseqsam.build_pathseqsam`, which composes SAM2's own Hydra configs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import get_1d_sine_pe
from torch import Tensor

from pathseqsam.modeling.adaptive_memory import (
    MemoryBank,
    MemoryEntry,
    adaptive_memory_scores,
    gather_entries,
    select_memory,
    select_recent,
)
from pathseqsam.modeling.distance_attention import (
    DistanceAwareRoPEAttention,
    DistanceKernel,
    estimate_distances_from_features,
    pairwise_distances,
)
from pathseqsam.modeling.memory_compression import compress_slots, grid_key_xy, pool_factors
from pathseqsam.modeling.resolution import MODEL_MPP_KEY
from pathseqsam.modeling.settings import MEMORY_SELECTIONS, PathSeqSAMSettings
from pathseqsam.modeling.slide_memory import SlideMemoryBank, outside_grid, shifted_sine_pe, token_offsets

logger = logging.getLogger(__name__)

__all__ = ["MEMORY_ONLY_PARAMETERS", "MEMORY_SELECTIONS", "SLIDE_LAMBDA_KEY", "PathSeqSAM"]

# Parameter-name prefixes that only serve the memory path: with ``memory_selection="none"`` they
# never reach the mask logits, so :func:`pathseqsam.modeling.lora.configure_trainable` freezes them
# (honest trainable-parameter counts; no optimizer state for weights that cannot learn).
MEMORY_ONLY_PARAMETERS = (
    "memory_attention.",
    "memory_encoder.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "distance_kernel.",
    "slide_distance_kernel.",
)
# lambda of Eq. 1 in slide coordinates (distance in tile strides); only slide-mode networks have it
SLIDE_LAMBDA_KEY = "slide_distance_kernel.raw_lambda"


class PathSeqSAM(SAM2Base):
    """SAM2 that segments every slice of a sequence, remembering the most useful earlier slices.

    Args:
        *args: SAM2Base arguments (image_encoder, memory_attention, memory_encoder, ...).
        settings: PathSeqSAM's own settings; see :class:`~pathseqsam.modeling.settings.PathSeqSAMSettings`.
            Its fields may instead be passed as keyword arguments (that is how SAM2's Hydra config
            instantiates the class); each becomes an attribute of the same name.
        **kwargs: further SAM2Base keyword arguments.
    """

    def __init__(self, *args: Any, settings: PathSeqSAMSettings | None = None, **kwargs: Any) -> None:
        own, kwargs = PathSeqSAMSettings.split(kwargs)
        if settings is not None and own != PathSeqSAMSettings():
            raise ValueError(
                "pass PathSeqSAM's settings either as 'settings' or as keyword arguments, not both"
            )
        settings = settings or own
        super().__init__(*args, **kwargs)
        needed = max(settings.memory_k, self.num_maskmem - 1, self.max_obj_ptrs_in_encoder - 1)
        if settings.memory_pool_size < needed:
            raise ValueError(
                f"memory_pool_size={settings.memory_pool_size} must be >= {needed} (K, SAM2's frames and pointers)"
            )
        self.settings = settings
        self.memory_k = settings.memory_k
        self.memory_selection = settings.memory_selection
        self.memory_pool_size = settings.memory_pool_size
        self.distance_unit_um = float(settings.distance_unit_um)
        self.multimask_output = settings.multimask_output
        # see _segment_slice: train the mask head on SAM2's ungated logits (evaluation is unchanged)
        self.ungated_training_masks = True
        self.encoder_chunk = settings.encoder_chunk
        self.distance_kernel = DistanceKernel(settings.distance_mode, settings.distance_lambda_init)
        self.memory_coordinates = settings.memory_coordinates
        if self.memory_coordinates == "slide":
            # Eq. 1 on tiles: distances in strides, not section gaps; the section lambda is left alone
            self.slide_distance_kernel = DistanceKernel(settings.distance_mode, settings.distance_lambda_init)
            self._register_load_state_dict_pre_hook(_start_slide_lambda, with_module=True)
        if settings.distance_mode != "none":
            bad = [
                i
                for i, layer in enumerate(self.memory_attention.layers)
                if not isinstance(layer.cross_attn_image, DistanceAwareRoPEAttention)
            ]
            if bad:
                raise ValueError(
                    f"distance_mode={settings.distance_mode!r} needs DistanceAwareRoPEAttention as memory "
                    f"cross-attention (layers {bad} are not): build the model with pathseqsam.build_pathseqsam"
                )

    @property
    def distance_mode(self) -> str:
        return self.distance_kernel.mode

    def __prepare_scriptable__(self) -> PathSeqSAM:
        # torch.jit.script calls this first; SAM2's Python control flow (and ours) cannot be
        # scripted, and torch's own failure deep inside its frontend names nothing useful
        raise RuntimeError(
            "PathSeqSAM cannot be scripted with torch.jit.script (SAM2's Python control flow): trace it "
            "for one sequence length and image size instead, e.g. ckpt_export with --use_trace true "
            "--input_shape [1,3,N,H,W] (see 'Export' in bundle/docs/README.md)"
        )

    # ------------------------------------------------------------------ public API
    def forward(
        self,
        images: Tensor,
        positions: Tensor | None = None,
        prompts: dict[str, Tensor] | None = None,
        return_aux: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Segment every slice of a batch of sequences.

        Args:
            images: ``[B, 3, N, H, W]`` (or ``[B, 3, H, W]`` for ``N = 1``), RGB normalised with
                SAM2's ImageNet mean/std. Resized to ``image_size`` inside if needed.
            positions: optional ``[B, N]`` or ``[B, N, D]`` (D = 1, 2, 3) slice/patch positions in
                micrometres; NaN (or None) where unknown, then distances are estimated from features.
            prompts: optional dict, for interactive use; slices without prompts are segmented
                automatically. ``"point_coords"`` ``[B, N, P, 2]`` (x, y) in input pixels,
                ``"point_labels"`` ``[B, N, P]`` (1 foreground, 0 background, -1 none),
                ``"boxes"`` ``[B, N, 4]`` (x0, y0, x1, y1), NaN rows for none. Prompted slices are
                SAM2 conditioning slices: always in memory.
            return_aux: also return SAM2's heads and what training losses need.

        Returns:
            Mask logits ``[B, 1, N, H, W]`` (``[B, 1, H, W]`` for 4-D input; SAM2 writes -1024 where its object score says "no
            object"), or with ``return_aux`` a dict: ``logits``; ``object_score_logits``,
            ``iou_predictions`` ``[B, N]``; ``descriptors`` ``[B, N, C]``; ``image_features``
            ``[B, N, C, h, w]`` (stride-16 image-encoder features); ``memory_indices``
            ``[B, N, M]`` (slice indices each slice attended to, -1 padded).
        """
        images, squeeze = self._as_sequence(images)
        steps = list(self.iter_slices(images, positions, prompts, return_aux))
        logits = torch.stack([st["logits"] for st in steps], dim=2)  # [B, 1, N, H, W]
        if squeeze:  # [B, 3, H, W] in -> [B, 1, H, W] out
            logits = logits[:, :, 0]
        if not return_aux:
            return logits
        bsz, n = images.shape[0], images.shape[2]
        width = max(st["memory_indices"].shape[1] for st in steps)
        mem_idx = torch.full((bsz, n, width), -1, dtype=torch.long, device=images.device)
        for t, st in enumerate(steps):
            mem_idx[:, t, : st["memory_indices"].shape[1]] = st["memory_indices"]
        out = {key: torch.stack([st[key] for st in steps], dim=1) for key in self._AUX_KEYS}
        return {"logits": logits, **out, "memory_indices": mem_idx}

    _AUX_KEYS = ("object_score_logits", "iou_predictions", "descriptors", "image_features")

    def iter_slices(
        self,
        images: Tensor,
        positions: Tensor | None = None,
        prompts: dict[str, Tensor] | None = None,
        return_aux: bool = False,
    ) -> Iterator[dict[str, Tensor]]:
        """Segment a sequence slice by slice, yielding each slice's result as soon as it is ready.

        Same arguments as :meth:`forward`. Memory held between slices is bounded (the memory bank
        and one encoder chunk), so a caller that writes each slice out segments sequences of any
        length in constant memory; :meth:`forward` stacks these results.

        Yields:
            Per slice ``t``: ``logits`` ``[B, 1, H, W]``, ``object_score_logits`` and
            ``iou_predictions`` ``[B]``; with ``return_aux`` also ``descriptors`` ``[B, C]``,
            ``image_features`` ``[B, C, h, w]`` and ``memory_indices`` ``[B, M]``.
        """
        images, _ = self._as_sequence(images)
        bsz, _, n, h, w = images.shape
        slice_prompts = self._as_prompts(prompts, bsz, n, h, w, images.device)
        yield from self._segment_chunks([images], positions, n, slice_prompts, return_aux)

    def iter_slice_stream(
        self,
        chunks: Iterable[Tensor],
        positions: Tensor | None,
        num_slices: int,
        return_aux: bool = False,
        tile_um: float | None = None,
        stride_um: float | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """:meth:`iter_slices` for sequences too long to hold: the images arrive chunk by chunk.

        Whole-slide tiles are one sequence of thousands of tiles; holding them all as one
        ``[B, 3, N, H, W]`` tensor would make memory grow with the slide. Here the caller hands
        in an iterable of chunks and only the positions (a few floats per slice) up front; the
        per-slice computation is :meth:`iter_slices`' own (same memory bank, same distances),
        so a sequence streamed in chunks gives the same results as the stacked sequence.
        Prompt-free.

        Args:
            chunks: iterable of ``[B, 3, n_i, H, W]`` (or ``[B, 3, H, W]`` for one slice) tensors whose
                ``n_i`` add up to ``num_slices``; same ``B``, ``H``, ``W`` in all.
            positions: ``[B, N]`` or ``[B, N, D]`` micrometres for all ``N = num_slices`` slices, or None.
            num_slices: ``N``, the sequence length (the last slice writes no memory).
            return_aux: as in :meth:`iter_slices`.
            tile_um: in slide coordinates, the tiles' side in micrometres (default the network's
                ``slide_tile_um``).
            stride_um: in slide coordinates, the tile stride (default the network's ``slide_stride_um``).

        Yields:
            Per slice, the dict :meth:`iter_slices` yields.
        """
        n = int(num_slices)
        if n < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        yield from self._segment_chunks(chunks, positions, n, None, return_aux, (tile_um, stride_um))

    def _segment_chunks(
        self,
        chunks: Iterable[Tensor],
        positions: Tensor | None,
        n: int,
        slice_prompts: list[Any] | None,
        return_aux: bool,
        geometry: tuple[float | None, float | None] = (None, None),
    ) -> Iterator[dict[str, Tensor]]:
        """The slice loop of :meth:`iter_slices` and :meth:`iter_slice_stream`: encode each chunk
        (``encoder_chunk`` slices per image-encoder call) and segment its slices in order, with one
        memory bank across chunks; ``slice_prompts`` holds one entry per slice (None: prompt-free);
        ``geometry`` is ``(tile_um, stride_um)`` for slide coordinates (None: the network's)."""
        bank: MemoryBank | None = None
        state: dict[str, Any] = {"adj_count": 0, "prev_desc": None}
        pos: Tensor | None = None
        t = 0
        for chunk in chunks:
            chunk, _ = self._as_sequence(chunk)
            bsz, _, m, h, w = chunk.shape
            if t + m > n:
                raise ValueError(f"the chunks hold more than num_slices={n} slices")
            if pos is None:
                pos = self._as_positions(positions, bsz, n, chunk.device)
                state["adj_sum"] = chunk.new_zeros(bsz)
                bank = self._new_bank(pos, n, geometry, state)
            resize = (h, w) != (self.image_size, self.image_size)
            for c0 in range(0, m, self.encoder_chunk):
                c1 = min(m, c0 + self.encoder_chunk)
                flat = chunk[:, :, c0:c1].transpose(1, 2).reshape(bsz * (c1 - c0), 3, h, w)
                if resize:
                    flat = F.interpolate(
                        flat, size=(self.image_size,) * 2, mode="bilinear", align_corners=False
                    )
                _, feats, vpos, feat_sizes = self._prepare_backbone_features(self.forward_image(flat))
                for i in range(c1 - c0):
                    feats_t = [x.unflatten(1, (bsz, c1 - c0))[:, :, i].contiguous() for x in feats]
                    vpos_t = [x.unflatten(1, (bsz, c1 - c0))[:, :, i].contiguous() for x in vpos]
                    step = self._segment_slice(
                        t,
                        n,
                        feats_t,
                        vpos_t,
                        feat_sizes,
                        None if slice_prompts is None else slice_prompts[t],
                        bank,
                        pos,
                        state,
                        return_aux,
                    )
                    if resize:
                        step["logits"] = F.interpolate(
                            step["logits"], size=(h, w), mode="bilinear", align_corners=False
                        )
                    t += 1
                    yield step
                del feats, vpos
        if t != n:
            raise ValueError(f"the chunks held {t} slices, expected num_slices={n}")

    # ------------------------------------------------------------------ one slice
    def _segment_slice(
        self,
        t: int,
        n: int,
        feats: list[Tensor],
        vpos: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, Tensor] | None,
        bank: MemoryBank,
        positions: Tensor,
        state: dict[str, Any],
        return_aux: bool,
    ) -> dict[str, Tensor]:
        bsz, c = feats[-1].shape[1], self.hidden_dim
        hf, wf = feat_sizes[-1]
        top = feats[-1].permute(1, 2, 0).reshape(bsz, c, hf, wf)
        desc = F.normalize(top.detach().float().mean(dim=(2, 3)), dim=-1)
        if state["prev_desc"] is not None:
            state["adj_sum"] = state["adj_sum"] + (1.0 - (desc * state["prev_desc"]).sum(-1)).clamp_min(0.0)
            state["adj_count"] += 1
        state["prev_desc"] = desc

        mem_slices = torch.empty(bsz, 0, dtype=torch.long, device=top.device)
        if len(bank) == 0:
            pix_feat = self._no_memory_features(feats, vpos, feat_sizes)
        elif isinstance(bank, SlideMemoryBank):
            pix_feat, mem_slices = self._condition_on_slide_memory(
                t, feats, vpos, feat_sizes, bank, desc, state
            )
        else:
            adj_mean = state["adj_sum"] / max(state["adj_count"], 1)
            pix_feat, mem_slices = self._condition_on_memory(
                t, n, feats, vpos, feat_sizes[-1], bank, desc, positions, adj_mean
            )

        high_res = [
            x.permute(1, 2, 0).reshape(bsz, x.shape[-1], *s) for x, s in zip(feats[:-1], feat_sizes[:-1])
        ]
        # SAM2's rule (_use_multimask) counts the points handed to the decoder (padding columns
        # that no batch element uses are dropped in _as_prompts; a box counts as two points)
        n_pts = 0 if point_inputs is None else point_inputs["point_labels"].shape[1]
        multimask = self.multimask_output
        if multimask is None:
            multimask = (
                self.multimask_output_in_sam
                and (t == 0 or self.multimask_output_for_tracking)
                and self.multimask_min_pt_num <= n_pts <= self.multimask_max_pt_num
            )
        # SAM2 overwrites the mask logits with -1024 wherever the object score is negative (a hard
        # torch.where): a slice with a glomerulus whose object score dips below 0 then sends no
        # gradient to the mask head. In training the loss therefore sees the decoder's ungated masks
        # (captured by a hook, same selection and upsampling as SAM2); memory and evaluation keep
        # SAM2's gated ones. (The gradient argument; its effect was not measured in isolation.)
        captured: dict[str, Tensor] = {}
        hook = None
        if self.training and self.pred_obj_scores and self.ungated_training_masks:
            hook = self.sam_mask_decoder.register_forward_hook(
                lambda _module, _inputs, output: captured.update(masks=output[0])
            )
        try:
            _, _, ious, _, high_res_masks, obj_ptr, obj_logits = self._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=None,
                high_res_features=high_res if self.use_high_res_features_in_sam else None,
                multimask_output=multimask,
            )
        finally:
            if hook is not None:
                hook.remove()
        logits = (
            high_res_masks if not captured else self._upsample_best_mask(captured["masks"], ious, multimask)
        )
        best_iou = ious.max(dim=-1).values.float()
        obj_logit = obj_logits[:, 0].float()

        # the last slice's memory would never be read; without memory nothing is ever read
        if t < n - 1 and self.num_maskmem > 0 and self.memory_selection != "none":
            mem_feat, mem_pos = self._encode_new_memory(
                current_vision_feats=feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=obj_logits,
                is_mask_from_pts=point_inputs is not None,
            )
            conf = torch.sigmoid(obj_logit) * best_iou.clamp(0.0, 1.0)
            is_cond = (
                torch.zeros(bsz, dtype=torch.bool, device=top.device)
                if point_inputs is None
                else (point_inputs["point_labels"] >= 0).any(dim=1)
            )
            if t == 0 and self.memory_selection == "last" and not isinstance(bank, SlideMemoryBank):
                # SAM2 tracks from an initial conditioning frame, prompted or not: the first slice
                # stays in memory with the conditioning slot (t_pos 0) and its pointer stays too
                is_cond = torch.ones_like(is_cond)
            bank.add(
                MemoryEntry(
                    index=t,
                    features=mem_feat.flatten(2).transpose(1, 2),
                    pos_enc=mem_pos[-1].flatten(2).transpose(1, 2),
                    obj_ptr=obj_ptr,
                    descriptor=desc,
                    confidence=conf.detach(),
                    position=positions[:, t],
                    is_cond=is_cond,
                )
            )
        out = {"logits": logits, "object_score_logits": obj_logit, "iou_predictions": best_iou}
        if return_aux:
            out.update(descriptors=desc, image_features=top, memory_indices=mem_slices)
        return out

    def _upsample_best_mask(self, multimasks: Tensor, ious: Tensor, multimask: bool) -> Tensor:
        """SAM2's mask selection and upsampling (``_forward_sam_heads``) applied to ungated masks."""
        masks = multimasks.float()
        if multimask:
            best = torch.argmax(ious, dim=-1)
            masks = masks[torch.arange(masks.shape[0], device=masks.device), best].unsqueeze(1)
        return F.interpolate(
            masks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )

    def _no_memory_features(
        self, feats: list[Tensor], vpos: list[Tensor], feat_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """First slice: SAM2's no-memory path (``directly_add_no_mem_embed`` or a dummy memory token)."""
        bsz, c = feats[-1].shape[1], self.hidden_dim
        hf, wf = feat_sizes[-1]
        if self.directly_add_no_mem_embed:
            x = feats[-1] + self.no_mem_embed
        else:
            x = self.memory_attention(
                curr=feats[-1:],
                curr_pos=vpos[-1:],
                memory=self.no_mem_embed.expand(1, bsz, self.mem_dim),
                memory_pos=self.no_mem_pos_enc.expand(1, bsz, self.mem_dim),
                num_obj_ptr_tokens=0,
            )
        return x.permute(1, 2, 0).reshape(bsz, c, hf, wf)

    # ------------------------------------------------------------------ memory
    def _condition_on_memory(
        self,
        t: int,
        n: int,
        feats: list[Tensor],
        vpos: list[Tensor],
        feat_size: tuple[int, int],
        bank: MemoryBank,
        desc: Tensor,
        positions: Tensor,
        adj_mean: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Cross-attend the current slice to the selected memory slices; returns (features, slice indices)."""
        bsz, c = feats[-1].shape[1], self.hidden_dim
        hw = feats[-1].shape[0]
        slice_idx = bank.indices  # [P]
        is_cond = bank.stack("is_cond")  # [B, P]
        key_desc = bank.stack("descriptor")
        valid = pvalid = None  # [B, M] False marks padding (last mode, batch elements keeping fewer)
        if self.memory_selection == "topk":
            sel = select_memory(
                adaptive_memory_scores(desc, key_desc, bank.stack("confidence")), is_cond, self.memory_k
            )
        else:
            # SAM2 exactly: the prompted slices plus the slices at most num_maskmem - 1 back
            sel, valid = select_recent(slice_idx, is_cond, t, self.num_maskmem - 1)
        sel_slices = slice_idx[sel]  # [B, M]
        sel_cond = gather_entries(is_cond, sel)

        # spatial memories + SAM2's temporal slot encoding (cond slices: slot of t_pos = 0)
        mem = gather_entries(bank.stack("features"), sel)  # [B, M, HW, Cm]
        gap = (t - sel_slices).clamp(1, self.num_maskmem - 1)
        slot = torch.where(sel_cond, torch.full_like(gap, self.num_maskmem - 1), gap - 1)
        mem_pos = gather_entries(bank.stack("pos_enc"), sel) + self.maskmem_tpos_enc[slot].squeeze(2)
        key_xy = None
        if self.settings.memory_token_um is None:
            tokens, tokens_pos = [mem.flatten(1, 2)], [mem_pos.flatten(1, 2)]
            per_slice = [hw] * sel.shape[1]
        else:  # nearest slices first, each pooled to its budget
            dist = self._distances(sel, bank, desc, key_desc, positions[:, t], adj_mean)
            order = torch.argsort(dist + 1e-6 * (t - sel_slices).float(), dim=1)
            sel, sel_slices, mem, mem_pos = (
                gather_entries(x, order) for x in (sel, sel_slices, mem, mem_pos)
            )
            valid = None if valid is None else gather_entries(valid, order)
            factors = self._pool_factors(sel.shape[1], feat_size)
            xy = grid_key_xy(*feat_size, bsz, sel.shape[1], mem.device)
            (mem_t, pos_t), key_xy, per_slice = compress_slots([mem, mem_pos], xy, factors, feat_size)
            tokens, tokens_pos = [mem_t], [pos_t]
        weighted_slices = [sel]

        num_ptr_tokens = 0
        if self.use_obj_ptrs_in_encoder:
            max_ptrs = min(n, self.max_obj_ptrs_in_encoder)
            if self.memory_selection == "topk":
                psel = sel
            else:  # SAM2: pointers of the prompted slices and of the last max_ptrs - 1 slices
                psel, pvalid = select_recent(slice_idx, is_cond, t, max(max_ptrs - 1, 1))
            ptrs = gather_entries(bank.stack("obj_ptr"), psel)  # [B, Mp, C]
            if self.add_tpos_enc_to_obj_ptrs:
                ptr_gap = (t - slice_idx[psel]).float() / max(max_ptrs - 1, 1)
                dim = c if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
                ptr_pos = self.obj_ptr_tpos_proj(get_1d_sine_pe(ptr_gap, dim=dim))
            else:
                ptr_pos = ptrs.new_zeros(bsz, psel.shape[1], self.mem_dim)
            split = c // self.mem_dim  # a C-dim pointer becomes `split` tokens of mem_dim
            tokens.append(ptrs.reshape(bsz, -1, self.mem_dim))
            tokens_pos.append(ptr_pos.repeat_interleave(split, dim=1))
            num_ptr_tokens = psel.shape[1] * split
            per_slice += [split] * psel.shape[1]
            weighted_slices.append(psel)

        memory = torch.cat(tokens, dim=1).transpose(0, 1)  # [Nk, B, Cm]
        memory_pos = torch.cat(tokens_pos, dim=1).transpose(0, 1)
        repeats = torch.tensor(per_slice, device=memory.device)
        weighting: dict[str, Tensor] = {}
        if self.distance_mode != "none":
            cand = torch.cat(weighted_slices, dim=1)  # [B, M + Mp] bank positions
            dist = self._distances(cand, bank, desc, key_desc, positions[:, t], adj_mean)
            dist = dist.repeat_interleave(repeats, dim=1)  # per key token
            if self.distance_mode == "multiplicative":
                weighting["scale"] = self.distance_kernel.phi(dist)
            else:
                weighting["bias"] = self.distance_kernel.bias(dist)
        if key_xy is not None:
            weighting["key_xy"] = key_xy
        if any(v is not None and not bool(v.all()) for v in (valid, pvalid)):
            # last mode with batch elements keeping different numbers of slices: padding is masked out
            keep = torch.cat([valid] + ([pvalid] if pvalid is not None else []), dim=1)
            mask = torch.zeros(keep.shape, device=memory.device).masked_fill(~keep, float("-inf"))
            mask = mask.repeat_interleave(repeats, dim=1)
            weighting["bias"] = mask if "bias" not in weighting else weighting["bias"] + mask
            sel_slices = sel_slices.masked_fill(~valid, -1)
        pix = self._attend_memory(feats, vpos, memory, memory_pos, num_ptr_tokens, weighting)
        return pix.permute(1, 2, 0).reshape(bsz, c, *feat_size), sel_slices

    # ------------------------------------------------------------------ memory in slide coordinates
    def _new_bank(
        self, pos: Tensor, n: int, geometry: tuple[float | None, float | None], state: dict[str, Any]
    ) -> MemoryBank:
        """The sequence's memory bank: SAM2's recency pool, or in slide coordinates the 2D one.

        A sequence that never reads memory (one tile, or no memory at all: per-tile inference) needs
        no tile positions, so it gets the plain bank whatever the coordinates.
        """
        if self.memory_coordinates != "slide" or n == 1 or self.memory_selection == "none":
            return MemoryBank(self.memory_pool_size)
        tile_um, stride_um = geometry
        tile_um = tile_um or self.settings.slide_tile_um
        if tile_um is None:
            mpp = getattr(self, MODEL_MPP_KEY, None)
            if mpp is None:
                raise ValueError(
                    "memory_coordinates='slide' needs the tile side in micrometres: build the network with "
                    "model_mpp_um (the field of view is image_size * model_mpp_um) or set slide_tile_um"
                )
            tile_um = self.image_size * float(mpp)
        stride_um = stride_um or self.settings.slide_stride_um or tile_um / 2.0
        state["tile_um"] = float(tile_um)
        return SlideMemoryBank(pos, float(stride_um))

    def _condition_on_slide_memory(
        self,
        t: int,
        feats: list[Tensor],
        vpos: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        bank: SlideMemoryBank,
        desc: Tensor,
        state: dict[str, Any],
    ) -> tuple[Tensor, Tensor]:
        """Cross-attend tile ``t`` to its segmented neighbours, each at its offset on the slide.

        Neighbours (within 1.5 strides) are ranked by Eq. 2 (``topk``) or recency (``last``); their
        keys are rotated at their slide positions, their sine encoding shifted alike, one fixed slot
        encoding for all; no object pointers. A batch element with no neighbour (or no memory token
        inside its tile) takes SAM2's no-memory path.
        """
        bsz, c = feats[-1].shape[1], self.hidden_dim
        hf, wf = feat_sizes[-1]
        near = bank.neighbours(t)  # [B, P]
        if self.memory_selection == "topk":
            score = adaptive_memory_scores(desc, bank.stack("descriptor"), bank.stack("confidence"))
            limit = self.memory_k
        else:  # "last": the most recent neighbours, as many as SAM2's recent frames
            score = bank.indices.float()[None].expand(bsz, -1)
            limit = self.num_maskmem - 1
        num = max(1, min(limit, int(near.sum(1).max())))
        sel = torch.where(near, score.float(), float("-inf")).topk(num, dim=1).indices.sort(dim=1).values
        valid = gather_entries(near, sel)  # [B, M]

        offsets = token_offsets(
            bank.positions[:, t],
            gather_entries(bank.stack("position")[..., :2].float(), sel),
            state["tile_um"] / wf,
        )  # [B, M, 2] in tokens
        mem = bank.gather("features", sel)  # [B, M, HW, Cm]
        mem_pos = shifted_sine_pe(self.memory_encoder.position_encoding, offsets, hf, wf).to(mem.dtype)
        mem_pos = mem_pos + self.maskmem_tpos_enc[0].reshape(1, 1, 1, -1)  # the "previous frame" slot
        key_xy = grid_key_xy(hf, wf, bsz, sel.shape[1], mem.device) + offsets[:, :, None, :]  # [B, M, HW, 2]
        counts = [hf * wf] * sel.shape[1]
        if self.settings.memory_token_um is not None:  # nearest tiles first, each pooled to its budget
            order = torch.argsort(bank.stride_distances(t, sel), dim=1)
            sel, valid, mem, mem_pos, key_xy = (
                gather_entries(x, order) for x in (sel, valid, mem, mem_pos, key_xy)
            )
            factors = self._pool_factors(sel.shape[1], (hf, wf))
            (mem, mem_pos), key_xy, counts = compress_slots([mem, mem_pos], key_xy, factors, (hf, wf))
        else:
            mem, mem_pos, key_xy = mem.flatten(1, 2), mem_pos.flatten(1, 2), key_xy.flatten(1, 2)
        slot_of = torch.repeat_interleave(
            torch.arange(len(counts), device=mem.device), torch.tensor(counts, device=mem.device)
        )  # [N] the memory slot of every token
        hidden = ~valid[:, slot_of]  # [B, N]: padding slots
        if self.settings.mask_outside_overlap:  # token (or pooled block) centres outside the current tile
            hidden = hidden | outside_grid(key_xy, hf, wf)
        has_memory = ~hidden.all(dim=1)  # [B]
        # an element with nothing to see keeps its keys unmasked (no NaN) and takes the no-memory path
        hidden = hidden & has_memory[:, None]
        weighting: dict[str, Tensor] = {
            "bias": torch.zeros(hidden.shape, device=mem.device).masked_fill(hidden, float("-inf")),
            "key_xy": key_xy,
        }
        if self.distance_mode != "none":
            dist = bank.stride_distances(t, sel)[:, slot_of]
            if self.distance_mode == "multiplicative":
                weighting["scale"] = self.slide_distance_kernel.phi(dist)
            else:
                weighting["bias"] = weighting["bias"] + self.slide_distance_kernel.bias(dist)
        pix = self._attend_memory(feats, vpos, mem.transpose(0, 1), mem_pos.transpose(0, 1), 0, weighting)
        pix = pix.permute(1, 2, 0).reshape(bsz, c, hf, wf)
        if not bool(has_memory.all()):
            alone = self._no_memory_features(feats, vpos, feat_sizes)
            pix = torch.where(has_memory[:, None, None, None], pix, alone)
        sel_slices = bank.indices[sel].masked_fill(~(valid & has_memory[:, None]), -1)
        return pix, sel_slices

    def _attend_memory(
        self,
        feats: list[Tensor],
        vpos: list[Tensor],
        memory: Tensor,
        memory_pos: Tensor,
        num_ptr_tokens: int,
        weighting: dict[str, Tensor],
    ) -> Tensor:
        """SAM2's memory attention, with ``weighting`` (key scale, bias, positions) in every layer's
        cross-attention; ``[HW, B, C]`` out."""
        with ExitStack() as stack:
            if weighting:
                for i, layer in enumerate(self.memory_attention.layers):
                    if not isinstance(layer.cross_attn_image, DistanceAwareRoPEAttention):
                        raise ValueError(
                            f"memory cross-attention of layer {i} cannot weight, mask or place keys: build the "
                            "model with pathseqsam.build_pathseqsam (DistanceAwareRoPEAttention)"
                        )
                    stack.enter_context(layer.cross_attn_image.key_weighting(**weighting))
            return self.memory_attention(
                curr=feats[-1:],
                curr_pos=vpos[-1:],
                memory=memory,
                memory_pos=memory_pos,
                num_obj_ptr_tokens=num_ptr_tokens,
            )

    def _pool_factors(self, slots: int, grid: tuple[int, int]) -> list[int]:
        """Pooling factor per memory slot (nearest first) from ``memory_token_um``."""
        mpp = getattr(self, MODEL_MPP_KEY, None)
        if mpp is None:
            raise ValueError(
                "memory_token_um (micrometres per memory token) needs the network's working resolution: "
                "build it with model_mpp_um"
            )
        grid = (int(grid[0]), int(grid[1]))  # plain ints: under torch.jit.trace sizes are tensors
        native_um = self.image_size * float(mpp) / grid[1]
        return pool_factors(self.settings.memory_token_um, native_um, slots, grid)

    def _distances(
        self,
        cand: Tensor,
        bank: MemoryBank,
        desc: Tensor,
        key_desc: Tensor,
        query_pos: Tensor,
        adj_mean: Tensor,
    ) -> Tensor:
        """``[B, M]`` distances (units) to bank entries ``cand``: measured, else estimated from features."""
        measured = pairwise_distances(
            query_pos, gather_entries(bank.stack("position"), cand), self.distance_unit_um
        )
        missing = torch.isnan(measured)
        if not bool(missing.any()):
            return measured
        estimated = estimate_distances_from_features(desc, gather_entries(key_desc, cand), adj_mean)
        return torch.where(missing, estimated, measured)

    # ------------------------------------------------------------------ input checking
    @staticmethod
    def _as_sequence(images: Tensor) -> tuple[Tensor, bool]:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim == 4:
            images = images.unsqueeze(2)
            squeeze = True
        elif images.ndim == 5:
            squeeze = False
        else:
            raise ValueError(
                f"images must be [B, 3, N, H, W] or [B, 3, H, W], got shape {tuple(images.shape)}"
            )
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels in dim 1, got shape {tuple(images.shape)}")
        if images.shape[2] < 1:
            raise ValueError("images hold an empty sequence (N = 0)")
        return images.float() if not images.is_floating_point() else images, squeeze

    @staticmethod
    def _as_positions(positions: Tensor | None, bsz: int, n: int, device: torch.device) -> Tensor:
        if positions is None:
            return torch.full((bsz, n, 1), float("nan"), device=device)
        pos = torch.as_tensor(positions, device=device).float()
        if pos.ndim == 2:
            pos = pos.unsqueeze(-1)
        if pos.ndim == 3 and pos.shape[0] == 1 and bsz > 1:
            # one sequence cut into several in-plane windows (sliding-window inference): same positions
            pos = pos.expand(bsz, -1, -1)
        if pos.ndim != 3 or pos.shape[:2] != (bsz, n) or pos.shape[2] not in (1, 2, 3):
            raise ValueError(
                f"positions must be [B, N] or [B, N, 1|2|3] with B={bsz}, N={n}; got {tuple(pos.shape)}"
            )
        return pos

    def _as_prompts(
        self, prompts: dict[str, Tensor] | None, bsz: int, n: int, h: int, w: int, device: torch.device
    ) -> list[dict[str, Tensor] | None]:
        """Per-slice SAM2 ``point_inputs`` (boxes become two points with labels 2, 3) or None."""
        if not prompts:
            return [None] * n
        unknown = set(prompts) - {"point_coords", "point_labels", "boxes"}
        if unknown:
            raise ValueError(
                f"prompts has unknown keys {sorted(unknown)}; expected point_coords, point_labels, boxes"
            )
        coords, labels = [], []
        if prompts.get("boxes") is not None:
            boxes = torch.as_tensor(prompts["boxes"], device=device).float()
            if boxes.shape != (bsz, n, 4):
                raise ValueError(
                    f"prompts['boxes'] must be [B, N, 4] = {(bsz, n, 4)}, got {tuple(boxes.shape)}"
                )
            valid = torch.isfinite(boxes).all(-1, keepdim=True)  # [B, N, 1]
            coords.append(torch.nan_to_num(boxes).reshape(bsz, n, 2, 2))
            box_labels = torch.tensor([2, 3], device=device).expand(bsz, n, 2)
            labels.append(torch.where(valid, box_labels, -1))
        if prompts.get("point_coords") is not None or prompts.get("point_labels") is not None:
            pc = torch.as_tensor(prompts.get("point_coords"), device=device).float()
            pl = torch.as_tensor(prompts.get("point_labels"), device=device).long()
            if pc.ndim != 4 or pc.shape[:2] != (bsz, n) or pc.shape[-1] != 2 or pl.shape != pc.shape[:3]:
                raise ValueError(
                    "prompts['point_coords'] must be [B, N, P, 2] and prompts['point_labels'] [B, N, P] "
                    f"with B={bsz}, N={n}; got {tuple(pc.shape)} and {tuple(pl.shape)}"
                )
            coords.append(pc)
            labels.append(pl)
        if not coords:
            return [None] * n
        coords_all = torch.cat(coords, dim=2)
        labels_all = torch.cat(labels, dim=2).to(torch.int32)
        # SAM2 takes coordinates in pixels of the image_size x image_size model input
        scale = torch.tensor([self.image_size / w, self.image_size / h], device=device)
        coords_all = coords_all * scale
        out: list[dict[str, Tensor] | None] = []
        for t in range(n):
            lab = labels_all[:, t]
            used = (lab >= 0).any(dim=0)  # [P] columns some batch element prompts with
            # padding that no element uses never reaches the decoder: SAM2 sees exactly the prompts
            out.append(
                None
                if not bool(used.any())
                else {"point_coords": coords_all[:, t][:, used], "point_labels": lab[:, used]}
            )
        return out


def _start_slide_lambda(
    module: PathSeqSAM,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Weights trained in sequence coordinates have no ``lambda_slide``: start it at its init value."""
    key = prefix + SLIDE_LAMBDA_KEY
    if key not in state_dict and any(k.startswith(prefix + "memory_attention.") for k in state_dict):
        state_dict[key] = module.slide_distance_kernel.raw_lambda.detach().clone()
        logger.warning(
            "these weights were trained in sequence coordinates (no %s): lambda_slide starts at %.3g",
            SLIDE_LAMBDA_KEY,
            float(module.slide_distance_kernel.lam.detach()),
        )
