"""Check MONAI Label's ``/infer`` and ``/train`` requests before MONAI Label itself touches them.

MONAI Label 0.8.5 merges a request's ``params`` into the task request as they come: ``json.loads``
of a malformed form answers HTTP 500, a JSON list or number makes ``dict.update`` fail (500), a
``params`` key ``image`` replaces the datastore image id with any path on the server, and a
``/train`` body is handed to a background process before any app code runs (so a wrong value
can only fail later, after an HTTP 200). :func:`wrap_endpoints` (applied by
:func:`pathseqsam.label.server.patches.install`, which checks MONAI Label's version) wraps the endpoint functions the routes
call (``monailabel.endpoints.infer.run_inference``, ``monailabel.endpoints.train.run_model`` and
``run``; the routes look them up at call time), so that each request is first checked by the app
(:meth:`PathSeqSAMApp.checked_infer_params`, :meth:`PathSeqSAMApp.checked_train_params`): a refused
request answers 4xx naming the field, an accepted one continues with only its whitelisted values.
The app's checks also answer 503 when the served weights cannot be used, and ``/train`` 400 when a
slide's saved label cannot be read, before the background process starts.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from pathseqsam.label import INSTALL_HINT

try:
    import monailabel.endpoints.infer as infer_endpoint
    import monailabel.endpoints.train as train_endpoint
    from fastapi import HTTPException
    from monailabel.interfaces.utils.app import app_instance
except ImportError as exc:  # pragma: no cover - exercised in the core environment's test
    raise ImportError(INSTALL_HINT) from exc

from pathseqsam.label.requests.options import RequestRefused

__all__ = ["wrap_endpoints"]

logger = logging.getLogger(__name__)

_MARK = "__pathseqsam_guard__"


def _refusal(exc: RequestRefused) -> HTTPException:
    logger.warning("PathSeqSAM request refused (%d): %s", exc.status_code, exc)
    return HTTPException(status_code=exc.status_code, detail=str(exc))


def _guard_infer(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_inference(
        background_tasks: Any,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = "{}",
        file: Any = None,
        label: Any = None,
        output: Any = None,
    ) -> Any:
        try:
            clean = app_instance().checked_infer_params(model, image, session_id, params, file, label, output)
        except RequestRefused as exc:
            raise _refusal(exc) from exc
        return original(background_tasks, model, image, "", json.dumps(clean), None, None, output)

    setattr(run_inference, _MARK, True)
    return run_inference


def _guard_train_model(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_model(
        model: str, params: dict | None = None, run_sync: bool | None = False, enqueue: bool | None = False
    ):
        try:
            clean = app_instance().checked_train_params(model, params)
        except RequestRefused as exc:
            raise _refusal(exc) from exc
        return original(model, clean, run_sync, enqueue)

    setattr(run_model, _MARK, True)
    return run_model


def _guard_train_all(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(params: dict | None = None, run_sync: bool | None = False):
        app = app_instance()
        try:
            clean = {
                model: app.checked_train_params(model, (params or {}).get(model))
                for model in app.trainer_names()
            }
        except RequestRefused as exc:
            raise _refusal(exc) from exc
        return original(clean, run_sync)

    setattr(run, _MARK, True)
    return run


def wrap_endpoints() -> None:
    """Wrap the endpoint functions once (idempotent; the app may be built more than once per process).

    Called by :func:`pathseqsam.label.server.patches.install` after its version check.

    Raises:
        RuntimeError: MONAI Label has no such function (the checks would be bypassed: no serving).
    """
    for module, name, guard in (
        (infer_endpoint, "run_inference", _guard_infer),
        (train_endpoint, "run_model", _guard_train_model),
        (train_endpoint, "run", _guard_train_all),
    ):
        current = getattr(module, name, None)
        if current is None:
            raise RuntimeError(
                f"{module.__name__}.{name} not found: the PathSeqSAM request checks wrap it; refusing to "
                "serve without them"
            )
        if not getattr(current, _MARK, False):
            setattr(module, name, guard(current))
