"""Where the MONAI Label app finds the bundle, and the config overrides it is started with.

The app reads the bundle's own ``configs/inference.json`` and ``configs/train.json`` (no second model
definition). Server-level settings come from ``monailabel start_server --conf KEY VALUE``:

* ``bundle``: the bundle folder (``configs/``, ``models/``); default: ``bundle/`` of this repository;
* ``bundle.<id>``: override config item ``<id>`` in both configs, the value parsed as JSON (so
  ``--conf bundle.image_size 512`` gives the integer 512; a value that is not JSON stays a string);
  ids use MONAI's ``#`` separator, e.g. ``bundle.train#windows_per_case``; whole slides
  (``/infer/wsi_v2``) take ``bundle.slide_settings#<field>``, a field of
  :class:`~pathseqsam.wsi.segment.SlideInferenceSettings` (the ``slide_settings`` node of
  ``configs/inference_wsi.json``), checked against the field's type and never handed to the config
  parser (:func:`pathseqsam.label.slides.wsi_job.wsi_settings`);
* ``z_spacing_um``: slice spacing for stacks without spacing metadata (default: the bundle's
  ``distance_unit_um``, i.e. consecutive slices one distance unit apart);
* ``max_megapixels``: pixels one inference request may decode (slices x height x width, read from
  the image header first; default 100 megapixels); larger images are refused with HTTP 413.
* ``max_wsi_tiles``: tissue tiles one whole-slide request (``/infer/wsi_v2/{model}``) may need
  (counted on the tissue mask before any tile is read; default 20,000); more is refused with 413.
* ``mpp_um``: pixel size (um per pixel) of images whose files carry none (PNG, JPEG): the bundle's
  ``mpp_um`` setting, so its preprocessing resamples them to ``model_mpp_um``; also the slides'
  ``slide_settings#mpp_um`` unless that is given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "OVERRIDE_PREFIX",
    "bundle_overrides",
    "inference_setting",
    "max_pixels_setting",
    "max_wsi_tiles_setting",
    "resolve_bundle_dir",
    "z_spacing_setting",
]

OVERRIDE_PREFIX = "bundle."


def resolve_bundle_dir(conf: Mapping[str, str]) -> Path:
    """The bundle folder named by ``conf["bundle"]``, else this repository's ``bundle/``.

    Args:
        conf: MONAI Label app settings (``--conf`` pairs).

    Returns:
        Absolute path of a folder holding ``configs/inference.json``, ``configs/train.json`` and
        ``configs/metadata.json``.

    Raises:
        FileNotFoundError: the folder or one of those files is missing (names the path and the setting).
    """
    if conf.get("bundle"):
        root = Path(os.path.expanduser(conf["bundle"])).resolve()
        where = f"--conf bundle {conf['bundle']}"
    else:
        root = Path(__file__).resolve().parents[2] / "bundle"
        where = "the repository's bundle/ (pathseqsam installed in editable mode); set --conf bundle <dir>"
    for name in ("inference.json", "train.json", "metadata.json"):
        if not (root / "configs" / name).is_file():
            raise FileNotFoundError(f"{root / 'configs' / name} not found (bundle folder from {where})")
    return root


def bundle_overrides(conf: Mapping[str, str]) -> dict[str, Any]:
    """Config overrides from ``--conf bundle.<id> <value>`` settings.

    Args:
        conf: MONAI Label app settings.

    Returns:
        ``{id: value}`` with values parsed as JSON where they are JSON (numbers, booleans, null,
        lists, objects, quoted strings), else kept as the string given.

    Raises:
        ValueError: an empty id (``--conf bundle. 3``).
    """
    out: dict[str, Any] = {}
    if conf.get("mpp_um") is not None:  # the pixel size of files without one (PNG/JPEG)
        try:
            value = float(conf["mpp_um"])
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"--conf mpp_um {conf['mpp_um']}: expected a positive number of micrometres per pixel"
            )
        out["mpp_um"] = value
    for key, raw in conf.items():
        if not key.startswith(OVERRIDE_PREFIX):
            continue
        config_id = key[len(OVERRIDE_PREFIX) :]
        if not config_id:
            raise ValueError(f"--conf {key} {raw}: expected bundle.<config id>, e.g. bundle.image_size")
        try:
            out[config_id] = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            out[config_id] = raw
    return out


def inference_setting(bundle_dir: Path, key: str, overrides: Mapping[str, Any]) -> Any:
    """A top-level value of the bundle's ``configs/inference.json`` (unparsed), after ``overrides``.

    Args:
        bundle_dir: bundle folder.
        key: top-level config id.
        overrides: overrides from :func:`bundle_overrides`.

    Returns:
        The value.

    Raises:
        KeyError: the config has no such key (names the file).
    """
    if key in overrides:
        return overrides[key]
    path = Path(bundle_dir) / "configs" / "inference.json"
    config = json.loads(path.read_text())
    if key not in config:
        raise KeyError(f"{path} has no {key!r}")
    return config[key]


def z_spacing_setting(conf: Mapping[str, str], default: float) -> float:
    """The ``z_spacing_um`` setting as a positive number (``default`` when absent).

    Args:
        conf: MONAI Label app settings.
        default: value when the setting is absent.

    Returns:
        Micrometres between consecutive slices of stacks without spacing metadata.

    Raises:
        ValueError: the setting is not a positive number.
    """
    raw = conf.get("z_spacing_um")
    if raw is None:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"--conf z_spacing_um {raw}: expected a positive number of micrometres")
    return value


def max_pixels_setting(conf: Mapping[str, str], default_megapixels: float = 100.0) -> int:
    """The ``max_megapixels`` setting as a pixel count (``default_megapixels`` when absent).

    Args:
        conf: MONAI Label app settings.
        default_megapixels: value when the setting is absent.

    Returns:
        Pixels (slices x height x width) one inference request may decode.

    Raises:
        ValueError: the setting is not a positive, finite number.
    """
    raw = conf.get("max_megapixels")
    if raw is None:
        return int(default_megapixels * 1e6)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"--conf max_megapixels {raw}: expected a positive number of megapixels, e.g. 100")
    return int(value * 1e6)


def max_wsi_tiles_setting(conf: Mapping[str, str], default: int) -> int:
    """The ``max_wsi_tiles`` setting as a positive whole number (``default`` when absent).

    Args:
        conf: MONAI Label app settings.
        default: value when the setting is absent.

    Returns:
        Tissue tiles one whole-slide request may need.

    Raises:
        ValueError: the setting is not a positive whole number.
    """
    raw = conf.get("max_wsi_tiles")
    if raw is None:
        return int(default)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"--conf max_wsi_tiles {raw}: expected a positive whole number of tiles, e.g. 20000")
    return value
