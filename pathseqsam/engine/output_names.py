"""Output file names from data: one path component each, unique within a run.

Case names and slice names come from datalists and file names, i.e. from outside. Used as folder
or file names they could climb out of the output folder (``../x``), name an absolute path, or
repeat, so that the second output silently replaces the first. :func:`safe_component` turns a name
into one harmless path component and :class:`UniqueNames` gives every repeat its own name
(``name_2``, ``name_3`` ...), with a warning that says which.
"""

from __future__ import annotations

import logging
import re

__all__ = ["UniqueNames", "safe_component"]

logger = logging.getLogger("pathseqsam")

_UNSAFE = re.compile(r"[^\w.+-]+")
MAX_LENGTH = 120


def safe_component(name: object, fallback: str = "unnamed") -> str:
    """``name`` as a single file-name component that stays inside its folder.

    Separators and other characters outside letters, digits, ``. _ + -`` become ``_``; leading dots
    go (no ``..``, no hidden files); long names are cut to 120 characters.

    Args:
        name: the name from the data.
        fallback: used when nothing is left.

    Returns:
        A non-empty component without path separators.
    """
    text = _UNSAFE.sub("_", str(name)).lstrip(".")[:MAX_LENGTH]
    return text or fallback


class UniqueNames:
    """Hand out safe, unique names: a name seen before gets ``_2``, ``_3`` ... (and a warning).

    Args:
        what: what the names are, for the warning (``"case"``, ``"slice"``).
    """

    def __init__(self, what: str = "name") -> None:
        self.what = what
        self._used: set[str] = set()

    def __call__(self, name: object, fallback: str = "unnamed") -> str:
        base = safe_component(name, fallback)
        out, k = base, 1
        while out.lower() in self._used:  # case-insensitive: the same file on macOS and Windows
            k += 1
            out = f"{base}_{k}"
        self._used.add(out.lower())
        if out != str(name):
            logger.warning("%s %r is written as %r (a safe, unique file name)", self.what, str(name), out)
        return out

    def reset(self) -> None:
        self._used.clear()
