"""The one exception type the data readers raise for bad input."""

from __future__ import annotations

__all__ = ["SequenceDataError"]


class SequenceDataError(ValueError):
    """Bad or inconsistent input data.

    The message always names the offending file (or datalist field) and says what was expected,
    so a user can fix the data without reading the code. Subclasses ``ValueError`` so generic
    handlers keep working.
    """
