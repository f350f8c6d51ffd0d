"""The typed whitelist of what a MONAI Label request may set, shared by the checks and by ``/info/``.

Nothing from a request reaches the bundle's config parser or the file system as a free string: every
option has a type, a range or a fixed list of choices. :func:`clean_request` turns a raw request into
a new dict holding only whitelisted, converted values:

* a whitelisted key with a wrong type or value -> :class:`RequestRefused` (HTTP 400) naming the field
  and what was expected; non-finite numbers (NaN, inf, ``1e999``) are wrong values;
* any other key (clients send their own: ``client_id``, ``result_extension``, ``label_tag`` ...,
  and internal fields such as ``slice_index``, ``positions_um``, ``degraded``, ``image``) is dropped,
  and logged, never forwarded.

The same :class:`Option` objects produce the ``config`` shown by MONAI Label clients and the
``request_options`` schema in ``/info/``, so what is advertised is what is accepted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INTERNAL_FIELDS",
    "MAX_CLICKS",
    "MAX_LEVEL",
    "MAX_PIXEL_COORDINATE",
    "Option",
    "RequestRefused",
    "RequestTooLarge",
    "clean_request",
    "device_choices",
    "infer_options",
    "options_schema",
    "train_options",
    "wsi_options",
]

logger = logging.getLogger(__name__)

MAX_CLICKS = 256
"""Clicks per request (foreground and background together): more is not an annotation."""

MAX_PIXEL_COORDINATE = 1_000_000
"""Largest pixel coordinate or region size accepted (a 1-megapixel-wide image); larger is refused."""

MAX_LEVEL = 32
"""Largest pyramid level a request may name (each slide is checked for its own levels)."""

INTERNAL_FIELDS = ("slice_index", "positions_um", "positions", "degraded", "image", "label", "case")
"""Keys the loaders read from a datalist item: set by the server from the datastore, never by a request."""


class RequestRefused(ValueError):
    """A request the server will not run; ``status_code`` is the HTTP answer (400 unless set)."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = int(status_code)


class RequestTooLarge(RequestRefused):
    """More pixels (or other work) than the server's limits allow: HTTP 413."""

    status_code = 413


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_number(value: Any, name: str, expected: str) -> float:
    """``name`` is shown as given: ``'max_epochs'`` or ``'foreground'[0]``."""
    if not _is_number(value):
        raise RequestRefused(f"request {name} = {value!r}: expected {expected}")
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond float range
        as_float = math.inf
    if not math.isfinite(as_float):
        raise RequestRefused(f"request {name} = {value!r}: expected {expected} (finite)")
    return as_float


def _whole(value: Any, name: str, expected: str) -> int:
    x = _finite_number(value, name, expected)
    if x != int(x):
        raise RequestRefused(f"request {name} = {value!r}: expected {expected}, got a fraction")
    return int(x)


