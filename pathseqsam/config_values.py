"""Values given on the bundle's command line, made into what the configs mean.

``python -m monai.bundle run ... --ensemble false`` hands the config the STRING ``"false"`` (the
command line keeps unknown words as strings), which Python treats as true: every boolean setting the
configs test goes through :func:`config_flag`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PARSER_PREFIXES", "config_flag", "plain_value"]

# what MONAI's config parser reads as code (``$``), a reference (``@``) or a macro (``%``)
PARSER_PREFIXES = ("$", "@", "%")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def config_flag(value: Any, name: str) -> bool:
    """A boolean setting as given in a config or on the command line.

    Args:
        value: ``True``/``False``, 0/1, or a word: ``true``/``false``, ``yes``/``no``, ``on``/``off``
            (any case).
        name: the setting's name, for the error message.

    Returns:
        The boolean.

    Raises:
        ValueError: anything else, naming the setting and the accepted values.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"setting {name!r} = {value!r}: expected true or false (also yes/no, on/off, 1/0)")


def plain_value(value: str, name: str) -> str:
    """A path or word handed to a bundle config as an override, checked to stay a plain string.

    MONAI's parser evaluates a string that starts with ``$`` and resolves one that starts with ``@``
    or ``%``; a folder named that way must never become code.

    Raises:
        ValueError: ``value`` starts with one of :data:`PARSER_PREFIXES` (the setting named).
    """
    text = str(value)
    if text.startswith(PARSER_PREFIXES):
        raise ValueError(
            f"{name} = {text!r}: a value starting with {' '.join(PARSER_PREFIXES)} would be read as config code; "
            "rename or move it"
        )
    return text
