"""Pretraining samples: short H&E stacks of synthetic cortex at a random resolution, with tracked objects.

A sample is a fresh tissue block (every hard negative on, difficulty ``"realistic"``) rendered with
the ``"he"`` stain preset at a micrometres-per-pixel drawn log-uniformly in ``mpp_range`` (the field
of view follows: ``mpp * image_size``), cut into ``frames`` sections 2-6 um apart, randomly flipped and
rotated by multiples of 90 degrees, plus ``objects`` instances chosen in the first section (a structure
drawn uniformly among those present, then one of its instances) and tracked through the rest
(:mod:`pathseqsam.pretrain.objects`). No section is damaged: damage and the PAS look are the task's.

Everything is a deterministic function of ``(seed, key)``, so a run is reproducible and resumable
from its iteration number alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pathseqsam.pretrain.objects import find_instances, structure_masks, track_instance
from pathseqsam.synthetic.tissue import concentrations_to_rgb, make_tissue_block, render_section

__all__ = ["VideoSample", "make_video_sample"]


@dataclass
class VideoSample:
    """One pretraining stack.

    Attributes:
        images: uint8 ``[T, H, W, 3]``.
        masks: bool ``[K, T, H, W]``, one track per object (section 0 never empty).
        structures: the ``K`` structure names.
        mpp_um: micrometres per pixel.
    """

    images: np.ndarray
    masks: np.ndarray
    structures: list[str]
    mpp_um: float


def make_video_sample(
    seed: int,
    key: Sequence[int],
    image_size: int = 256,
    frames: int = 4,
    objects: int = 3,
    mpp_range: tuple[float, float] = (0.5, 2.0),
    stain: str = "he",
    spacing_um: tuple[float, float] = (2.0, 6.0),
    max_tries: int = 8,
    union_fraction: float = 0.0,
    instance_fraction: float = 0.0,
) -> VideoSample:
    """Render one stack and pick its objects.

    Args:
        seed: root seed (from :data:`pathseqsam.synthetic.seeds.PRETRAIN_SEEDS`).
        key: spawn key (e.g. ``(iteration, video)``); together with ``seed`` it fixes everything.
        image_size: side in pixels.
        frames: sections (1 = a single image).
        objects: objects per stack; drawn with replacement of the structure, without replacement of
            the instance when enough exist.
        mpp_range: (min, max) micrometres per pixel.
        stain: stain preset.
        spacing_um: (min, max) distance between consecutive sections.
        max_tries: blocks drawn until one has an instance (a bare-glass field has none).
        union_fraction: probability that an object is every instance of its structure together
            (:func:`~pathseqsam.pretrain.objects.structure_masks`) instead of one instance; its name
            is then ``"all <structure>"``. 0 draws nothing extra from ``rng`` (older runs unchanged).
        instance_fraction: probability that an object is drawn uniformly among all the instances
            of the first section (as SAM2 samples masklets) instead of structure first. Structure
            first over-samples the few glomeruli of a field (glomerulus, tuft and capsule are three
            of its structures against one for dozens of tubules), so a decoder that predicts the
            glomerulus whatever the click scores well (measured: ``other_click_first`` equals
            ``click_first``). 0 draws nothing extra from ``rng`` (older runs unchanged).

    Returns:
        The :class:`VideoSample`.

    Raises:
        RuntimeError: no block with an instance in ``max_tries`` draws.
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))
    for _ in range(max_tries):
        mpp = float(np.exp(rng.uniform(np.log(mpp_range[0]), np.log(mpp_range[1]))))
        depths = np.concatenate([[0.0], np.cumsum(rng.uniform(*spacing_um, size=frames - 1))])
        block = make_tissue_block(rng, mpp * image_size, (0.0, float(depths[-1])), "realistic", stain=stain)
        sections = [render_section(block, float(z), image_size, rng) for z in depths]
        instances = find_instances(
            sections[0].compartments, min_area=max(64, image_size * image_size // 1000)
        )
        if instances:
            break
    else:
        raise RuntimeError(f"no structure found in {max_tries} blocks (seed {seed}, key {tuple(key)})")

    by_structure: dict[str, list[int]] = {}
    for i, inst in enumerate(instances):
        by_structure.setdefault(inst.structure, []).append(i)
    names = list(by_structure)
    comps = [s.compartments for s in sections]
    chosen: list[int] = []
    tracks, structures = [], []
    for _ in range(objects):
        if instance_fraction > 0 and rng.random() < instance_fraction:
            pool = list(range(len(instances)))  # uniform over instances (SAM2's masklet sampling)
        else:
            name = names[int(rng.integers(len(names)))]
            if union_fraction > 0 and rng.random() < union_fraction:
                union = structure_masks(name, comps)
                # section 0 holds exactly the instances found there (the prompt is never empty)
                union[0] = np.logical_or.reduce([instances[i].mask for i in by_structure[name]])
                tracks.append(union)
                structures.append(f"all {name}")
                continue
            pool = by_structure[name]  # structure first, then one of its instances
        fresh = [i for i in pool if i not in chosen]
        chosen.append(int(rng.choice(fresh if fresh else pool)))
        tracks.append(track_instance(instances[chosen[-1]], comps))
        structures.append(instances[chosen[-1]].structure)
    masks = np.stack(tracks)

    images = []
    for s in sections:
        rgb = concentrations_to_rgb(s.amounts, block.stains)
        rgb = rgb + rng.normal(0.0, 1.5 / 255.0, size=rgb.shape).astype(np.float32)  # sensor noise
        images.append(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
    video = np.stack(images)
    k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    video = np.rot90(video, k, axes=(1, 2))
    masks = np.rot90(masks, k, axes=(2, 3))
    if flip:
        video, masks = video[:, :, ::-1], masks[:, :, :, ::-1]
    return VideoSample(
        images=np.ascontiguousarray(video),
        masks=np.ascontiguousarray(masks),
        structures=structures,
        mpp_um=mpp,
    )