@dataclass(frozen=True)
class Option:
    """One request option: its type, range or choices, and default.

    Attributes:
        name: request key.
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``choices``; a list whose entries
            are all choices means its first entry, as clients echo the advertised list), ``"clicks"``
            (list of ``[x, y]`` / ``[x, y, z]``), ``"box"`` (4 or 6 numbers, or empty), ``"pair"`` (two
            whole numbers).
        default: default value (advertised; for ``choice`` the advertised value is the list of choices).
        low: smallest value (int/float; pair entries).
        high: largest value (int/float; pair entries).
        high_open: ``high`` itself is excluded (``val_split`` in [0, 1)).
        choices: the allowed strings of a ``choice``.
        help: one line for ``/info/``.
        advertise: also show it in the clients' options panel (MONAI Label's ``config``).
    """

    name: str
    kind: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    advertise: bool = True

    def _range(self) -> str:
        low = "" if self.low is None else f"{self.low:g} <= "
        if self.high is None:
            high = ""
        else:
            high = f" {'<' if self.high_open else '<='} {self.high:g}"
        return f" ({low}{self.name}{high})" if low or high else ""

    def _check_range(self, x: float, value: Any) -> None:
        too_low = self.low is not None and x < self.low
        too_high = self.high is not None and (x >= self.high if self.high_open else x > self.high)
        if too_low or too_high:
            raise RequestRefused(f"request '{self.name}' = {value!r}: out of range{self._range()}")

    def parse(self, value: Any) -> Any:
        """The value converted to the option's type.

        Args:
            value: the request's value (decoded JSON).

        Returns:
            int, float, bool, str, or lists of floats (clicks, box) / ints (pair).

        Raises:
            RequestRefused: wrong type, non-finite number, out of range, not a choice, too many clicks.
        """
        return getattr(self, f"_parse_{self.kind}")(value)

    def _parse_int(self, value: Any) -> int:
        x = _whole(value, f"'{self.name}'", f"an integer{self._range()}")
        self._check_range(x, value)
        return x

    def _parse_float(self, value: Any) -> float:
        x = _finite_number(value, f"'{self.name}'", f"a number{self._range()}")
        self._check_range(x, value)
        return x

    def _parse_bool(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise RequestRefused(f"request '{self.name}' = {value!r}: expected true or false")
        return value

    def _parse_choice(self, value: Any) -> str:
        expected = f"one of {list(self.choices)}"
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            bad = [v for v in value if v not in self.choices]
            if bad:
                raise RequestRefused(f"request '{self.name}' = {value!r}: {bad[0]!r} is not {expected}")
            return value[0]
        if not isinstance(value, str) or value not in self.choices:
            raise RequestRefused(f"request '{self.name}' = {value!r}: expected {expected}")
        return value

    def _parse_clicks(self, value: Any) -> list[list[float | int]]:
        expected = "a list of [x, y] or [x, y, z] clicks (pixel indices, z the slice)"
        if not isinstance(value, list):
            raise RequestRefused(f"request '{self.name}' = {value!r}: expected {expected}")
        if len(value) > MAX_CLICKS:
            raise RequestRefused(
                f"request '{self.name}': {len(value)} clicks, more than the {MAX_CLICKS} a request may hold"
            )
        out = []
        for i, click in enumerate(value):
            where = f"'{self.name}'[{i}]"
            if not isinstance(click, list) or len(click) not in (2, 3):
                raise RequestRefused(f"request {where} = {click!r}: expected {expected}")
            out.append([self._coordinate(v, where) for v in click])
        return out

    def _coordinate(self, value: Any, where: str) -> float | int:
        x = _finite_number(value, where, "a pixel coordinate")
        if abs(x) > MAX_PIXEL_COORDINATE:
            raise RequestRefused(
                f"request {where} = {value!r}: pixel coordinate beyond +-{MAX_PIXEL_COORDINATE}"
            )
        return value  # as sent (int or float): messages quote the client's own numbers

    def _parse_box(self, value: Any) -> list[float | int]:
        expected = "[x0, y0, x1, y1] or [x0, y0, x1, y1, z0, z1], or [] for no box"
        if not isinstance(value, list) or len(value) not in (0, 4, 6):
            raise RequestRefused(f"request '{self.name}' = {value!r}: expected {expected}")
        return [self._coordinate(v, f"'{self.name}'[{i}]") for i, v in enumerate(value)]

    def _parse_pair(self, value: Any) -> list[int]:
        expected = f"two whole numbers{self._range()}"
        if not isinstance(value, list) or len(value) != 2:
            raise RequestRefused(f"request '{self.name}' = {value!r}: expected {expected}")
        out = [_whole(v, f"'{self.name}'", expected) for v in value]
        for v in out:
            self._check_range(v, value)
        return out

    def advertised(self) -> Any:
        """The value shown in the clients' options panel (a list of choices for ``choice``)."""
        return list(self.choices) if self.kind == "choice" else self.default

    def schema(self) -> dict[str, Any]:
        """Machine-readable description for ``/info/``."""
        out: dict[str, Any] = {"type": self.kind, "default": self.default}
        if self.low is not None:
            out["min"] = self.low
        if self.high is not None:
            out["exclusive_max" if self.high_open else "max"] = self.high
        if self.choices:
            out["choices"] = list(self.choices)
        if self.help:
            out["help"] = self.help
        return out


def device_choices() -> tuple[str, ...]:
    """Devices a request may name: ``cpu``, and with CUDA ``cuda``, ``cuda:<i>`` and MONAI Label's GPU names."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names += ["cuda", *(f"cuda:{i}" for i in range(n))]
        try:  # the names MONAI Label's own panel lists (name_to_device maps them back)
            from monailabel.utils.others.generic import device_list

            names += [d for d in device_list() if d not in names]
        except ImportError:  # pragma: no cover - core environment
            pass
    return tuple(names)


def _device_option(devices: Sequence[str]) -> Option:
    return Option(
        "device",
        "choice",
        default=devices[-1] if len(devices) > 1 else devices[0],
        choices=tuple(devices),
        help="device to run on",
    )


def train_options(default_epochs: int, devices: Sequence[str] | None = None) -> dict[str, Option]:
    """The options a ``/train`` request may set.

    Args:
        default_epochs: the bundle's ``train#trainer#max_epochs`` (clipped to the allowed range).
        devices: device names (default :func:`device_choices`).

    Returns:
        ``{name: Option}``: ``max_epochs`` (int 1..1000), ``val_split`` (float in [0, 1); at least one
        labelled image is always held out to judge the model), ``device``.
    """
    devices = tuple(devices) if devices is not None else device_choices()
    options = [
        Option(
            "max_epochs",
            "int",
            default=min(max(int(default_epochs), 1), 1000),
            low=1,
            high=1000,
            help="epochs to train",
        ),
        Option(
            "val_split",
            "float",
            default=0.2,
            low=0.0,
            high=1.0,
            high_open=True,
            help="fraction of the labelled images held out for validation (at least one always is)",
        ),
        _device_option(devices),
    ]
    return {o.name: o for o in options}


def infer_options(interactive: bool, devices: Sequence[str] | None = None) -> dict[str, Option]:
    """The options an ``/infer`` request may set.

    Args:
        interactive: the interactive task (clicks, box, slice) or the automatic one.
        devices: device names (default :func:`device_choices`).

    Returns:
        ``{name: Option}``: ``device``; the pathology region ``location``, ``size`` (pairs of whole
        pixels), ``level`` (0 for stacks and patches; any level a pyramidal slide has) and
        ``tile_size`` (accepted from pathology clients; a region is segmented in one piece); for the interactive task also ``foreground``, ``background``
        (at most :data:`MAX_CLICKS` clicks together), ``roi`` and ``slice``.
    """
    devices = tuple(devices) if devices is not None else device_choices()
    limit = float(MAX_PIXEL_COORDINATE)
    options = [
        _device_option(devices),
        Option("location", "pair", [0, 0], low=0, high=limit, help="region top-left [x, y]", advertise=False),
        Option("size", "pair", [0, 0], low=0, high=limit, help="region [width, height]", advertise=False),
        Option(
            "level",
            "int",
            0,
            low=0,
            high=MAX_LEVEL,
            help="pyramid level of a slide region (size in its pixels, location in level 0's); 0 for other images",
            advertise=False,
        ),
        Option(
            "tile_size",
            "pair",
            [1024, 1024],
            low=1,
            high=limit,
            help="client's tile size; a region is segmented in one piece (the bundle's sliding window)",
            advertise=False,
        ),
    ]
    if interactive:
        options += [
            Option("foreground", "clicks", [], help="foreground clicks [x, y(, z)]", advertise=False),
            Option("background", "clicks", [], help="background clicks [x, y(, z)]", advertise=False),
            Option("roi", "box", [], help="box [x0, y0, x1, y1(, z0, z1)]", advertise=False),
            Option("slice", "int", 0, low=0, high=limit, help="slice of clicks without z", advertise=False),
        ]
    return {o.name: o for o in options}


def wsi_options(outputs: Sequence[str], devices: Sequence[str] | None = None) -> dict[str, Option]:
    """The options a whole-slide request (``/infer/wsi_v2/{model}``: its ``wsi`` form and ``params``) may set.

    Args:
        outputs: the answer formats (``output=``), the first being the default.
        devices: device names (default :func:`device_choices`).

    Returns:
        ``{name: Option}``: ``device``; ``location`` and ``size`` (level-0 pixels; both ``[0, 0]``:
        the whole slide); ``level`` and ``tile_size`` (MONAI Label's fields, accepted: the slide
        pipeline reads the level nearest the working resolution and tiles in micrometres);
        ``min_poly_area`` (square level-0 pixels); ``output``.
    """
    devices = tuple(devices) if devices is not None else device_choices()
    limit = float(MAX_PIXEL_COORDINATE)
    options = [
        _device_option(devices),
        Option("location", "pair", [0, 0], low=0, high=limit, help="region top-left [x, y], level-0 pixels"),
        Option(
            "size",
            "pair",
            [0, 0],
            low=0,
            high=limit,
            help="region [width, height] in level-0 pixels; [0, 0] with location [0, 0]: the whole slide",
        ),
        Option("level", "int", 0, low=0, high=MAX_LEVEL, help="accepted; the pipeline chooses the level"),
        Option(
            "tile_size", "pair", [1024, 1024], low=1, high=limit, help="accepted; tiles are in micrometres"
        ),
        Option(
            "min_poly_area", "int", 80, low=0, high=limit * limit, help="smallest polygon, level-0 pixels^2"
        ),
        Option("output", "choice", outputs[0], choices=tuple(outputs), help="answer format"),
    ]
    return {o.name: o for o in options}


def options_schema(options: Mapping[str, Option]) -> dict[str, dict[str, Any]]:
    """``{name: schema}`` of every accepted option (advertised in ``/info/`` as ``request_options``)."""
    return {name: option.schema() for name, option in options.items()}


def clean_request(
    request: Any, options: Mapping[str, Option], keep: Iterable[str] = (), where: str = "request"
) -> dict[str, Any]:
    """Only the whitelisted, converted values of ``request`` (see the module docstring).

    Args:
        request: the decoded request (must be a JSON object).
        options: the whitelist.
        keep: server-set keys copied unchanged (``model``); never keys a client can set.
        where: what the request is, for the log.

    Returns:
        A new dict: ``keep`` keys, then every whitelisted key present with its parsed value (``None``
        values are treated as absent).

    Raises:
        RequestRefused: the request is not an object, or a whitelisted value is wrong.
    """
    if not isinstance(request, Mapping):
        raise RequestRefused(f"{where}: expected a JSON object of options, got {type(request).__name__}")
    keep = set(keep)
    out: dict[str, Any] = {k: request[k] for k in keep if k in request}
    ignored = []
    for key, value in request.items():
        if key in keep:
            continue
        option = options.get(key) if isinstance(key, str) else None
        if option is None:
            ignored.append(key)
        elif value is not None:
            out[key] = option.parse(value)
    if "foreground" in out or "background" in out:
        n = len(out.get("foreground", [])) + len(out.get("background", []))
        if n > MAX_CLICKS:
            raise RequestRefused(
                f"request 'foreground'/'background': {n} clicks, more than the {MAX_CLICKS} a request may hold"
            )
    if ignored:
        logger.info(
            "%s: ignoring keys that are not options of this task: %s", where, sorted(map(str, ignored))
        )
    return out
