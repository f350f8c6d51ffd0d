"""MONAI Label's whole-slide routes, served off the event loop and with a GeoJSON answer.

MONAI Label 0.8.5 declares ``POST /infer/wsi_v2/{model}`` (and the deprecated ``/infer/wsi/{model}``)
as ``async`` functions that call the (synchronous) inference directly, so a whole slide blocks the
server's event loop: ``/info/`` and every other request wait for it. :func:`replace_routes` (applied
by :func:`pathseqsam.label.server.patches.install`, which checks MONAI Label's version) replaces those two
routes, same paths, same parameters (``image``, the ``wsi`` form field holding MONAI Label's
``WSIInput`` JSON with its ``params``, ``output``) and the same answers, with handlers that

* refuse uploads and sessions (only datastore images are read) and malformed ``wsi`` JSON (400);
* hand the request to :meth:`PathSeqSAMApp.infer_wsi` (which cleans it against the typed whitelist
  :func:`pathseqsam.label.requests.options.wsi_options`) in a worker thread (``run_in_threadpool``), so the
  event loop keeps answering;
* also accept ``output=geojson`` (QuPath GeoJSON, level-0 pixels) besides ``asap``, ``dsa`` and
  ``json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import Enum
from typing import Any

from pathseqsam.label import INSTALL_HINT

try:
    from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
    from fastapi.responses import FileResponse
    from fastapi.routing import APIRoute
    from monailabel.config import RBAC_USER, settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.endpoints.wsi_infer import WSIInput
    from monailabel.interfaces.utils.app import app_instance
    from monailabel.utils.others.generic import remove_file
    from starlette.concurrency import run_in_threadpool
except ImportError as exc:  # pragma: no cover - exercised in the core environment's test
    raise ImportError(INSTALL_HINT) from exc

from pathseqsam.label.requests.options import RequestRefused

__all__ = ["WSIOutput", "replace_routes"]

logger = logging.getLogger(__name__)

# FastAPI's parameter declarations, made once (the defaults of MONAI Label's own routes)
_UPLOAD = File(None)
_WSI_FORM = Form(WSIInput().model_dump_json())
_WSI_BODY = WSIInput()
_USER = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))

_MEDIA = {"asap": "application/xml", "dsa": "application/json", "geojson": "application/geo+json"}


class WSIOutput(str, Enum):
    """``output=``: MONAI Label's formats plus GeoJSON."""

    asap = "asap"
    dsa = "dsa"
    json = "json"
    geojson = "geojson"


def _refusal(exc: RequestRefused) -> HTTPException:
    logger.warning("PathSeqSAM whole-slide request refused (%d): %s", exc.status_code, exc)
    return HTTPException(status_code=exc.status_code, detail=str(exc))


async def _run(
    background_tasks: BackgroundTasks,
    model: str,
    image: str,
    session_id: str,
    upload: Any,
    body: Any,
    output: WSIOutput | None,
) -> Any:
    try:
        if (upload is not None and getattr(upload, "filename", None)) or session_id:
            raise RequestRefused(
                "uploaded files and sessions are not read by this server: add the slide to the datastore "
                "(PUT /datastore/) and send its id as 'image'"
            )
        if not isinstance(body, dict):
            raise RequestRefused(
                f"wsi: expected a JSON object (MONAI Label's WSIInput), got {type(body).__name__}"
            )
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise RequestRefused(f"wsi 'params': expected a JSON object, got {type(params).__name__}")
    except RequestRefused as exc:
        raise _refusal(exc) from exc
    # as MONAI Label merges them: the WSIInput fields, then its params; the app keeps whitelisted keys
    request = {k: v for k, v in body.items() if k != "params"}
    request.update(params)
    request.update(model=model, image=image, output=(output or WSIOutput.json).value)
    instance = app_instance()
    result = await run_in_threadpool(instance.infer_wsi, request)
    path = result.get("file")
    if not path:
        return result["params"]
    background_tasks.add_task(remove_file, path)
    return FileResponse(path, media_type=_MEDIA.get(request["output"]), filename=os.path.basename(path))


async def wsi_v2(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    file: UploadFile = _UPLOAD,
    wsi: str = _WSI_FORM,
    output: WSIOutput | None = None,
    user: User = _USER,
) -> Any:
    """``POST /infer/wsi_v2/{model}``: the slide pipeline in a worker thread."""
    try:
        body = json.loads(wsi)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise _refusal(
            RequestRefused(f"wsi: not valid JSON ({exc}); expected MONAI Label's WSIInput")
        ) from exc
    return await _run(background_tasks, model, image, session_id, file, body, output)


async def wsi_v1(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    wsi: WSIInput = _WSI_BODY,
    output: WSIOutput | None = None,
    user: User = _USER,
) -> Any:
    """``POST /infer/wsi/{model}`` (MONAI Label's deprecated route): the same, with ``wsi`` as the JSON body."""
    return await _run(background_tasks, model, image, session_id, None, wsi.model_dump(), output)


def _replace(router: Any, handlers: dict[str, Any], prefix: str) -> int:
    """Swap ``router``'s routes at ``prefix + path`` for ``handlers[path]``; returns how many it had."""
    old = [r for r in router.routes if isinstance(r, APIRoute) and r.path in {prefix + p for p in handlers}]
    if not old:
        return 0
    if all(r.endpoint in handlers.values() for r in old):
        return len(old)  # already ours
    router.routes[:] = [r for r in router.routes if not any(r is o for o in old)]
    base = getattr(router, "prefix", "")  # an APIRouter puts its own prefix before the paths it is given
    for path, endpoint in handlers.items():
        router.add_api_route(
            (prefix + path)[len(base) :],
            endpoint,
            methods=["POST"],
            summary=f"{RBAC_USER}Run whole-slide inference (PathSeqSAM slide pipeline)",
            include_in_schema=endpoint is wsi_v2,
            deprecated=endpoint is wsi_v1,
        )
    mark = getattr(router, "_mark_routes_changed", None)
    if mark is not None:  # FastAPI >= 0.16x caches the routes of included routers
        mark()
    return len(old)


def replace_routes(server: Any | None = None) -> bool:
    """Replace MONAI Label's whole-slide routes in the running server (idempotent).

    Called by :func:`pathseqsam.label.server.patches.install` after its version check.

    Args:
        server: the FastAPI application; None: MONAI Label's (``monailabel.app.app``) if loaded.

    Returns:
        False when there is no server (the app used from a script or MONAI Label's command line):
        nothing to replace.

    Raises:
        RuntimeError: the server does not have the routes this replaces.
    """
    if server is None:
        loaded = sys.modules.get("monailabel.app")
        server = getattr(loaded, "app", None)
    if server is None:
        return False
    from monailabel.endpoints import wsi_infer

    handlers = {"/infer/wsi_v2/{model}": wsi_v2, "/infer/wsi/{model}": wsi_v1}
    # FastAPI 0.16x keeps included routers as routers (MONAI Label's own ``wsi_infer.router``);
    # older versions copied their routes into the app's list when MONAI Label included them
    found = _replace(wsi_infer.router, handlers, "")
    found += _replace(server.router, handlers, settings.MONAI_LABEL_API_STR)
    if found < len(handlers):
        raise RuntimeError(
            f"MONAI Label's whole-slide routes {sorted(handlers)} not found in the server: refusing to serve "
            "whole slides on the event loop"
        )
    server.openapi_schema = None
    logger.info("PathSeqSAM: whole-slide routes %s run in a worker thread", sorted(handlers))
    return True
