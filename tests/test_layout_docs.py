"""The layout tables of the README and the bundle docs name what is in the tree, and the tree is in them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_paths(doc: Path, heading: str) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, f"{doc}: no table rows under {heading!r}"
    return [p for row in rows for p in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_readme_layout_table_matches_the_package():
    listed = _table_paths(ROOT / "README.md", "## Layout")
    missing = [p for p in listed if not (ROOT / p).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"
    package = ROOT / "pathseqsam"
    parts = [f"pathseqsam/{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()]
    parts += [f"pathseqsam/{p.name}" for p in package.glob("*.py") if p.name != "__init__.py"]
    unlisted = sorted(p for p in parts if p not in listed)
    assert not unlisted, f"README layout table does not list {unlisted}"
    # the transform modules named in the data row exist
    row = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if "| `pathseqsam/data/`" in line
    )
    for name in re.findall(r"`(\w+\.py)`", row):
        assert list((package / "data").rglob(name)), (
            f"README names data module {name}, not in pathseqsam/data"
        )


def test_bundle_docs_layout_table_matches_the_bundle():
    listed = _table_paths(ROOT / "bundle" / "docs" / "README.md", "## Bundle layout")
    generated = {"models/", "eval/", "data/"}  # written by runs, ignored by git
    missing = [p for p in listed if p not in generated and not (ROOT / "bundle" / p).exists()]
    assert not missing, f"bundle docs layout names paths that do not exist: {missing}"
    written = {"monailabel_train.json"}  # exported by MONAI Label's multi-GPU training, ignored by git
    configs = sorted(
        str(p.relative_to(ROOT / "bundle"))
        for p in (ROOT / "bundle" / "configs").iterdir()
        if p.is_file() and p.name not in written
    )
    folders = sorted(f"configs/{p.name}/" for p in (ROOT / "bundle" / "configs").iterdir() if p.is_dir())
    unlisted = [p for p in configs + folders if p not in listed]
    assert not unlisted, f"bundle docs layout table does not list {unlisted}"
