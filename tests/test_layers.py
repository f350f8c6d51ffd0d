"""The package's layer order, read from every module's imports (including imports inside functions).

root utilities (``atomic``, ``config_values``, ``ranks``, ``visualize``) <- ``data``, ``synthetic``,
``modeling``, ``losses``, ``metrics`` <- ``engine``, ``wsi``, ``pretrain`` <- ``compare``, ``label``.
``wsi`` (the whole-slide pipeline) sits beside ``engine`` (the Ignite glue) and never imports it. Root utilities may use each other; within the
middle layer only ``synthetic`` may
use ``data`` (it writes datalists and stacks with the readers' own writers); the one import from
``data`` into ``synthetic`` is the deprecated ``pathseqsam.data.synthetic`` alias. The package's
``__init__`` is a facade (lazy re-exports of the public names) and is not a layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.source_imports import source_imports

PACKAGE = Path(__file__).resolve().parents[1] / "pathseqsam"

LAYERS = {
    "atomic": 0,
    "config_values": 0,
    "ranks": 0,
    "visualize": 0,
    "data": 1,
    "synthetic": 1,
    "modeling": 1,
    "losses": 1,
    "metrics": 1,
    "engine": 2,
    "wsi": 2,
    "pretrain": 2,
    "compare": 3,
    "label": 3,
}
# same-layer imports between different parts that are allowed (importer, imported)
SIDEWAYS = {("synthetic", "data")}
EXCEPTIONS = {("pathseqsam.data.synthetic", "synthetic")}  # the deprecated CLI alias


def _part(module: str) -> str | None:
    """``pathseqsam.data.kpis`` -> ``data``; the facade ``pathseqsam`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (module names), or None when it may."""
    src, dst = _part(importer), _part(imported)
    if src is None or dst is None or src == dst:
        return None
    if src not in LAYERS or dst not in LAYERS:
        return f"{importer} -> {imported}: part not in the layer table {sorted(LAYERS)}"
    if (importer, dst) in EXCEPTIONS:
        return None
    if LAYERS[dst] > LAYERS[src]:
        return f"{importer} (layer {LAYERS[src]}) imports {imported} (layer {LAYERS[dst]}): upward"
    if LAYERS[dst] == LAYERS[src] and LAYERS[src] > 0 and (src, dst) not in SIDEWAYS:
        return f"{importer} imports {imported}: sideways within layer {LAYERS[src]} is not allowed"
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_imports() -> list[tuple[str, str]]:
    """Every (importer, imported) pair of pathseqsam modules, from all import statements."""
    return [
        (_module_name(path), name)
        for path, name in source_imports(PACKAGE)
        if name == "pathseqsam" or name.startswith("pathseqsam.")
    ]


def test_rule_catches_upward_and_sideways_imports():
    assert violation("pathseqsam.data.kpis", "pathseqsam.engine.writers").endswith("upward")
    assert "sideways" in violation("pathseqsam.data.stacks", "pathseqsam.synthetic.generator")
    assert "sideways" in violation("pathseqsam.modeling.lora", "pathseqsam.data.errors")
    assert violation("pathseqsam.atomic", "pathseqsam.data.errors").endswith("upward")
    assert violation("pathseqsam.synthetic.generator", "pathseqsam.data.datalist") is None
    assert violation("pathseqsam.label.infer", "pathseqsam.engine") is None
    assert "sideways" in violation("pathseqsam.wsi.segment", "pathseqsam.engine.distributed")
    assert violation("pathseqsam.wsi.segment", "pathseqsam.ranks") is None
    assert violation("pathseqsam.label.slides.wsi_job", "pathseqsam.wsi.segment") is None
    assert violation("pathseqsam.data.synthetic", "pathseqsam.synthetic.generator") is None
    assert "layer table" in violation("pathseqsam.newpart.x", "pathseqsam.data")


def test_package_follows_the_layer_order():
    pairs = package_imports()
    assert len(pairs) > 50  # the walk found the package's imports
    assert ("pathseqsam.engine.writers", "pathseqsam.data.stacks") in pairs
    bad = [v for v in (violation(a, b) for a, b in pairs) if v]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_every_part_exists(part):
    assert (PACKAGE / part).is_dir() or (PACKAGE / f"{part}.py").is_file()
