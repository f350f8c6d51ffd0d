"""The one place PathSeqSAM changes the running MONAI Label server: one version check, one install.

PathSeqSAM changes two things in MONAI Label's FastAPI server, both written against MONAI Label 0.8.x
(the ``label`` extra pins ``monailabel>=0.8.5,<0.9``):

* the endpoint functions ``/infer`` and ``/train`` call are wrapped so that the app checks each request
  first (:mod:`pathseqsam.label.server.guards`: malformed ``params`` answer 4xx naming the field);
* the whole-slide routes ``/infer/wsi_v2/{model}`` and ``/infer/wsi/{model}`` are replaced by handlers
  that run the slide pipeline in a worker thread (:mod:`pathseqsam.label.server.wsi_route`).

Both reach into MONAI Label's internals (module attributes, route lists), so both depend on its
version. :func:`install` checks that version once, then applies both; an unsupported version stops
the app from starting rather than serving requests without their checks.
"""

from __future__ import annotations

import logging
from typing import Any

from pathseqsam.label import INSTALL_HINT

try:
    import monailabel
except ImportError as exc:  # pragma: no cover - exercised in the core environment's test
    raise ImportError(INSTALL_HINT) from exc

from pathseqsam.label.server import guards, wsi_route

__all__ = ["SUPPORTED_MONAILABEL", "check_monailabel_version", "install"]

logger = logging.getLogger(__name__)

SUPPORTED_MONAILABEL = "0.8"
"""The MONAI Label release series (major.minor) the patches were written and tested against."""

_REQUIREMENT = "monailabel>=0.8.5,<0.9"  # the label extra's pin (pyproject.toml)


def check_monailabel_version(version: str | None = None) -> str:
    """Refuse a MONAI Label outside :data:`SUPPORTED_MONAILABEL`.

    Args:
        version: the version to check; None: the installed ``monailabel.__version__``.

    Returns:
        The version checked.

    Raises:
        RuntimeError: another release series (the message names both and the fix).
    """
    version = str(monailabel.__version__ if version is None else version)
    series = ".".join(version.split("+")[0].split(".")[:2])
    if series != SUPPORTED_MONAILABEL:
        raise RuntimeError(
            f"MONAI Label {version} is installed, but the PathSeqSAM app patches MONAI Label's server "
            f"internals written for {SUPPORTED_MONAILABEL}.x (request checks, whole-slide routes) and "
            f"refuses to serve without them: install the label extra's version (pip install '{_REQUIREMENT}')"
        )
    return version


def install(server: Any | None = None) -> bool:
    """Check MONAI Label's version once, then wrap its endpoints and replace its whole-slide routes.

    Idempotent: the app may be built more than once per process.

    Args:
        server: the FastAPI application whose whole-slide routes are replaced; None: MONAI Label's
            running server (``monailabel.app.app``) if this process loaded it.

    Returns:
        True when whole-slide routes were replaced; False when there is no server (the app used from
        a script or MONAI Label's command line: only the endpoint functions are wrapped).

    Raises:
        RuntimeError: an unsupported MONAI Label version, or a server without the functions and
            routes the patches replace.
    """
    version = check_monailabel_version()
    guards.wrap_endpoints()
    replaced = wsi_route.replace_routes(server)
    logger.info(
        "PathSeqSAM patches on MONAI Label %s: request checks on /infer and /train%s",
        version,
        ", whole-slide routes in a worker thread" if replaced else " (no server: routes untouched)",
    )
    return replaced
