"""MONAI Label inference task: the bundle's network, automatic or from clicks/boxes, on slice sequences.

:class:`PathSeqSAMInferTask` extends MONAI Label's ``BundleInferTask``, which reads the bundle's
``configs/inference.json``, builds its ``network_def`` and loads ``models/model.pt`` (reloaded when
the file changes, e.g. after training). From the bundle config it also takes ``preprocessing``
(``LoadSequenced`` + SAM2 normalisation), ``inferer`` (automatic mode) and ``postprocessing`` (sigmoid,
threshold 0.5; the file writer is left out). What it adds:

* the request's image file becomes a sequence (:mod:`pathseqsam.label.sequence_io`) and, for
  pathology requests, the region it names is cut out (:mod:`pathseqsam.label.requests.region`); a pyramidal
  slide is never read whole: only the region of the requested level is
  (:mod:`pathseqsam.label.slides.region`), and the answer gives its outlines in level-0 pixels;
* automatic mode: the bundle's inferer with the slices' positions, every slice segmented;
* interactive mode: clicks/boxes become prompts on their slices (:mod:`pathseqsam.label.requests.prompts`),
  the whole-slice network runs from there in both directions
  (:mod:`pathseqsam.label.propagation`);
* the mask comes back in the image's own format with label value 1, plus a JSON summary;
* requests are held to the typed whitelist of :func:`pathseqsam.label.requests.options.infer_options` (the
  app cleans them before they reach the task; the task's ``config`` and ``/info/``'s
  ``request_options`` advertise the same list) and to a pixel budget read from the image header
  before anything is decoded (``max_pixels``, HTTP 413 above it);
* the served ``models/model.pt`` is checked against the network before MONAI Label loads it (at
  start-up, and again whenever the file changes): weights that do not fit (saved without
  ``model_mpp_um`` by a bundle before 0.5.0, trained at another resolution, missing, unexpected or
  mis-shaped keys, a missing file) answer HTTP 503 naming the file and what is wrong
  (:class:`ServedModelUnusable`), instead of MONAI Label's bare 500, until the file is replaced.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseqsam.label import INSTALL_HINT, LABELS
from pathseqsam.label.requests.options import RequestRefused, infer_options, options_schema

try:
    from fastapi import HTTPException
    from monailabel.interfaces.tasks.infer_v2 import InferType
    from monailabel.tasks.infer.bundle import BundleInferTask
except ImportError as exc:  # pragma: no cover - exercised in the core environment's test
    raise ImportError(INSTALL_HINT) from exc

from pathseqsam.data.transforms import LoadSequenced
from pathseqsam.engine.writers import SaveSequencePredictiond
from pathseqsam.label.propagation import propagate_both_ways
from pathseqsam.label.requests.prompts import request_prompts
from pathseqsam.label.requests.region import CropRegiond
from pathseqsam.label.sequence_io import DEFAULT_MAX_PIXELS, SequenceItemd, mask_suffix, write_mask
from pathseqsam.label.slides.region import SlideRegiond, is_pyramidal_slide, mask_contours
from pathseqsam.modeling.checkpoint import load_sam2_checkpoint
from pathseqsam.modeling.resolution import MODEL_MPP_KEY, model_mpp_um_of

__all__ = ["PathSeqSAMInferTask", "ServedModelUnusable", "ServedWeights", "served_weights_problem"]

logger = logging.getLogger(__name__)


class ServedModelUnusable(RequestRefused):
    """The served weights do not fit the bundle's network: HTTP 503 until the file is replaced."""

    status_code = 503


