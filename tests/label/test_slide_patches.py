"""Slide labels (ASAP XML, level-0 pixels) -> training patches at the working resolution."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.label.slides.label_patches import read_asap_annotations, slide_label_patches
from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide
from pathseqsam.wsi.tiles import tile_starts

MPP = 0.5  # level 0; level 2 (4x) is the model's 2 um/px


def asap_xml(polygons: list[tuple[str, list[tuple[float, float]]]]) -> str:
    """An ASAP XML document as MONAI Label's writers and QuPath's plugin write it."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "  <Annotations>"]
    for group, points in polygons:
        lines.append(f'    <Annotation Name="{group}" Type="Polygon" PartOfGroup="{group}" Color="#00c800">')
        lines.append("      <Coordinates>")
        lines += [f'        <Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(points)]
        lines += ["      </Coordinates>", "    </Annotation>"]
    lines += ["  </Annotations>", "</ASAP_Annotations>"]
    return "\n".join(lines)


def circle(cx: float, cy: float, r: float, n: int = 96) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)
    ]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slide_patches")
    scene = make_slide_scene(1536, 1536, MPP, n_sections=1, n_glomeruli=8, seed=3)
    return write_synthetic_slide(tmp / "slideS.tiff", scene), scene


def test_region_label_becomes_patches_at_the_working_resolution(slide, tmp_path):
    path, scene = slide
    region = (400, 300, 1200, 900)  # level-0 x0, y0, x1, y1: 800 x 600 px = 200 x 150 at 2 um/px
    inside = [g for g in scene.glomeruli if region[0] + g[2] < g[0] < region[2] - g[2]]
    inside = [g for g in inside if region[1] + g[2] < g[1] < region[3] - g[2]]
    assert inside, "the scene must have a glomerulus in the region"
    polygons = [("Region", [(400, 300), (1200, 300), (1200, 900), (400, 900)])]
    polygons += [("glomerulus", circle(cx, cy, r)) for cx, cy, r in inside]
    # another class, away from every glomerulus: not drawn
    tumour = next(
        (x, y)
        for y in range(400, 800, 20)
        for x in range(500, 1100, 20)
        if all(math.hypot(x - g[0], y - g[1]) > g[2] + 80 for g in scene.glomeruli)
    )
    polygons += [("Tumor", circle(*tumour, 50))]
    label = tmp_path / "slideS.xml"
    label.write_text(asap_xml(polygons))

    items = slide_label_patches(path, label, tmp_path / "patches", model_mpp_um=2.0, patch_px=64)
    assert len(items) == len(tile_starts(150, 64, 64)) * len(tile_starts(200, 64, 64)) == 12
    assert all(item["mpp_um"] == 2.0 for item in items)

    # stitch the patches back: the image is level 2 (exactly 2 um/px) of the region, read with tifffile
    level2 = tifffile.imread(path, key=2)[300 // 4 : 900 // 4, 400 // 4 : 1200 // 4]
    image = np.zeros((150, 200, 3), np.uint8)
    mask = np.zeros((150, 200), np.uint8)
    for item in items:
        name = Path(item["image"][0]).stem
        x0, y0 = (int(v) for v in name.split("_")[-2:])
        c, r = (x0 - 400) // 4, (y0 - 300) // 4
        image[r : r + 64, c : c + 64] = np.asarray(Image.open(item["image"][0]))
        mask[r : r + 64, c : c + 64] = np.asarray(Image.open(item["label"][0]))
    assert (
        np.abs(image.astype(int) - level2.astype(int)).mean() < 1.0
    )  # same JPEG tiles (OpenSlide vs tifffile)
    # the mask is the glomeruli's discs drawn at the working pixels' centres (level-0 coordinates)
    ys, xs = np.mgrid[0:150, 0:200]
    px, py = 400 + (xs + 0.5) * 4, 300 + (ys + 0.5) * 4
    truth = np.zeros((150, 200), bool)
    for cx, cy, r in inside:
        truth |= np.hypot(px - cx, py - cy) < r
    assert set(np.unique(mask).tolist()) <= {0, 1}
    got = mask > 0
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.97
    assert not got[np.hypot(px - tumour[0], py - tumour[1]) < 50].any()  # the 'Tumor' polygon is not drawn


def test_without_a_region_the_polygons_bounding_rectangle_is_the_region(slide, tmp_path):
    path, _ = slide
    label = tmp_path / "slideS.xml"
    label.write_text(asap_xml([("None", circle(800, 800, 40))]))  # ASAP's default group
    items = slide_label_patches(path, label, tmp_path / "p", model_mpp_um=2.0, patch_px=64)
    assert len(items) == 1  # 81 x 81 level-0 px -> 20 x 20 at 2 um/px: one patch smaller than 64
    patch = np.asarray(Image.open(items[0]["label"][0]))
    assert patch.shape == (20, 20) and patch.mean() > 0.6


def test_bad_labels_are_refused_naming_the_file(slide, tmp_path):
    path, _ = slide
    bad = tmp_path / "bad.xml"
    bad.write_text("<ASAP_Annotations><Annotations><Annotation")
    with pytest.raises(SequenceDataError, match=r"bad.xml: not an ASAP XML label"):
        read_asap_annotations(bad)
    bad.write_text(asap_xml([("Tumor", circle(100, 100, 20))]))
    with pytest.raises(SequenceDataError, match=r"bad.xml: no polygon of group 'glomerulus'"):
        read_asap_annotations(bad)
    bad.write_text(asap_xml([("glomerulus", [(1, 2), (3, "x"), (5, 6)])]))
    with pytest.raises(SequenceDataError, match=r"bad.xml: Coordinate X='3' Y='x': expected numbers"):
        read_asap_annotations(bad)
    bad.write_text(asap_xml([("glomerulus", circle(5000, 5000, 30))]))
    with pytest.raises(
        SequenceDataError, match=r"does not lie inside the slide slideS.tiff \(1536x1536 px\)"
    ):
        slide_label_patches(path, bad, tmp_path / "q", model_mpp_um=2.0, patch_px=64)


def test_entity_expansion_bomb_is_refused_naming_the_file(tmp_path):
    """A DTD is refused before any entity is declared, whatever expat's own amplification limit."""
    import time

    bomb = tmp_path / "bomb.xml"
    entities = "".join(
        f'<!ENTITY lol{i} "{("&lol;" if i == 1 else f"&lol{i - 1};") * 10}">' for i in range(1, 10)
    )
    bomb.write_text(
        f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">{entities}]>'
        '<ASAP_Annotations><Annotations><Annotation PartOfGroup="&lol9;"/></Annotations></ASAP_Annotations>'
    )
    t0 = time.perf_counter()
    with pytest.raises(SequenceDataError) as info:
        read_asap_annotations(bomb)
    assert time.perf_counter() - t0 < 1.0
    assert str(info.value) == (
        f"{bomb}: not an ASAP XML label (document type declaration <!DOCTYPE lolz>: ASAP labels have none, "
        "and DTDs and entity declarations are not read)"
    )
    # the same in UTF-16, where the bytes '<!DOCTYPE' do not appear
    bomb.write_bytes(bomb.read_text().replace('"1.0"', '"1.0" encoding="UTF-16"').encode("utf-16"))
    with pytest.raises(SequenceDataError, match=r"<!DOCTYPE lolz>"):
        read_asap_annotations(bomb)
    # a plain ASAP label still reads
    bomb.write_text(asap_xml([("glomerulus", circle(100, 100, 20))]))
    assert len(read_asap_annotations(bomb).glomeruli) == 1
