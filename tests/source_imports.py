"""Absolute imports written in a package's source files, read with ``ast`` (imports inside functions too)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


def source_imports(package: Path) -> Iterator[tuple[Path, str]]:
    """Yield ``(file, imported module)`` for every absolute import statement under ``package``."""
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                yield from ((path, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module