def served_weights_problem(network: torch.nn.Module, path: str | os.PathLike) -> str | None:
    """What keeps the weights file ``path`` from loading into ``network`` strictly; None when it loads.

    The file is read safely (``weights_only``) and loaded into a copy of ``network`` by
    :func:`pathseqsam.modeling.checkpoint.load_sam2_checkpoint` (which names missing, unexpected and
    mis-shaped keys); the working resolution the file carries is then compared with the network's.

    Args:
        network: the bundle's network (the template MONAI Label copies; left untouched).
        path: the weights file (``models/model.pt``).

    Returns:
        None, or a message that names the file, what is wrong and what to do.
    """
    try:
        with warnings.catch_warnings():
            # the loader takes model_mpp_um out before loading the copy, so the network's own load hook
            # would warn that it is missing; it is compared below instead
            warnings.filterwarnings("ignore", message=f"the state dict has no '{MODEL_MPP_KEY}'")
            saved_mpp = load_sam2_checkpoint(copy.deepcopy(network), path, allowed_missing=())
    except (OSError, ValueError) as exc:  # not found, unreadable, keys or shapes that do not match
        return f"{exc}; retrain the bundle with its current configs, or serve the configs it was trained with"
    own_mpp = model_mpp_um_of(network)
    if own_mpp is None:  # a network that records no resolution: the key would be unexpected
        return (
            None if saved_mpp is None else f"{path} has '{MODEL_MPP_KEY}' but the bundle's network has none"
        )
    if saved_mpp is None:
        return (
            f"{path} has no '{MODEL_MPP_KEY}': it was saved by a bundle before 0.5.0, whose training used the "
            f"wrong scale, so it cannot be served at this bundle's {own_mpp:g} um/px; retrain it (the bundle's "
            "training command) or point --conf bundle at a bundle whose models/model.pt was trained by "
            "bundle 0.5.0 or later"
        )
    if abs(saved_mpp - own_mpp) > 1e-3 * own_mpp:  # the tolerance of the network's own load check
        return (
            f"{path} was trained at model_mpp_um={saved_mpp:g} um/px but the bundle's network works at "
            f"{own_mpp:g} um/px; set --conf bundle.model_mpp_um {saved_mpp:g}, or serve weights trained at "
            f"{own_mpp:g} um/px"
        )
    return None


