"""Stain presets: the default is the demo's PAS look unchanged, H&E changes colours and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathseqsam.data.image_io import read_slice
from pathseqsam.synthetic import SYNTHETIC_META, generate_synthetic_dataset, main
from pathseqsam.synthetic.tissue import (
    STAIN_PRESETS,
    Compartment,
    concentrations_to_rgb,
    make_tissue_block,
    render_section,
)


def _section(stain, **kwargs):
    rng = np.random.default_rng(11)
    block = make_tissue_block(
        rng, 256.0, (0.0, 8.0), "realistic", **({"stain": stain} if stain else {}), **kwargs
    )
    section = render_section(block, 4.0, 96, rng)
    return block, section, concentrations_to_rgb(section.amounts, block.stains)


def test_default_is_pas_and_he_changes_colour_only():
    _, _, rgb_default = _section(None)
    block_pas, sec_pas, rgb_pas = _section("pas")
    block_he, sec_he, rgb_he = _section("he")
    np.testing.assert_array_equal(rgb_default, rgb_pas)
    # the same random draws: same geometry, compartments and glomerulus mask
    np.testing.assert_array_equal(sec_pas.compartments, sec_he.compartments)
    np.testing.assert_array_equal(sec_pas.mask, sec_he.mask)
    assert not np.allclose(rgb_pas, rgb_he)
    # the per-case variation is drawn on top of each preset's base table
    ratio_pas = block_pas.amounts / np.where(
        STAIN_PRESETS["pas"].amounts > 0, STAIN_PRESETS["pas"].amounts, 1
    )
    ratio_he = block_he.amounts / np.where(STAIN_PRESETS["he"].amounts > 0, STAIN_PRESETS["he"].amounts, 1)
    np.testing.assert_allclose(ratio_pas, ratio_he)


def test_he_looks_like_he():
    """Independent check of the look: H&E tubule cells are pinker than PAS ones relative to their basement
    membrane, which PAS stains magenta and eosin only weakly."""
    _, sec, rgb_pas = _section("pas")
    _, _, rgb_he = _section("he")
    comp = sec.compartments

    def od(rgb, c):
        return -np.log(np.clip(rgb[comp == c], 1e-3, 1)).mean(0)

    epi, bm = Compartment.EPITHELIUM, Compartment.TUBULE_BM
    assert od(rgb_he, epi)[1] / od(rgb_he, bm)[1] > od(rgb_pas, epi)[1] / od(rgb_pas, bm)[1]
    # nuclei-free tubule cells in H&E are pink: green absorbs most, red least
    g, r = od(rgb_he, epi)[1], od(rgb_he, epi)[0]
    assert g > 2 * r


def test_unknown_stain_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"stain must be one of \['he', 'pas'\], got 'gram'"):
        make_tissue_block(np.random.default_rng(0), 128.0, (0.0, 4.0), stain="gram")
    with pytest.raises(ValueError, match="stain must be one of"):
        generate_synthetic_dataset(tmp_path / "x", cases=1, stain="gram")
    assert not (tmp_path / "x").exists()


def test_dataset_in_he_has_the_same_masks(tmp_path):
    kwargs = dict(cases=1, seed=5, image_size=64, sections=3, stacks=False, contact_sheet=False)
    pas = generate_synthetic_dataset(tmp_path / "pas", **kwargs)
    assert (
        main(
            [
                "--out",
                str(tmp_path / "he"),
                "--cases",
                "1",
                "--seed",
                "5",
                "--image-size",
                "64",
                "--sections",
                "3",
                "--no-stacks",
                "--no-contact-sheet",
                "--stain",
                "he",
            ]
        )
        == 0
    )
    he = tmp_path / "he" / "datalist.json"
    items_pas = json.loads(pas.read_text())["training"]
    items_he = json.loads(he.read_text())["training"]
    assert len(items_pas) == len(items_he) == 1
    for a, b in zip(items_pas[0]["label"], items_he[0]["label"]):
        np.testing.assert_array_equal(read_slice(pas.parent / a)[0], read_slice(he.parent / b)[0])
    images_differ = [
        not np.array_equal(read_slice(pas.parent / a)[0], read_slice(he.parent / b)[0])
        for a, b in zip(items_pas[0]["image"], items_he[0]["image"])
    ]
    assert all(images_differ)
    assert "stain" not in json.loads((pas.parent / SYNTHETIC_META).read_text())  # default: meta unchanged
    assert json.loads((he.parent / SYNTHETIC_META).read_text())["stain"] == "he"
