"""Instances from the compartment map, their tracks through a stack, and the pretraining samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pathseqsam.pretrain.objects import STRUCTURES, find_instances, structure_masks, track_instance
from pathseqsam.pretrain.samples import make_video_sample
from pathseqsam.synthetic.seeds import PRETRAIN_SEEDS
from pathseqsam.synthetic.tissue import Compartment as C


def _two_touching_tubules_and_a_glomerulus():
    comp = np.full((40, 60), C.INTERSTITIUM, dtype=np.uint8)
    comp[5:20, 5:20] = C.TUBULE_BM
    comp[6:19, 6:19] = C.EPITHELIUM
    comp[10:15, 10:15] = C.TUBULE_LUMEN
    comp[5:20, 19:34] = C.TUBULE_BM  # shares the wall at column 19
    comp[6:19, 20:33] = C.EPITHELIUM
    comp[25:38, 40:55] = C.CAPSULE
    comp[26:37, 41:54] = C.BOWMAN_SPACE
    comp[28:35, 43:52] = C.TUFT
    comp[30:32, 45:47] = C.CAPILLARY_LUMEN
    return comp


def test_instances_of_every_structure():
    comp = _two_touching_tubules_and_a_glomerulus()
    found = find_instances(comp, min_area=4)
    by = {}
    for inst in found:
        by.setdefault(inst.structure, []).append(inst.mask)
    assert sorted(by) == ["glomerular tuft", "glomerulus", "tubule", "tubule lumen"]
    # the shared basement membrane separates the two tubules; each gets its own wall back
    assert len(by["tubule"]) == 2
    first, second = sorted(by["tubule"], key=lambda m: np.argwhere(m)[:, 1].min())
    # (grown by one pixel in 4-connectivity: the wall's corners stay out)
    assert first[6:19, 5:20].all() and first[5:20, 6:19].all() and not first[:, 21:].any()
    assert first.sum() == 13 * 13 + 4 * 13
    assert second[6:19, 19:34].all() and second[5, 25] and not second[:, :19].any()
    assert by["glomerulus"][0].sum() == 13 * 15
    assert by["glomerular tuft"][0].sum() == 7 * 9
    assert by["tubule lumen"][0].sum() == 25
    # min_area drops the small ones
    assert {i.structure for i in find_instances(comp, min_area=70)} == {"glomerulus", "tubule"}


def test_every_compartment_but_glass_interstitium_and_walls_belongs_to_a_structure():
    covered = {c for cs in STRUCTURES.values() for c in cs}
    assert set(C) - covered == {C.GLASS, C.INTERSTITIUM, C.TUBULE_BM}


def test_track_follows_overlap_and_stops_when_lost():
    comp0 = _two_touching_tubules_and_a_glomerulus()
    comp1 = np.roll(comp0, 2, axis=1)  # everything moved 2 px
    comp2 = np.full_like(comp0, C.INTERSTITIUM)  # the structures left the stack
    comp3 = comp0.copy()  # back again, but the track is lost
    glom = next(i for i in find_instances(comp0, min_area=4) if i.structure == "glomerulus")
    track = track_instance(glom, [comp0, comp1, comp2, comp3])
    assert track.shape == (4, 40, 60)
    np.testing.assert_array_equal(track[1], np.roll(glom.mask, 2, axis=1))
    assert not track[2].any() and not track[3].any()


def test_video_sample_is_deterministic_and_consistent():
    a = make_video_sample(PRETRAIN_SEEDS[0], (3, 1), image_size=64, frames=3, objects=2)
    b = make_video_sample(PRETRAIN_SEEDS[0], (3, 1), image_size=64, frames=3, objects=2)
    c = make_video_sample(PRETRAIN_SEEDS[0], (3, 2), image_size=64, frames=3, objects=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (3, 64, 64, 3) and a.images.dtype == np.uint8
    assert a.masks.shape == (2, 3, 64, 64) and a.masks.dtype == bool
    assert all(s in STRUCTURES for s in a.structures)
    assert a.masks[:, 0].reshape(2, -1).any(1).all()  # the prompted section always shows the object
    assert 0.5 <= a.mpp_um <= 2.0
    for k in range(2):  # each mask is one connected piece
        assert ndimage.label(a.masks[k, 0])[1] == 1


def test_single_image_samples():
    s = make_video_sample(PRETRAIN_SEEDS[1], (0, 0), image_size=64, frames=1, objects=3)
    assert s.images.shape == (1, 64, 64, 3) and s.masks.shape == (3, 1, 64, 64)


def test_sample_without_structures_says_so(monkeypatch):
    import pathseqsam.pretrain.samples as samples

    monkeypatch.setattr(samples, "find_instances", lambda comp, min_area: [])
    with pytest.raises(RuntimeError, match=r"no structure found in 2 blocks \(seed 1000000, key \(0, 0\)\)"):
        samples.make_video_sample(PRETRAIN_SEEDS[0], (0, 0), image_size=64, frames=1, max_tries=2)


def test_structure_masks_are_the_union_of_every_instance_per_section():
    comp0 = _two_touching_tubules_and_a_glomerulus()
    comp1 = np.full_like(comp0, C.INTERSTITIUM)
    union = structure_masks("tubule", [comp0, comp1], min_area=4)
    tubules = [i.mask for i in find_instances(comp0, min_area=4) if i.structure == "tubule"]
    assert union.shape == (2, 40, 60) and len(tubules) == 2
    np.testing.assert_array_equal(union[0], tubules[0] | tubules[1])
    assert not union[1].any()


def test_union_objects_cover_every_instance_of_their_structure():
    s = make_video_sample(PRETRAIN_SEEDS[0], (5, 0), image_size=96, frames=3, objects=6, union_fraction=1.0)
    assert all(name.startswith("all ") for name in s.structures)
    assert s.masks[:, 0].reshape(6, -1).any(1).all()  # the prompted section always shows the object
    # several instances make one object (the tubules of a field are never a single one)
    pieces = {name: ndimage.label(s.masks[k, 0])[1] for k, name in enumerate(s.structures)}
    assert max(pieces.values()) > 1, pieces
    # 0 keeps the single-instance objects of the runs made before the setting existed
    plain = make_video_sample(PRETRAIN_SEEDS[0], (5, 0), image_size=96, frames=3, objects=6)
    assert all(name in STRUCTURES for name in plain.structures)
    for k in range(6):
        assert ndimage.label(plain.masks[k, 0])[1] == 1


def test_instance_sampling_draws_distinct_instances_in_proportion_to_their_number():
    s = make_video_sample(
        PRETRAIN_SEEDS[0], (5, 0), image_size=96, frames=3, objects=6, instance_fraction=1.0
    )
    first = s.masks[:, 0].reshape(6, -1)
    assert first.any(1).all()
    # without replacement while unchosen instances remain: no two objects share their first mask
    assert len({m.tobytes() for m in first}) == 6
    assert all(ndimage.label(s.masks[k, 0])[1] == 1 for k in range(6))
    # uniform over instances: the many tubules of a field outnumber the glomerulus family, which
    # structure-first sampling over-draws (glomerulus and tuft are two structures of one glomerulus)
    counts = {"instance": {}, "structure": {}}
    for key in range(12):
        for mode, fraction in (("instance", 1.0), ("structure", 0.0)):
            names = make_video_sample(
                PRETRAIN_SEEDS[0], (key, 0), image_size=128, frames=1, objects=8, instance_fraction=fraction
            ).structures
            for name in names:
                counts[mode][name] = counts[mode].get(name, 0) + 1
    glom = {m: c.get("glomerulus", 0) + c.get("glomerular tuft", 0) for m, c in counts.items()}
    assert counts["instance"]["tubule"] > 1.5 * counts["structure"]["tubule"], counts
    assert glom["instance"] < glom["structure"], counts
    # 0 draws nothing extra: the samples of runs made before the setting existed are unchanged
    a = make_video_sample(PRETRAIN_SEEDS[0], (5, 0), image_size=96, frames=3, objects=6)
    b = make_video_sample(
        PRETRAIN_SEEDS[0], (5, 0), image_size=96, frames=3, objects=6, instance_fraction=0.0
    )
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.images, b.images)
