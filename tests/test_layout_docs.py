"""The layout tables of the README and the bundle docs name what is in the tree, and the tree is in them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pathseqsam"


def _table_rows(doc: Path, heading: str) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    assert heading in text, f"{doc}: no {heading!r} section"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, f"{doc}: no table rows under {heading!r}"
    return rows


def _first_cell_paths(rows: list[str]) -> list[str]:
    return [p for row in rows for p in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_readme_layout_table_matches_the_package():
    rows = _table_rows(ROOT / "README.md", "## Layout")
    listed = _first_cell_paths(rows)
    missing = [p for p in listed if not (ROOT / p).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"
    parts = [f"pathseqsam/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    parts += [f"pathseqsam/{p.name}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    unlisted = sorted(p for p in parts if p not in listed)
    assert not unlisted, f"README layout table does not list {unlisted}"


def test_readme_layout_rows_name_modules_that_exist_in_their_folder():
    # a row's description names modules (`segment.py`) and subfolders (`requests/`) of the folder in
    # its first cell: after a move, a row still naming the old module fails here
    checked = 0
    for row in _table_rows(ROOT / "README.md", "## Layout"):
        first, _, rest = row.partition(" | ")
        folders = [p for p in re.findall(r"`([^`]+/)`", first) if p.startswith("pathseqsam/")]
        if len(folders) != 1:
            continue
        folder = ROOT / folders[0]
        for name in re.findall(r"`([\w/]+\.py|\w+/)`", rest):
            if name.split("/")[0] in ("scripts", "bundle", "tests"):  # a path from the root
                assert (ROOT / name).exists(), (
                    f"README layout row {folders[0]} names {name}, which does not exist"
                )
                continue
            target = folder / name
            assert target.exists() or list(folder.rglob(Path(name).name)), (
                f"README layout row {folders[0]} names {name}, which is not in {folder}"
            )
            checked += 1
    assert checked >= 10, f"only {checked} module names checked: the layout rows lost their detail"


def test_bundle_docs_layout_table_matches_the_bundle():
    rows = _table_rows(ROOT / "bundle" / "docs" / "README.md", "## Bundle layout")
    listed = _first_cell_paths(rows)
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
    top = sorted(
        f"{p.name}/" if p.is_dir() else p.name
        for p in (ROOT / "bundle").iterdir()
        if not p.name.startswith(".") and p.name not in {"configs", "models", "eval", "data", "runs"}
    )
    unlisted = [p for p in configs + folders + top if p not in listed]
    assert not unlisted, f"bundle docs layout table does not list {unlisted}"
