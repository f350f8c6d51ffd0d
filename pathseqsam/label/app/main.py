"""MONAI Label app serving the PathSeqSAM bundle (loaded by ``monailabel start_server --app``).

Start it from the repository root (in the environment with the ``label`` extra)::

    monailabel start_server --app pathseqsam/label/app --studies <images folder> --conf models pathseqsam

Tasks, for model name ``pathseqsam`` (the ``models`` setting):

* infer ``pathseqsam``: automatic segmentation of every slice of an image (multi-page TIFF, NIfTI, or
  a 2D patch = a sequence of one slice), or of a region (``location`` in level-0 pixels, ``size`` and
  ``level``) of a pyramidal whole-slide image, read region by region (:mod:`pathseqsam.label.slides.region`);
* infer ``pathseqsam_interactive``: foreground/background clicks and/or a box on some slices,
  propagated through the sequence in both directions;
* whole slides, ``POST /infer/wsi_v2/pathseqsam?output=asap|dsa|geojson|json``: the bundle's
  slide pipeline (tissue tiles as one sequence, blended, cleaned; one polygon per glomerulus in
  level-0 pixels) in a worker thread, one slide at a time (:mod:`pathseqsam.label.slides.wsi_job`,
  :mod:`pathseqsam.label.server.wsi_route`);
* train ``pathseqsam``: fine-tune the bundle on the datastore's labels (a slide's ASAP XML label is
  cut into patches at the working resolution: :mod:`pathseqsam.label.slides.label_patches`).

Settings (``--conf KEY VALUE``): ``bundle`` (bundle folder, default the repository's ``bundle/``),
``bundle.<config id>`` (config overrides; ``bundle.slide_settings#<field>`` for whole slides),
``z_spacing_um``, ``max_megapixels``, ``max_wsi_tiles`` (see :mod:`pathseqsam.label.bundle`),
``skip_trainers`` (``true`` serves inference only).

Requests: only the options of :mod:`pathseqsam.label.requests.options` are accepted (typed, ranged, fixed
choices; anything else is dropped and logged), only datastore images are read (no uploaded files,
no sessions, no ``image`` path in ``params``), and malformed ``params`` answer 4xx before MONAI
Label sees them (:mod:`pathseqsam.label.server.patches`). The server is for a trusted network: see the
README (``--host 127.0.0.1``, MONAI Label's authentication). MONAI Label creates ``model/``, ``lib/``,
``logs/`` and ``bin/`` in this folder (ignored by git).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import monailabel
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import name_to_device, strtobool

import pathseqsam
from pathseqsam.label import LABELS
from pathseqsam.label.bundle import (
    bundle_overrides,
    inference_setting,
    max_pixels_setting,
    max_wsi_tiles_setting,
    resolve_bundle_dir,
    z_spacing_setting,
)
from pathseqsam.label.infer import PathSeqSAMInferTask, ServedModelUnusable
from pathseqsam.label.requests.options import RequestRefused, clean_request, wsi_options
from pathseqsam.label.server import patches
from pathseqsam.label.slides.region import is_pyramidal_slide
from pathseqsam.label.slides.wsi_job import (
    DEFAULT_MAX_TILES,
    WSI_OUTPUTS,
    WholeSlideJobs,
    annotation_json,
    kept_features,
    write_output,
    wsi_settings,
)
from pathseqsam.label.train import PathSeqSAMTrainTask

logger = logging.getLogger(__name__)

# MONAI Label's defaults plus the other spellings of TIFF stacks and JPEG patches
EXTENSIONS = [
    *settings.MONAI_LABEL_DATASTORE_FILE_EXT,
    *("*.tiff", "*.ome.tif", "*.ome.tiff", "*.jpeg"),
    *("*.ndpi", "*.scn"),  # whole-slide formats OpenSlide reads (regions only)
]


class PathSeqSAMApp(MONAILabelApp):
    """MONAI Label app: automatic and interactive PathSeqSAM segmentation of slice sequences, training.

    Args:
        app_dir: this folder.
        studies: the datastore folder (images; labels in ``labels/final``).
        conf: ``--conf`` settings (see the module docstring).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        names = [m.strip() for m in conf.get("models", "pathseqsam").split(",") if m.strip()]
        if len(names) != 1:
            raise ValueError(
                f"--conf models {conf.get('models')!r}: expected one model name, e.g. pathseqsam"
            )
        self.model_name = names[0]
        self.bundle_dir = resolve_bundle_dir(conf)
        checkpoint = self.bundle_dir / "models" / "model.pt"
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"{checkpoint} not found: train the bundle first (README: MONAI bundle training) "
                "or point --conf bundle at a bundle folder with models/model.pt"
            )
        self.overrides = bundle_overrides(conf)
        unit = inference_setting(self.bundle_dir, "distance_unit_um", self.overrides)
        self.z_spacing_um = z_spacing_setting(conf, unit)
        self.max_pixels = max_pixels_setting(conf)
        self.wsi_jobs = WholeSlideJobs(
            wsi_settings(self.bundle_dir, self.overrides), max_wsi_tiles_setting(conf, DEFAULT_MAX_TILES)
        )
        self.wsi_options = wsi_options(WSI_OUTPUTS)
        logger.info(
            "PathSeqSAM bundle %s, overrides %s, fallback z spacing %g um",
            self.bundle_dir,
            self.overrides,
            self.z_spacing_um,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"PathSeqSAM ({pathseqsam.__version__}, MONAI Label {monailabel.__version__})",
            description="Glomerulus segmentation of slice sequences with SAM2 memory: automatic or from clicks/boxes",
            version=pathseqsam.__version__,
            labels=dict(LABELS),
        )
        # MONAI Label's version checked once, then its endpoints guarded and whole-slide routes replaced
        patches.install()
        try:  # at start-up, so the log says it at once; requests answer 503 until the file is replaced
            self._infers[self.model_name].check_weights()
        except ServedModelUnusable:
            pass  # logged by the check

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LocalDatastore(
            self.studies,
            extensions=EXTENSIONS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        kwargs = {
            "overrides": self.overrides,
            "z_spacing_um": self.z_spacing_um,
            "max_pixels": self.max_pixels,
        }
        automatic = PathSeqSAMInferTask(self.bundle_dir, self.conf, interactive=False, **kwargs)
        interactive = PathSeqSAMInferTask(self.bundle_dir, self.conf, interactive=True, **kwargs)
        # one copy of the weights: the same template network and per-device cache
        interactive.network, interactive._networks = automatic.network, automatic._networks
        interactive.weights = automatic.weights  # one weights file: one check per version of it
        return {self.model_name: automatic, f"{self.model_name}_interactive": interactive}

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        task = PathSeqSAMTrainTask(
            self.bundle_dir, self.conf, overrides=self.overrides, z_spacing_um=self.z_spacing_um
        )
        return {self.model_name: task}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    # -- request checks (called by pathseqsam.label.server.guards before MONAI Label's endpoint code, and
    # again by infer/train for the paths that do not go through those endpoints: batch inference,
    # the command line, the background training process) ------------------------------------------

    def trainer_names(self) -> list[str]:
        return list(self._trainers)

    def _datastore_image(self, image: Any, datastore: Datastore | None = None) -> str:
        """The file of datastore image id ``image``; anything else (a path, an unknown id) is refused."""
        datastore = datastore or self.datastore()
        if not isinstance(image, str) or not image or image not in datastore.list_images():
            raise RequestRefused(
                f"image {str(image)[:200]!r} is not an image id of the datastore: only datastore images "
                "are read (upload new images with PUT /datastore/)",
                status_code=404 if isinstance(image, str) and image else 400,
            )
        return datastore.get_image_uri(image)

    def checked_infer_params(
        self,
        model: str,
        image: str,
        session_id: str,
        params: str,
        file: Any = None,
        label: Any = None,
        output: Any = None,
    ) -> dict[str, Any]:
        """An ``/infer`` request's ``params`` reduced to the model's whitelisted options.

        Raises:
            RequestRefused: unknown model (404), an uploaded file, label or a session (only datastore
                images are read), an image id not in the datastore, ``output=dicom_seg`` (not a DICOM
                datastore), ``params`` that are not a JSON object, or a wrong option value.
        """
        task = self._infers.get(model)
        if task is None:
            raise RequestRefused(f"no model {model!r}; this server has {sorted(self._infers)}", 404)
        if file or label or session_id:
            raise RequestRefused(
                "uploaded files, labels and sessions are not read by this server: add the image to the "
                "datastore (PUT /datastore/) and send its id as 'image'"
            )
        if str(getattr(output, "value", output)) == "dicom_seg":
            raise RequestRefused("output=dicom_seg needs a DICOM datastore; use image, json or all")
        self._datastore_image(image)
        try:
            decoded = json.loads(params) if params else {}
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RequestRefused(
                f"params: not valid JSON ({exc}); expected a JSON object of options"
            ) from exc
        return clean_request(decoded, task.options, where=f"infer {model} params")

    def checked_train_params(self, model: str, params: Any) -> dict[str, Any]:
        """A ``/train`` request body reduced to the trainer's whitelisted options.

        Also what the background training process would only find after ``/train`` has answered: the
        served weights it starts from must fit the network, every slide label must be readable.

        Raises:
            RequestRefused: unknown trainer (404), a body that is not a JSON object, a wrong value,
                a slide label that is not readable ASAP XML (400, naming the file and the parse
                error); ServedModelUnusable (503): the served weights do not fit the network.
        """
        task = self._trainers.get(model)
        if task is None:
            raise RequestRefused(f"no trainer {model!r}; this server has {sorted(self._trainers)}", 404)
        clean = clean_request({} if params is None else params, task.options, where=f"train {model} request")
        self._infers[self.model_name].check_weights()
        task.check_slide_labels(self.datastore())
        return clean

    def info(self) -> dict[str, Any]:
        """MONAI Label's ``/info/`` plus the whole-slide job's progress (``pathseqsam_wsi``)."""
        info = super().info()
        info["pathseqsam_wsi"] = {**self.wsi_jobs.status(), "max_tiles": self.wsi_jobs.max_tiles}
        return info

    def infer_wsi(self, request: Mapping[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Whole-slide inference with the bundle's slide pipeline (not MONAI Label's per-tile path).

        Called by ``/infer/wsi_v2/{model}`` in a worker thread (:mod:`pathseqsam.label.server.wsi_route`).
        The request is cleaned against :func:`pathseqsam.label.requests.options.wsi_options`; the slide runs
        through :class:`pathseqsam.label.slides.wsi_job.WholeSlideJobs` (one at a time, tile cap,
        progress); the polygons come back in level-0 pixels as ASAP XML, DSA JSON, GeoJSON or JSON.

        Returns:
            ``{"file": answer file or None, "params": MONAI Label's WSI JSON}``.

        Raises:
            HTTPException: 404 unknown model; 400 the interactive model, an image that is not a
                datastore slide, a wrong option, a region outside the slide; 413 more tissue tiles
                than ``--conf max_wsi_tiles``; 503 another whole slide is running.
        """
        model = request.get("model")
        try:
            task = self._infers.get(model) if isinstance(model, str) else None
            if task is None:
                raise RequestRefused(f"no model {model!r}; this server has {sorted(self._infers)}", 404)
            if model != self.model_name:
                raise RequestRefused(
                    f"whole-slide inference is served by the automatic model {self.model_name!r}; {model!r} "
                    f"segments regions from clicks (POST /infer/{model})"
                )
            image = request.get("image")
            path = self._datastore_image(image, datastore)
            if not is_pyramidal_slide(path):
                raise RequestRefused(
                    f"image {image!r} is not a pyramidal whole-slide image (a slide OpenSlide reads with more "
                    f"than one level): segment it with POST /infer/{model}"
                )
            clean = clean_request(
                request, self.wsi_options, keep=("model", "image"), where=f"infer_wsi {model}"
            )
            device = name_to_device(clean.get("device", self.wsi_options["device"].default))
            min_poly_area = float(clean.get("min_poly_area", self.wsi_options["min_poly_area"].default))
            output = clean.get("output", "json")
            logger.info("whole-slide inference request: %s", clean)
            result = self.wsi_jobs.run(lambda: task._get_network(device, None), device, path, image, clean)
            kept = kept_features(result["features"], min_poly_area)
            answer = annotation_json(result, model, task.description, kept)
            return {"file": write_output(answer, kept, output), "params": answer}
        except RequestRefused as exc:
            logger.warning("PathSeqSAM whole-slide request refused (%d): %s", exc.status_code, exc)
            raise HTTPException(status_code=exc.status_code, detail=str(exc)) from exc

    def infer(self, request: Mapping[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer on a cleaned request: whitelisted options, a datastore image only."""
        model = request.get("model")
        task = self._infers.get(model) if isinstance(model, str) else None
        try:
            if task is None:
                raise RequestRefused(f"no model {model!r}; this server has {sorted(self._infers)}", 404)
            path = self._datastore_image(request.get("image"), datastore)
            clean = clean_request(request, task.options, keep=("model", "image"), where=f"infer {model}")
        except RequestRefused as exc:
            logger.warning("PathSeqSAM request refused (%d): %s", exc.status_code, exc)
            raise HTTPException(status_code=exc.status_code, detail=str(exc)) from exc
        # MONAI Label reads an id that is also an existing path (relative to the working folder) as
        # that path: hand it the datastore's own file then (its result is not saved back).
        clean["image"] = path if os.path.exists(request["image"]) else request["image"]
        if request.get("save_label") is True and request.get("label_tag", "original") == "original":
            clean.update(save_label=True, label_tag="original")  # batch inference keeps its results
        # one user of the network at a time: a whole slide in its worker thread holds it for minutes
        if not self.wsi_jobs.lock.acquire(blocking=False):
            detail = self.wsi_jobs.busy_message()
            logger.warning("PathSeqSAM request refused (503): %s", detail)
            raise HTTPException(status_code=503, detail=detail)
        try:
            return super().infer(clean, datastore)
        finally:
            self.wsi_jobs.lock.release()

    def train(self, request: Mapping[str, Any]) -> Any:
        """MONAI Label's train on a cleaned request (the task checks the values again)."""
        model = request.get("model")
        task = self._trainers.get(model) if isinstance(model, str) else None
        try:
            if task is None:
                raise RequestRefused(f"no trainer {model!r}; this server has {sorted(self._trainers)}", 404)
            clean = clean_request(request, task.options, keep=("model",), where=f"train {model}")
        except RequestRefused as exc:
            logger.warning("PathSeqSAM training refused (%d): %s", exc.status_code, exc)
            raise HTTPException(status_code=exc.status_code, detail=str(exc)) from exc
        return super().train(clean)
