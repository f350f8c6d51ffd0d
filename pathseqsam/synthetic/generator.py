"""Synthetic serial sections of kidney cortex, written in every layout the readers accept.

Each case is a 3D block of tissue (:mod:`pathseqsam.synthetic.tissue`) cut into ``sections``
sections at variable spacing (drawn in ``spacing_um``, occasionally doubled for a lost section, and
rounded to whole pixels so the KPIs offsets below encode it exactly). About ``degraded_fraction`` of
the sections, never two neighbours, are damaged (:mod:`pathseqsam.synthetic.degrade`); the
mask of every section is the exact cross-section of the 3D glomeruli at its depth.

Output (``out_dir``)::

    Task1_patch_level/<train|validation|test>/synthetic/<case>/{img,mask}/*.jpg   KPIs layout
    stacks/<case>_image.ome.tif, <case>_mask.ome.tif                              OME-TIFF, per-plane z
    stacks/<case>_image.nii.gz, <case>_mask.nii.gz                                NIfTI, um units
    datalist.json          the KPIs JPEG slices, positions [[z], ...], degraded flags (bundle default)
    datalist_tiff.json, datalist_nifti.json     the same sequences as stacks
    synthetic_meta.json    settings, per-case depths, damage kinds and parameters, glomerulus geometry
    contact_sheet.png      one case, every section with its mask contour, damaged ones in red

The KPIs layout has no z axis: section ``i`` of a case at depth ``z`` is written as patch
``<prefix>_<i>_0_<z / mpp>_img.jpg`` (offset x = 0, y = z in pixels), so the KPIs reader (offset order
``xy``, ``mpp_um={"synthetic": field_um / image_size}``) gives patch distances equal to the section
distances and orders the patches in cutting order. Training cases use ``70_101``-style folders,
validation and test cases ``70-107``; even cases carry the class prefix in file names, odd ones not.

With ``dials`` (:mod:`pathseqsam.synthetic.dials`: spacing, damage bursts, misregistration) the
study's generator is used instead: every random quantity of a case from its own stream, sub-pixel
depths, glomeruli at a constant density, damage as a Markov chain, an independent pose per section;
the settings are recorded in ``synthetic_meta.json`` and in every datalist item (``dials``).
``honest_masks`` clears the truth where a tear or a loss left bare glass. Without them (the default)
the dataset is byte for byte what this generator always wrote.

Everything is a deterministic function of ``seed`` (case ``k`` depends only on ``seed`` and ``k``).
The dataset is built in a hidden sibling folder and moved into place at the end, so an interrupted
run leaves nothing half-written.

CLI::

    python -m pathseqsam.synthetic --out DIR --cases 10 --seed 0 [--image-size 256] [--sections 10] [--stain he]
    python -m pathseqsam.synthetic --out DIR --sections 24 --spacing variable --damage-burst 8 \\
        --misregistration pose --honest-masks     # the study's dials (see pathseqsam.synthetic.dials)
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.atomic import atomic_write, atomic_write_json
from pathseqsam.data.datalist import write_datalist
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import read_slice, to_binary_mask
from pathseqsam.data.stacks import save_nifti_stack, save_tiff_stack
from pathseqsam.synthetic.contact_sheet import save_contact_sheet
from pathseqsam.synthetic.degrade import (
    Degradation,
    apply_degradation,
    choose_degraded_sections,
    sample_degradation,
)
from pathseqsam.synthetic.dials import (
    GLOMERULI_PER_MM3,
    MISREGISTRATION_SETTINGS,
    SPACING_SETTINGS,
    Dials,
    canvas_margin_um,
    damage_flags,
    dial_stream,
    move_section,
    section_gaps,
    section_poses,
)
from pathseqsam.synthetic.tissue import (
    DIFFICULTIES,
    STAIN_PRESETS,
    concentrations_to_rgb,
    make_tissue_block,
    render_section,
)

__all__ = [
    "SYNTHETIC_CLASS",
    "SYNTHETIC_META",
    "generate_synthetic_dataset",
    "main",
    "plan_dial_case",
    "synthetic_case_names",
]

SYNTHETIC_CLASS = "synthetic"
SYNTHETIC_META = "synthetic_meta.json"
_SPLIT_FOLDERS = {"training": "train", "validation": "validation", "test": "test"}


def synthetic_case_names(cases: int) -> list[tuple[str, str]]:
    """Case folder names and splits: about 60 % training, 20 % validation, 20 % test (at least one
    validation case from 2 cases on, one test case from 3 on).

    Args:
        cases: number of cases.

    Returns:
        ``[(folder_name, split), ...]`` in case order.
    """
    n_val = 0 if cases < 2 else max(1, round(0.2 * cases))
    n_test = 0 if cases < 3 else max(1, round(0.2 * cases))
    splits = ["training"] * (cases - n_val - n_test) + ["validation"] * n_val + ["test"] * n_test
    return [(f"70_{101 + k}" if s == "training" else f"70-{101 + k}", s) for k, s in enumerate(splits)]


def _section_depths(
    rng: np.random.Generator, n: int, spacing_um: tuple[float, float], mpp: float
) -> np.ndarray:
    """Depths in um: spacing drawn in ``spacing_um`` (doubled with p = 0.1: a lost section), whole pixels."""
    z_px = [0]
    for _ in range(n - 1):
        gap = rng.uniform(*spacing_um) * (2.0 if rng.random() < 0.1 else 1.0)
        z_px.append(z_px[-1] + max(1, round(gap / mpp)))
    return np.asarray(z_px, dtype=np.int64)


def _save_jpeg(path: Path, array: np.ndarray, quality: int) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="JPEG", quality=quality))


def _legacy_sections(task: dict[str, Any]) -> dict[str, Any]:
    """Depths, tissue and sections of one case with the original generator (one random stream per
    case, whole-pixel depths): the default, kept byte for byte."""
    k, size, mpp = task["index"], task["image_size"], task["field_um"] / task["image_size"]
    rng = np.random.default_rng(np.random.SeedSequence(task["seed"], spawn_key=(k,)))
    lo, hi = task["sections"]
    n = int(rng.integers(lo, hi + 1))
    z_px = _section_depths(rng, n, task["spacing_um"], mpp)
    z_um = z_px * mpp
    block = make_tissue_block(
        rng, task["field_um"], (float(z_um[0]), float(z_um[-1])), task["difficulty"], stain=task["stain"]
    )
    degraded = set(choose_degraded_sections(rng, n, task["degraded_fraction"]))
    images, masks, damage = [], [], []
    for i in range(n):
        section = render_section(block, float(z_um[i]), size, rng)
        if i in degraded:
            deg = sample_degradation(rng)
            rgb = apply_degradation(deg, section.amounts, section.mask, rng, mpp, block.stains)
        else:
            deg = Degradation(kinds=[])
            rgb = concentrations_to_rgb(section.amounts, block.stains)
        rgb = rgb + rng.normal(0.0, 1.5 / 255.0, size=rgb.shape).astype(np.float32)  # sensor noise
        images.append(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
        masks.append(_truth(section.mask, deg, task["honest_masks"]))
        damage.append(deg)
    return {
        "z_um": z_um,
        "z_px": [int(z) for z in z_px],
        "flags": [int(i in degraded) for i in range(n)],
        "images": images,
        "masks": masks,
        "damage": damage,
        "block": block,
        "extra": {},
    }


def _truth(mask: np.ndarray, deg: Degradation, honest: bool) -> np.ndarray:
    """The uint8 mask written for a section: background where the glass is bare when ``honest``."""
    if honest and deg.lost is not None:
        mask = mask & ~deg.lost
    return mask.astype(np.uint8) * 255


def plan_dial_case(task: dict[str, Any]) -> dict[str, Any]:
    """Everything of a dials case but its pixels: settings, depths, damage flags and kinds, poses, tissue.

    Each quantity comes from its own stream (:func:`pathseqsam.synthetic.dials.dial_stream`), so the
    plan under one dial setting differs from another only in what that dial controls.

    Args:
        task: one case's task (keys as built by :func:`generate_synthetic_dataset`, with ``dials``).

    Returns:
        ``{"dials", "z_um", "flags", "kinds", "poses", "block", "margin_px", "canvas_px"}``.
    """
    seed, k, size = task["seed"], task["index"], task["image_size"]
    mpp = task["field_um"] / size
    dials = Dials(**task["dials"]).resolve(seed, k)
    lo, hi = task["sections"]
    n = int(dial_stream(seed, k, "count").integers(lo, hi + 1))
    gaps = section_gaps(dial_stream(seed, k, "spacing"), n, dials.spacing)
    z_um = np.concatenate([[0.0], np.cumsum(gaps)])
    flags = damage_flags(dial_stream(seed, k, "damage"), n, float(dials.burst), task["degraded_fraction"])
    kinds = [sample_degradation(dial_stream(seed, k, "damage_kind", i)).kinds for i in range(n)]
    poses = section_poses(dial_stream(seed, k, "pose"), n, dials.misregistration)
    margin_px = int(np.ceil(canvas_margin_um(task["field_um"]) / mpp)) + 2
    canvas_px = size + 2 * margin_px
    block = make_tissue_block(
        dial_stream(seed, k, "tissue"),
        canvas_px * mpp,
        (float(z_um[0]), float(z_um[-1])),
        task["difficulty"],
        stain=task["stain"],
        glomeruli_per_mm3=task["glomeruli_per_mm3"],
    )
    return {
        "dials": dials,
        "z_um": z_um,
        "flags": flags,
        "kinds": kinds,
        "poses": poses,
        "block": block,
        "margin_px": margin_px,
        "canvas_px": canvas_px,
    }


def _dial_sections(task: dict[str, Any]) -> dict[str, Any]:
    """Sections of one case under the study's dials (:func:`plan_dial_case`), rendered."""
    seed, k, size = task["seed"], task["index"], task["image_size"]
    mpp = task["field_um"] / size
    plan = plan_dial_case(task)
    block = plan["block"]
    images, masks, damage = [], [], []
    for i, z in enumerate(plan["z_um"]):
        render_rng = dial_stream(seed, k, "render", i)
        section = render_section(block, float(z), plan["canvas_px"], render_rng)
        amounts, mask = move_section(section.amounts, section.mask, plan["poses"][i], size, mpp)
        if plan["flags"][i]:
            deg = Degradation(kinds=list(plan["kinds"][i]))
            rgb = apply_degradation(
                deg, amounts, mask, dial_stream(seed, k, "damage_apply", i), mpp, block.stains
            )
        else:
            deg = Degradation(kinds=[])
            rgb = concentrations_to_rgb(amounts, block.stains)
        rgb = rgb + render_rng.normal(0.0, 1.5 / 255.0, size=rgb.shape).astype(np.float32)  # sensor noise
        images.append(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
        masks.append(_truth(mask, deg, task["honest_masks"]))
        damage.append(deg)
    # KPIs file names hold whole pixels: rounded, kept strictly increasing so they still give the
    # cutting order; the datalists hold the exact (sub-pixel) depths.
    z_px: list[int] = []
    for z in plan["z_um"]:
        z_px.append(max(int(np.rint(z / mpp)), z_px[-1] + 1 if z_px else 0))
    return {
        "z_um": plan["z_um"],
        "z_px": z_px,
        "flags": [int(f) for f in plan["flags"]],
        "images": images,
        "masks": masks,
        "damage": damage,
        "block": block,
        "extra": {
            "dials": plan["dials"].as_dict(),
            "poses": [
                {
                    "shift_x_um": round(float(p[0]), 4),
                    "shift_y_um": round(float(p[1]), 4),
                    "rotation_deg": round(float(p[2]), 4),
                }
                for p in plan["poses"]
            ],
            "canvas_margin_um": plan["margin_px"] * mpp,
        },
    }


def _generate_case(task: dict[str, Any]) -> dict[str, Any]:
    """Render and write one case (runs in a worker process when ``workers > 1``)."""
    root, k, name, split = Path(task["root"]), task["index"], task["name"], task["split"]
    mpp = task["field_um"] / task["image_size"]
    sections = _legacy_sections(task) if task["dials"] is None else _dial_sections(task)
    z_um, block = sections["z_um"], sections["block"]
    n = len(z_um)

    case_dir = root / "Task1_patch_level" / _SPLIT_FOLDERS[split] / SYNTHETIC_CLASS / name
    prefix = f"{SYNTHETIC_CLASS}_{name}" if k % 2 == 0 else name
    image_files, mask_files, damage = [], [], []
    for i in range(n):
        image, mask, deg = sections["images"][i], sections["masks"][i], sections["damage"][i]
        stem = f"{prefix}_{i}_0_{sections['z_px'][i]}"
        image_file = case_dir / "img" / f"{stem}_img.jpg"
        mask_file = case_dir / "mask" / f"{stem}_mask.jpg"
        _save_jpeg(image_file, image, task["jpeg_quality"])
        _save_jpeg(mask_file, mask, 95)
        image_files.append(image_file)
        mask_files.append(mask_file)
        damage.append({"kinds": deg.kinds, **{k2: round(v, 4) for k2, v in deg.params.items()}})
    images, masks = sections["images"], sections["masks"]

    flags = sections["flags"]
    positions = [[float(z)] for z in z_um]
    item = {
        "positions_um": positions,
        "case": name,
        "class": SYNTHETIC_CLASS,
        "degraded": flags,
        "mpp_um": mpp,
        # the study's datasets only, so default datalists stay byte-identical
        **({} if task["dials"] is None else {"dials": Dials(**sections["extra"]["dials"]).label()}),
    }
    result: dict[str, Any] = {
        "split": split,
        "kpis": {"image": [str(p) for p in image_files], "label": [str(p) for p in mask_files], **item},
        "meta": {
            "case": name,
            "split": split,
            "z_um": [float(z) for z in z_um],
            "degraded": flags,
            "damage": damage,
            # Geometry for independent checks: a point p is inside a glomerulus when
            # |((p - centre) @ rotation) / semi_axes| < 1 (up to a +-3 % wobble of the capsule).
            "glomeruli": [
                {
                    "centre_um": np.round(g.centre, 4).tolist(),
                    "semi_axes_um": np.round(g.axes, 4).tolist(),
                    "rotation": np.round(g.rotation, 6).tolist(),
                }
                for g in block.glomeruli
            ],
            "tissue_edge": None if block.edge is None else [round(v, 4) for v in block.edge],
            "foreground_fraction": [round(float((m > 0).mean()), 5) for m in masks],
            **sections["extra"],
        },
    }
    if task["stacks"]:
        stack_dir = root / "stacks"
        volume, mask_volume = np.stack(images), np.stack(masks)
        tif_image = save_tiff_stack(stack_dir / f"{name}_image.ome.tif", volume, z_um, mpp)
        tif_mask = save_tiff_stack(stack_dir / f"{name}_mask.ome.tif", mask_volume, z_um, mpp)
        nii_image = save_nifti_stack(stack_dir / f"{name}_image.nii.gz", volume, z_um, mpp)
        nii_mask = save_nifti_stack(
            stack_dir / f"{name}_mask.nii.gz", (mask_volume > 0).astype(np.uint8), z_um, mpp
        )
        result["tiff"] = {"image": str(tif_image), "label": str(tif_mask), **item}
        result["nifti"] = {"image": str(nii_image), "label": str(nii_mask), **item}
    return result


def _sheet(path: Path, results: list[dict[str, Any]]) -> str:
    """Contact sheet of the validation case (else any case) showing glomeruli in most sections."""
    pool = [r for r in results if r["split"] == "validation"] or results
    result = max(pool, key=lambda r: sum(f > 0 for f in r["meta"]["foreground_fraction"]))
    images = [read_slice(p)[0] for p in result["kpis"]["image"]]
    masks = [to_binary_mask(read_slice(p)[0], path=p) for p in result["kpis"]["label"]]
    meta = result["meta"]
    captions = [
        f"z={z:g} um" + (f" {'+'.join(d['kinds'])}" if d["kinds"] else "")
        for z, d in zip(meta["z_um"], meta["damage"])
    ]
    save_contact_sheet(
        path,
        images,
        masks,
        captions,
        highlight=meta["degraded"],
        title=f"synthetic case {meta['case']} ({meta['split']}): green = glomerulus mask, red = damaged section",
    )
    return str(meta["case"])


def _parse_sections(sections: int | Sequence[int]) -> tuple[int, int]:
    lo, hi = (sections, sections) if isinstance(sections, (int, np.integer)) else tuple(sections)
    if not 1 <= int(lo) <= int(hi):
        raise ValueError(f"sections must be a positive int or (min, max), got {sections!r}")
    return int(lo), int(hi)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SequenceDataError(f"{out}: exists and is not a folder; expected a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SequenceDataError(
                f"{out}: folder is not empty; expected a new or empty folder (or overwrite=True to replace a "
                "previous synthetic dataset)"
            )
        if not (out / SYNTHETIC_META).is_file():
            raise SequenceDataError(
                f"{out}: not a synthetic dataset (no {SYNTHETIC_META}); refusing to replace it"
            )


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    cases: int = 10,
    seed: int = 0,
    image_size: int = 256,
    sections: int | Sequence[int] = 10,
    field_um: float = 512.0,
    spacing_um: tuple[float, float] = (3.0, 7.0),
    degraded_fraction: float = 0.3,
    difficulty: str = "realistic",
    stain: str = "pas",
    jpeg_quality: int = 90,
    stacks: bool = True,
    contact_sheet: bool = True,
    workers: int = 1,
    overwrite: bool = False,
    dials: Dials | None = None,
    honest_masks: bool = False,
    glomeruli_per_mm3: float = GLOMERULI_PER_MM3,
) -> Path:
    """Generate a synthetic serial-section dataset (see the module docstring for the layout).

    Args:
        out_dir: new or empty folder (or a previous synthetic dataset with ``overwrite=True``).
        cases: number of cases (blocks); split about 60/20/20 into training/validation/test.
        seed: random seed.
        image_size: section side in pixels; the field stays ``field_um`` wide, so larger sizes show
            finer detail (mpp = field_um / image_size).
        sections: sections per case, or ``(min, max)``.
        field_um: side of the field of view in um.
        spacing_um: range of the section spacing in um.
        degraded_fraction: fraction of damaged sections per case (at most 0.5; never two neighbours).
        difficulty: ``"realistic"`` (every hard negative) or ``"easy"`` (no inflammatory infiltrates or
            arterioles, glomeruli centred in the stack; the bundle's CPU demo set), see
            :func:`pathseqsam.synthetic.tissue.make_tissue_block`. Damage is the same in both.
        stain: stain preset (:data:`pathseqsam.synthetic.tissue.STAIN_PRESETS`): ``"pas"`` (the
            default; the demo's look) or ``"he"`` (H&E). The same seed gives the same tissue,
            masks and damage in every stain; only the colours differ.
        jpeg_quality: quality of the image JPEGs (masks use 95).
        stacks: also write the OME-TIFF and NIfTI stacks and their datalists.
        contact_sheet: write ``contact_sheet.png`` for the validation case (else any case) with glomeruli
            in the most sections.
        workers: processes rendering cases in parallel (results do not depend on it).
        overwrite: replace a previous synthetic dataset in ``out_dir``.
        dials: None (the default): the original generator, byte for byte (``spacing_um`` ranges,
            whole-pixel depths, never two damaged neighbours, registered sections). A
            :class:`~pathseqsam.synthetic.dials.Dials`: the study's generator (every quantity from its
            own stream; sub-pixel depths; ``spacing_um`` unused; ``degraded_fraction`` is the damage
            chain's stationary fraction; glomeruli at ``glomeruli_per_mm3``), the settings recorded
            in ``synthetic_meta.json`` (per case, ``mix`` resolved) and in every datalist item
            (``dials``).
        honest_masks: the truth is background where a tear or a loss left bare glass (folds
            unchanged). Off by default so the default dataset stays as it was; on in every study set.
        glomeruli_per_mm3: glomerulus density of the dials' blocks (unused when ``dials`` is None).

    Returns:
        Path of ``datalist.json``.

    Raises:
        SequenceDataError: ``out_dir`` is not empty and not a previous synthetic dataset.
        ValueError: invalid settings.
    """
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    section_range = _parse_sections(sections)
    if not 0 < spacing_um[0] <= spacing_um[1]:
        raise ValueError(f"spacing_um must be (min, max) with 0 < min <= max, got {spacing_um}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if stain not in STAIN_PRESETS:
        raise ValueError(f"stain must be one of {sorted(STAIN_PRESETS)}, got {stain!r}")
    if dials is not None and not isinstance(dials, Dials):
        raise ValueError(
            f"dials must be a pathseqsam.synthetic.dials.Dials or None, got {type(dials).__name__}"
        )
    if dials is None and not 0.0 <= degraded_fraction <= 0.5:
        raise ValueError(
            f"degraded_fraction must be in [0, 0.5] (no two damaged neighbours), got {degraded_fraction}"
        )
    if not glomeruli_per_mm3 >= 0:
        raise ValueError(f"glomeruli_per_mm3 must be >= 0, got {glomeruli_per_mm3}")
    out = Path(out_dir).absolute()
    _prepare_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    names = synthetic_case_names(cases)
    tasks = [
        {
            "root": str(staging),
            "index": k,
            "name": name,
            "split": split,
            "seed": int(seed),
            "image_size": int(image_size),
            "field_um": float(field_um),
            "sections": section_range,
            "spacing_um": (float(spacing_um[0]), float(spacing_um[1])),
            "degraded_fraction": float(degraded_fraction),
            "difficulty": difficulty,
            "stain": stain,
            "jpeg_quality": int(jpeg_quality),
            "stacks": bool(stacks),
            "dials": None if dials is None else dials.as_dict(),
            "honest_masks": bool(honest_masks),
            "glomeruli_per_mm3": float(glomeruli_per_mm3),
        }
        for k, (name, split) in enumerate(names)
    ]
    try:
        staging.mkdir()
        if workers > 1 and cases > 1:
            with ProcessPoolExecutor(max_workers=min(workers, cases)) as pool:
                results = list(pool.map(_generate_case, tasks))
        else:
            results = [_generate_case(task) for task in tasks]

        # Paths inside results point into the staging folder; the datalists store them relative to
        # it, so they stay valid once the folder is moved into place.
        def split_lists(layout: str) -> dict[str, list[dict[str, Any]]]:
            lists: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
            for r in results:
                lists[r["split"]].append(r[layout])
            return lists

        description = f"PathSeqSAM synthetic serial sections (seed {seed}, {cases} cases, {image_size} px)"
        sheet_case = _sheet(staging / "contact_sheet.png", results) if contact_sheet else None
        if stacks:
            write_datalist(
                split_lists("tiff"), staging / "datalist_tiff.json", extra={"description": description}
            )
            write_datalist(
                split_lists("nifti"), staging / "datalist_nifti.json", extra={"description": description}
            )
        meta = {
            "generator": "pathseqsam.synthetic",
            "seed": int(seed),
            "cases": int(cases),
            "image_size": int(image_size),
            "field_um": float(field_um),
            "mpp_um": float(field_um) / int(image_size),
            "sections": list(section_range),
            "spacing_um": list(spacing_um),
            "degraded_fraction": float(degraded_fraction),
            "difficulty": difficulty,
            # recorded only when not the default, so PAS datasets stay byte-identical to earlier ones
            **({} if stain == "pas" else {"stain": stain}),
            # likewise recorded only when used
            **(
                {}
                if dials is None
                else {"dials": dials.as_dict(), "glomeruli_per_mm3": float(glomeruli_per_mm3)}
            ),
            **({"honest_masks": True} if honest_masks else {}),
            "contact_sheet_case": sheet_case,
            "kpis_reader": {
                "offset_order": "xy",
                "mpp_um": {SYNTHETIC_CLASS: float(field_um) / int(image_size)},
            },
            "case_meta": [r["meta"] for r in results],
        }
        atomic_write_json(staging / SYNTHETIC_META, meta)
        write_datalist(split_lists("kpis"), staging / "datalist.json", extra={"description": description})

        old = None
        if out.is_dir():
            if any(out.iterdir()):  # a previous synthetic dataset (checked above): swap it out
                old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
                os.replace(out, old)
            else:
                out.rmdir()
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "datalist.json"


def _cli_dials(args: argparse.Namespace) -> Dials | None:
    given = {
        key: value
        for key, value in (
            ("spacing", args.spacing),
            ("burst", args.damage_burst),
            ("misregistration", args.misregistration),
        )
        if value is not None
    }
    if not given:
        return None
    if given.get("burst", "mix") != "mix":
        try:
            given["burst"] = float(given["burst"])
        except ValueError:
            raise ValueError(f"--damage-burst expects a number or mix, got {given['burst']!r}") from None
    return Dials(**given)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pathseqsam.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="new or empty output folder")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--sections", type=int, nargs="+", default=[10], help="N, or MIN MAX")
    parser.add_argument("--field-um", type=float, default=512.0)
    parser.add_argument("--spacing-um", type=float, nargs=2, default=(3.0, 7.0), metavar=("MIN", "MAX"))
    parser.add_argument("--degraded-fraction", type=float, default=0.3)
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="realistic")
    parser.add_argument("--stain", choices=sorted(STAIN_PRESETS), default="pas", help="stain preset")
    parser.add_argument("--no-stacks", action="store_true", help="skip the TIFF/NIfTI stacks")
    parser.add_argument("--no-contact-sheet", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous synthetic dataset")
    study = parser.add_argument_group(
        "the study's dials (any of them switches to the study's generator, the others at their nulls)"
    )
    study.add_argument("--spacing", choices=[*SPACING_SETTINGS, "mix"], default=None)
    study.add_argument("--damage-burst", default=None, help="mean damage burst length: 1 (null), 4, 8 or mix")
    study.add_argument("--misregistration", choices=[*MISREGISTRATION_SETTINGS, "mix"], default=None)
    study.add_argument("--glomeruli-per-mm3", type=float, default=GLOMERULI_PER_MM3)
    study.add_argument(
        "--honest-masks", action="store_true", help="truth is background where tissue is torn or lost"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = generate_synthetic_dataset(
            args.out,
            cases=args.cases,
            seed=args.seed,
            image_size=args.image_size,
            sections=args.sections[0] if len(args.sections) == 1 else tuple(args.sections[:2]),
            field_um=args.field_um,
            spacing_um=tuple(args.spacing_um),
            degraded_fraction=args.degraded_fraction,
            difficulty=args.difficulty,
            stain=args.stain,
            stacks=not args.no_stacks,
            contact_sheet=not args.no_contact_sheet,
            workers=args.workers,
            overwrite=args.overwrite,
            dials=_cli_dials(args),
            honest_masks=args.honest_masks,
            glomeruli_per_mm3=args.glomeruli_per_mm3,
        )
    except (SequenceDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    if not args.no_contact_sheet:
        print(f"contact sheet: {path.parent / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
