"""The study's dials: each is recorded, each changes only what it controls, and each has the
properties the study relies on (gap range and density, damaged fraction and burst length, pose
statistics, masks that move with the image, honest masks)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from pathseqsam.data.datalist import load_datalist
from pathseqsam.synthetic import SYNTHETIC_META, generate_synthetic_dataset, main
from pathseqsam.synthetic.dials import (
    CONSTANT_GAP_UM,
    GLOMERULI_PER_MM3,
    MAX_GAP_UM,
    ROTATION_SIGMA_DEG,
    SHIFT_SIGMA_UM,
    Dials,
    canvas_margin_um,
    damage_flags,
    dial_stream,
    section_gaps,
    section_poses,
)
from pathseqsam.synthetic.tissue import _place_glomeruli

SETTINGS = {
    "nulls": Dials(),
    "burst": Dials(burst=8),
    "pose": Dials(misregistration="pose"),
    "spacing": Dials(spacing="variable"),
}
SIZE, FIELD = 48, 256.0


@pytest.fixture(scope="module")
def dial_sets(tmp_path_factory) -> dict[str, tuple[dict, list]]:
    """The same 3 cases (seed 11, 8 sections, 48 px) under each setting: (meta, datalist items)."""
    out = {}
    for name, dials in SETTINGS.items():
        root = tmp_path_factory.mktemp("dials") / name
        generate_synthetic_dataset(
            root, cases=3, seed=11, image_size=SIZE, sections=8, field_um=FIELD, dials=dials,
            stacks=False, contact_sheet=False,
        )  # fmt: skip
        items = [
            it
            for split in ("training", "validation", "test")
            for it in load_datalist(root / "datalist.json", split)
        ]
        out[name] = (json.loads((root / SYNTHETIC_META).read_text()), items)
    return out


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_settings_are_recorded_in_meta_and_datalist(dial_sets):
    for name, dials in SETTINGS.items():
        meta, items = dial_sets[name]
        assert meta["dials"] == dials.as_dict() and meta["glomeruli_per_mm3"] == GLOMERULI_PER_MM3
        for case, item in zip(meta["case_meta"], items):
            assert case["dials"] == dials.as_dict()
            assert item["dials"] == dials.label()
            assert len(case["poses"]) == len(case["z_um"]) == len(item["image"])


def test_each_dial_changes_only_what_it_controls(dial_sets):
    base, base_items = dial_sets["nulls"]

    def field(name, key):
        return [c[key] for c in dial_sets[name][0]["case_meta"]]

    def kinds(name):  # damage kinds of every section damaged under both settings
        return [[d["kinds"] for d in c["damage"]] for c in dial_sets[name][0]["case_meta"]]

    # damage bursts: depths, tissue and poses as they were; flags differ
    assert field("burst", "z_um") == field("nulls", "z_um")
    assert field("burst", "glomeruli") == field("nulls", "glomeruli")
    assert field("burst", "poses") == field("nulls", "poses")
    assert field("burst", "degraded") != field("nulls", "degraded")
    # a section clean under both settings is the same image, pixel for pixel
    same = 0
    for c0, c1, i0, i1 in zip(
        base["case_meta"], dial_sets["burst"][0]["case_meta"], base_items, dial_sets["burst"][1]
    ):
        for k, (d0, d1) in enumerate(zip(c0["degraded"], c1["degraded"])):
            if not d0 and not d1:
                np.testing.assert_array_equal(_pixels(i0["image"][k]), _pixels(i1["image"][k]))
                same += 1
            if d0 and d1:
                assert c0["damage"][k]["kinds"] == c1["damage"][k]["kinds"]
    assert same >= 5
    # misregistration: depths, tissue and damage as they were; poses and images differ
    for key in ("z_um", "glomeruli", "degraded"):
        assert field("pose", key) == field("nulls", key)
    assert kinds("pose") == kinds("nulls")
    assert field("pose", "poses") != field("nulls", "poses")
    assert not np.array_equal(
        _pixels(base_items[0]["image"][0]), _pixels(dial_sets["pose"][1][0]["image"][0])
    )
    # spacing: damage and poses as they were; depths differ
    assert field("spacing", "degraded") == field("nulls", "degraded")
    assert kinds("spacing") == kinds("nulls")
    assert field("spacing", "poses") == field("nulls", "poses")
    assert field("spacing", "z_um") != field("nulls", "z_um")


def test_null_settings(dial_sets):
    meta, items = dial_sets["nulls"]
    for case, item in zip(meta["case_meta"], items):
        gaps = np.diff(case["z_um"])
        np.testing.assert_allclose(gaps, CONSTANT_GAP_UM)
        assert [p[0] for p in item["positions_um"]] == case["z_um"]
        assert all(p == {"shift_x_um": 0.0, "shift_y_um": 0.0, "rotation_deg": 0.0} for p in case["poses"])
        flags = case["degraded"]
        assert not any(a and b for a, b in itertools.pairwise(flags))  # burst length 1: never two neighbours


def test_spacing_gaps_span_3_to_50_um_sub_pixel_with_lost_runs():
    gaps = np.concatenate([section_gaps(dial_stream(0, k, "spacing"), 24, "variable") for k in range(400)])
    assert gaps.min() >= 3.2 - 1e-9 and gaps.max() <= MAX_GAP_UM
    assert (gaps > 20).mean() > 0.04 and (gaps > 40).any()  # runs of lost sections
    assert (gaps < 5).mean() > 0.6  # most gaps are one section
    assert abs(gaps.mean() - CONSTANT_GAP_UM) < 0.1 * CONSTANT_GAP_UM  # the null keeps the mean depth
    mpp = 512.0 / 128
    assert np.mean(np.abs(gaps / mpp - np.round(gaps / mpp)) > 1e-3) > 0.9  # not whole pixels


def _cut_fraction(spacing: str, pose: str, cases: int = 300) -> float:
    """Share of sections whose field cuts a glomerulus, from the geometry alone (not the renderer):
    glomeruli placed as the study's blocks place them, field points moved by the section's pose."""
    mpp, size = 4.0, 64  # the study's 256 um field
    field_um = size * mpp
    margin_px = math.ceil(canvas_margin_um(field_um) / mpp) + 2
    canvas = (size + 2 * margin_px) * mpp
    u = (np.arange(0, size, 4) + 0.5) * mpp - field_um / 2  # field points around its centre, um
    gx, gy = np.meshgrid(u, u)
    hits = total = 0
    for k in range(cases):
        z = np.concatenate([[0.0], np.cumsum(section_gaps(dial_stream(1, k, "spacing"), 24, spacing))])
        glomeruli = _place_glomeruli(
            dial_stream(1, k, "tissue"), canvas, (0.0, z[-1]), per_mm3=GLOMERULI_PER_MM3
        )
        poses = section_poses(dial_stream(1, k, "pose"), 24, pose)
        for zi, (sx, sy, rot) in zip(z, poses):
            c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
            px = canvas / 2 + sx + c * gx - s * gy
            py = canvas / 2 + sy + s * gx + c * gy
            cut = False
            for g in glomeruli:
                p = np.stack([px - g.centre[0], py - g.centre[1], np.full_like(px, zi - g.centre[2])], -1)
                q = (p @ g.rotation) / g.axes
                cut |= bool(((q**2).sum(-1) < 1).any())
            hits += cut
            total += 1
    return hits / total


def test_glomerulus_density_keeps_the_share_of_sections_with_one():
    shares = {(s, p): _cut_fraction(s, p) for s in ("constant", "variable") for p in ("registered", "pose")}
    ref = shares[("constant", "registered")]
    assert 0.4 < ref < 0.8, shares
    for share in shares.values():
        assert abs(share - ref) <= 0.05, shares


@pytest.mark.parametrize("burst", [1.0, 4.0, 8.0])
def test_damage_bursts_keep_the_fraction_and_have_the_mean_length(burst):
    stacks = np.stack([damage_flags(dial_stream(2, k, "damage"), 24, burst) for k in range(3000)])
    assert abs(stacks.mean() - 0.3) < 0.01  # damaged fraction 0.3 at every setting
    assert abs(stacks[:, 0].mean() - 0.3) < 0.03  # bursts start at slice 0 as often as anywhere
    long = damage_flags(dial_stream(3, 0, "damage"), 200_000, burst)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], long.astype(int), [0]])))
    runs = edges[1::2] - edges[::2]
    assert abs(runs.mean() - burst) < 0.05 * burst
    if burst == 1.0:
        assert runs.max() == 1


def test_poses_are_independent_per_section_not_a_walk():
    poses = np.stack([section_poses(dial_stream(4, k, "pose"), 24, "pose") for k in range(500)])
    sd = poses.reshape(-1, 3).std(0)
    assert abs(sd[0] - SHIFT_SIGMA_UM) < 2 and abs(sd[1] - SHIFT_SIGMA_UM) < 2
    assert abs(sd[2] - ROTATION_SIGMA_DEG) < 0.7
    # a random walk's spread grows along the stack and its steps correlate with its position
    assert abs(poses[:, -1, 0].std() - poses[:, 0, 0].std()) < 4
    lag1 = np.corrcoef(poses[:, :-1, 0].ravel(), poses[:, 1:, 0].ravel())[0, 1]
    assert abs(lag1) < 0.05
    assert np.abs(poses[..., :2]).max() <= 3 * SHIFT_SIGMA_UM  # within the rendered margin


def test_the_mask_moves_with_the_image(dial_sets):
    """Misregistered masks against the recorded geometry moved by the recorded pose (independent)."""
    meta, items = dial_sets["pose"]
    mpp = meta["mpp_um"]
    u = (np.arange(SIZE) + 0.5) * mpp - FIELD / 2
    gx, gy = np.meshgrid(u, u)
    judged = moved = 0
    for case, item in zip(meta["case_meta"], items):
        centre = FIELD / 2 + case["canvas_margin_um"]
        for k, (z, pose) in enumerate(zip(case["z_um"], case["poses"])):
            if case["degraded"][k]:
                continue
            mask = _pixels(item["label"][k]) > 127
            c, s = math.cos(math.radians(pose["rotation_deg"])), math.sin(math.radians(pose["rotation_deg"]))
            px = centre + pose["shift_x_um"] + c * gx - s * gy
            py = centre + pose["shift_y_um"] + s * gx + c * gy
            rho = np.full(gx.shape, np.inf)
            for g in case["glomeruli"]:
                p = np.stack(
                    [px - g["centre_um"][0], py - g["centre_um"][1], np.full_like(px, z - g["centre_um"][2])],
                    -1,
                )
                q = (p @ np.array(g["rotation"])) / np.array(g["semi_axes_um"])
                rho = np.minimum(rho, np.sqrt((q**2).sum(-1)))
            inside, outside = rho < 0.85, rho > 1.15
            if case["tissue_edge"] is not None:
                nx, ny, offset = case["tissue_edge"]
                proj = px * nx + py * ny
                inside &= proj < offset - 40
                outside |= proj > offset + 40
            assert mask[inside].all() and not mask[outside].any()
            judged += int(inside.sum())
            moved += abs(pose["shift_x_um"]) > 10
    assert judged > 50 and moved > 3


def test_honest_masks_clear_torn_and_lost_tissue_only(tmp_path):
    kwargs = dict(
        cases=3, seed=2, image_size=64, sections=8, degraded_fraction=0.5, stacks=False, contact_sheet=False
    )
    generate_synthetic_dataset(tmp_path / "plain", **kwargs)
    generate_synthetic_dataset(tmp_path / "honest", honest_masks=True, **kwargs)
    meta = json.loads((tmp_path / "honest" / SYNTHETIC_META).read_text())
    assert meta["honest_masks"] is True and "honest_masks" not in json.loads(
        (tmp_path / "plain" / SYNTHETIC_META).read_text()
    )
    plain = [
        it
        for s in ("training", "validation", "test")
        for it in load_datalist(tmp_path / "plain" / "datalist.json", s)
    ]
    honest = [
        it
        for s in ("training", "validation", "test")
        for it in load_datalist(tmp_path / "honest" / "datalist.json", s)
    ]
    cleared = 0
    for case, a, b in zip(meta["case_meta"], plain, honest):
        for k, damage in enumerate(case["damage"]):
            np.testing.assert_array_equal(_pixels(a["image"][k]), _pixels(b["image"][k]))  # images unchanged
            ma, mb = _pixels(a["label"][k]) > 127, _pixels(b["label"][k]) > 127
            assert not (mb & ~ma).any()  # honest truth is never larger
            if not {"tear", "loss"} & set(damage["kinds"]):
                np.testing.assert_array_equal(ma, mb)  # clean, faded, blurred and folded: unchanged
            else:
                image = _pixels(b["image"][k]).astype(float).mean(-1)
                gone = ma & ~mb
                cleared += int(gone.sum())
                if gone.sum() > 20:  # where the truth was cleared the slide is bare glass (bright)
                    assert np.median(image[gone]) > 200
    assert cleared > 0


def test_cli_sets_the_dials(tmp_path, capsys):
    out = tmp_path / "cli"
    status = main([
        "--out", str(out), "--cases", "1", "--image-size", "32", "--sections", "4", "--field-um", "128",
        "--spacing", "variable", "--damage-burst", "4", "--honest-masks", "--no-stacks", "--no-contact-sheet",
    ])  # fmt: skip
    assert status == 0
    meta = json.loads((out / SYNTHETIC_META).read_text())
    assert meta["dials"] == {"spacing": "variable", "burst": 4.0, "misregistration": "registered"}
    assert meta["honest_masks"] is True
    assert main(["--out", str(tmp_path / "bad"), "--damage-burst", "often"]) == 2
    assert "--damage-burst expects a number or mix, got 'often'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dial spacing must be one of"):
        Dials(spacing="random")
    with pytest.raises(ValueError, match="dial burst must be a mean burst length >= 1"):
        Dials(burst=0.5)


def test_mix_draws_each_case_its_own_settings():
    mixed = Dials(spacing="mix", burst="mix", misregistration="mix")
    resolved = [mixed.resolve(9, k) for k in range(60)]
    assert {r.spacing for r in resolved} == {"constant", "variable"}
    assert {r.burst for r in resolved} == {1.0, 4.0, 8.0}
    assert {r.misregistration for r in resolved} == {"registered", "pose"}
    # mixing one dial does not change what another draws
    only = [Dials(spacing="mix").resolve(9, k) for k in range(60)]
    assert [r.spacing for r in only] == [r.spacing for r in resolved]
    assert resolved[0] == mixed.resolve(9, 0)  # deterministic