class ServedWeights:
    """The verdict on the served weights file, computed again only when the file changes.

    Shared by the automatic and interactive tasks (one network, one file).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int, int] | None = None
        self._problem: str | None = None

    def problem(self, network: torch.nn.Module, path: str | None, expected: str | os.PathLike) -> str | None:
        """None when ``path`` loads into ``network``, else what is wrong (see :func:`served_weights_problem`).

        Args:
            network: the bundle's network.
            path: the weights file MONAI Label would load (None: it found none).
            expected: the file's path, named when there is none.
        """
        if path is None or not os.path.isfile(path):
            return (
                f"{expected} not found: train the bundle (its training command) or point --conf bundle at a "
                "bundle folder with models/model.pt"
            )
        stat = os.stat(path)
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:  # one check per file version, however many requests arrive at once
            if key != self._key:
                self._problem = served_weights_problem(network, path)
                self._key = key
                if self._problem:
                    logger.error("PathSeqSAM: the served weights cannot be used: %s", self._problem)
            return self._problem


class PathSeqSAMInferTask(BundleInferTask):
    """Segment an image sequence (stack or 2D patch) with the PathSeqSAM bundle.

    Args:
        bundle_dir: bundle folder (``configs/``, ``models/model.pt``).
        conf: MONAI Label app settings.
        interactive: False: automatic segmentation of every slice; True: from the request's clicks
            and boxes, propagated through the sequence (a request without any is an error).
        overrides: bundle config overrides (``{id: value}``), applied to ``inference.json``.
        z_spacing_um: slice spacing for stacks without spacing metadata.
        max_pixels: pixels (slices x height x width, from the header) one request may decode.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        conf: Mapping[str, str],
        interactive: bool = False,
        overrides: Mapping[str, Any] | None = None,
        z_spacing_um: float = 1.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.interactive = interactive
        self.overrides = dict(overrides or {})
        self.z_spacing_um = float(z_spacing_um)
        self.max_pixels = int(max_pixels)
        self.options = infer_options(interactive)
        super().__init__(
            str(bundle_dir),
            dict(conf),
            type=InferType.DEEPGROW if interactive else InferType.SEGMENTATION,
            post_filter=[SaveSequencePredictiond],
            add_post_restore=False,
            load_strict=True,
        )
        self.labels = dict(LABELS)
        self.weights = ServedWeights()
        # the options panel: the whitelist's advertised options (not MONAI Label's model_filename list)
        self._config = {name: o.advertised() for name, o in self.options.items() if o.advertise}
        if self.description:
            mode = "clicks/boxes on some slices, propagated both ways" if interactive else "automatic"
            self.description = f"{self.description} [{mode}]"

    def __call__(
        self, request: Mapping[str, Any], callbacks: Any = None
    ) -> tuple[str | None, dict[str, Any]]:
        """Run one request; bad input (a ValueError, e.g. a click outside the image) answers HTTP 400.

        The message (which names the request field or the file) then reaches the client instead of
        MONAI Label's bare "Internal Server Error"; too many pixels answer 413.
        """
        try:
            return super().__call__(request, callbacks)
        except ValueError as exc:
            status = exc.status_code if isinstance(exc, RequestRefused) else 400
            logger.warning("PathSeqSAM request refused (%d): %s", status, exc)
            raise HTTPException(status_code=status, detail=str(exc)) from exc

    def check_weights(self) -> None:
        """Refuse to serve weights that do not fit the network (checked again when the file changes).

        Raises:
            ServedModelUnusable: (503) the message names the file and what is wrong.
        """
        expected = Path(self.bundle_path) / "models" / self.const.model_pytorch()
        problem = self.weights.problem(self.network, self.get_path(), expected)
        if problem:
            raise ServedModelUnusable(problem)

    def _get_network(self, device: Any, data: Any) -> Any:
        # checked here, where every request (automatic, interactive, whole slide) gets the network;
        # MONAI Label would otherwise fail its strict load with a bare 500, or serve the untrained
        # network when the file is gone
        self.check_weights()
        return super()._get_network(device, data)

    def _load_bundle_config(self, path: str, config: str) -> Any:
        parser = super()._load_bundle_config(path, config)
        for key, value in self.overrides.items():
            parser.set(value, key, recursive=True)
        return parser

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["pathology"] = True  # listed by the pathology clients too (2D patches, regions)
        info["request_options"] = options_schema(self.options)
        info["max_pixels"] = self.max_pixels
        return info

    def pre_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        bundle = list(super().pre_transforms(data))
        if data is not None and is_pyramidal_slide(data.get("image", "")):
            # only the requested region of one level is read; the bundle's loader resamples it
            loaders = [t for t in bundle if isinstance(t, LoadSequenced)]
            if len(loaders) != 1 or loaders[0].model_mpp_um is None:
                raise RuntimeError(
                    "the bundle's preprocessing needs one LoadSequenced with model_mpp_um to serve slide regions"
                )
            return [SlideRegiond(loaders[0].model_mpp_um, self.max_pixels), *bundle]
        return [
            SequenceItemd("image", z_spacing_um=self.z_spacing_um, max_pixels=self.max_pixels),
            *bundle,
            CropRegiond("image"),
        ]

    def run_inferer(
        self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"
    ) -> dict[str, Any]:
        network = self._get_network(device, data)
        image = torch.as_tensor(data["image"])[None].to(device)
        positions = torch.as_tensor(data["positions"])[None].to(device)
        _, n, h, w = data["image"].shape
        amp = bool(self.bundle_config.get_parsed_content("amp")) and str(device).startswith("cuda")
        dtype = self.bundle_config.get_parsed_content("amp_kwargs").get("dtype", torch.bfloat16)
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=amp):
            if self.interactive:
                # clicks are in the image's own pixels; the network sees it at model_mpp_um
                native = data.get("original_size")
                nat_h, nat_w = (
                    (int(v) for v in torch.as_tensor(native).reshape(-1, 2)[0])
                    if native is not None
                    else (h, w)
                )
                region = data.get("region")
                if data.get("slide_region") is not None:  # clicks on a slide are in level-0 pixels
                    nat_h, nat_w = region.height, region.width
                prompts, prompted = request_prompts(
                    data, n, nat_h, nat_w, region, scale=(w / nat_w, h / nat_h)
                )
                prompts = {k: v.to(device) for k, v in prompts.items()}
                logits = propagate_both_ways(network, image, positions, prompts)
                data["prompted_slices"] = prompted
            else:
                logits = self.inferer(data)(image, network, positions=positions)
        data[self.output_label_key] = logits[0].float()
        return data

    def writer(
        self, data: dict[str, Any], extension: str | None = None, dtype: Any = None
    ) -> tuple[str, dict[str, Any]]:
        pred = np.asarray(torch.as_tensor(data[self.output_label_key]).detach().cpu())[0] > 0.5  # [N, H, W]
        region = data.get("region")
        suffix = mask_suffix(data["image_path"], pred.shape[0], region is not None)
        with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
            path = f.name
        write_mask(pred.astype(np.uint8) * LABELS["glomerulus"], path, source=data["image_path"])
        result: dict[str, Any] = {
            "mode": "interactive" if self.interactive else "automatic",
            "slices": int(pred.shape[0]),
            "foreground_fraction": [round(float(f), 6) for f in pred.mean(axis=(1, 2))],
            "prompted_slices": list(data.get("prompted_slices", [])),
        }
        slide = data.get("slide_region")
        if slide is not None:  # location in level-0 pixels, size and mask at the requested level
            result.update(
                location=[slide.x, slide.y],
                size=[slide.width, slide.height],
                level=slide.level,
                downsample=slide.downsample,
                mpp_um=round(slide.mpp_um, 6),
                contours=mask_contours(pred[0], slide),
            )
        elif region is not None:
            result.update(location=[region.x, region.y], size=[region.width, region.height])
        logger.info("PathSeqSAM %s: %d slices -> %s", result["mode"], result["slices"], path)
        return path, result
