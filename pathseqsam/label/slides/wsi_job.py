"""Whole-slide inference for MONAI Label's ``/infer/wsi_v2/{model}``: the bundle's slide pipeline.

MONAI Label's own ``infer_wsi`` cuts a slide into non-overlapping tiles and infers them one by one;
a glomerulus on a tile border comes back as two polygons. Here the request runs the bundle's
whole-slide pipeline instead (:class:`pathseqsam.wsi.segment.SlideSegmenter` with the
``slide_settings`` of ``configs/inference_wsi.json``): tissue tiles as ONE sequence with
distance-aware memory, blended on disk, thresholded and cleaned block by block, one polygon per
object in level-0 pixels. The polygons are then written by MONAI Label's own writers (ASAP XML, DSA JSON: what its QuPath and
DSA plugins import), or as the pipeline's QuPath GeoJSON, or returned as JSON.

:class:`WholeSlideJobs` runs one slide at a time (a second request, or an ``/infer`` while a slide
runs, is answered 503 rather than queued behind a long job), refuses slides whose tissue needs more
than ``max_tiles`` tiles (413, counted on the tissue mask before any tile is read), and reports
progress (tiles done / total, ETA) to the log and to ``/info/``. Memory stays bounded as in the
bundle: region reads only, tiles streamed, the probability map on disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseqsam.label.requests.options import RequestRefused, RequestTooLarge
from pathseqsam.wsi.outputs import GLOMERULUS_CLASS, ring_area
from pathseqsam.wsi.reader import SlideError
from pathseqsam.wsi.segment import SlideInferenceSettings, SlideSegmenter, SlideTooLarge

__all__ = [
    "DEFAULT_MAX_TILES",
    "SLIDE_SETTINGS_ID",
    "WSI_OUTPUTS",
    "NetworkBusy",
    "WholeSlideJobs",
    "annotation_json",
    "kept_features",
    "write_output",
    "wsi_settings",
]

logger = logging.getLogger(__name__)

WSI_OUTPUTS = ("json", "asap", "dsa", "geojson")
"""What ``output=`` may ask for: MONAI Label's three, plus the pipeline's QuPath GeoJSON."""

DEFAULT_MAX_TILES = 20_000
"""Tissue tiles one whole-slide request may need (``--conf max_wsi_tiles``): a 20x kidney biopsy
needs a few hundred at the demo settings; 20,000 is about 1.3 cm^2 of tissue at 256 um tiles."""

SLIDE_SETTINGS_ID = "slide_settings"
"""The node of ``configs/inference_wsi.json`` that holds the slide pipeline's settings."""

# SlideInferenceSettings fields a server may not set through --conf bundle.slide_settings#<field>:
# the network's geometry comes with the served network, the rest is the server's own business
_SERVER_FIELDS = {
    "model_mpp_um": "the served network's own (its weights carry it; --conf bundle.model_mpp_um)",
    "image_size": "the served network's own (--conf bundle.image_size)",
    "max_tiles": "set by --conf max_wsi_tiles",
    "write_images": "the server answers with polygons only",
    "overwrite": "each request writes into a fresh temporary folder",
}

# ids of inference_wsi.json before its settings became one node, that inference.json does not have:
# a server started with one of them would otherwise ignore it without a word
_MOVED_IDS = {
    "tile_um": "tile_um",
    "stride_um": "stride_um",
    "tile_order": "order",
    "per_tile": "per_tile",
    "blend": "blend",
    "threshold": "threshold",
    "max_object_um": "max_object_um",
    "tissue_mpp_um": "tissue_mpp_um",
    "tiles_per_chunk": "chunk",
}


def wsi_settings(bundle_dir: str | Path, overrides: Mapping[str, Any]) -> SlideInferenceSettings:
    """The slide pipeline's settings: ``slide_settings`` of the bundle's ``inference_wsi.json`` + overrides.

    The node is read by MONAI's parser from the bundle's own file; the server's overrides never go
    through the parser: each ``--conf bundle.slide_settings#<field> <value>`` must name a field of
    :class:`~pathseqsam.wsi.segment.SlideInferenceSettings` a server may set, and its (JSON) value
    is checked against the field's type there (a string is never evaluated, never a number).
    ``--conf mpp_um`` (the pixel size of files that carry none) also serves slides without one,
    unless ``slide_settings#mpp_um`` is given.

    Args:
        bundle_dir: bundle folder.
        overrides: the server's ``--conf bundle.<id>`` overrides (:func:`~pathseqsam.label.bundle.bundle_overrides`);
            ids outside ``slide_settings`` are the other configs' business and ignored here.

    Returns:
        The settings without the network's geometry (:class:`~pathseqsam.wsi.segment.SlideSegmenter`
        takes ``model_mpp_um`` and ``image_size`` from the served network).

    Raises:
        FileNotFoundError: the bundle has no ``configs/inference_wsi.json``.
        ValueError: an override of an unknown or server-owned field, a value of the wrong type, or an
            id that moved into ``slide_settings`` (the new one named).
    """
    from monai.bundle import ConfigParser

    path = Path(bundle_dir) / "configs" / "inference_wsi.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: whole-slide inference needs the bundle's inference_wsi.json"
        )
    if SLIDE_SETTINGS_ID in overrides:
        raise ValueError(
            f"--conf bundle.{SLIDE_SETTINGS_ID}: set its fields one at a time, "
            f"e.g. --conf bundle.{SLIDE_SETTINGS_ID}#threshold 0.6"
        )
    moved = sorted(set(overrides) & set(_MOVED_IDS))
    if moved:
        raise ValueError(
            "; ".join(
                f"--conf bundle.{k}: now --conf bundle.{SLIDE_SETTINGS_ID}#{_MOVED_IDS[k]}" for k in moved
            )
            + f" (the slide settings are one node of {path.name})"
        )
    parser = ConfigParser()
    parser.read_config(str(path))
    parser["bundle_root"] = str(bundle_dir)
    node = parser.get_parsed_content(SLIDE_SETTINGS_ID)
    fields = asdict(node) if isinstance(node, SlideInferenceSettings) else dict(node)
    known = {f.name for f in dataclasses.fields(SlideInferenceSettings)}
    prefix = SLIDE_SETTINGS_ID + "#"
    given = {k[len(prefix) :]: v for k, v in overrides.items() if k.startswith(prefix)}
    if "mpp_um" in overrides and "mpp_um" not in given:
        given["mpp_um"] = overrides["mpp_um"]
    for name, value in given.items():
        if name not in known:
            raise ValueError(
                f"--conf bundle.{prefix}{name}: {SlideInferenceSettings.__name__} has no field {name!r} "
                f"(fields: {', '.join(sorted(known - set(_SERVER_FIELDS)))})"
            )
        if name in _SERVER_FIELDS:
            raise ValueError(f"--conf bundle.{prefix}{name}: not a server setting: {_SERVER_FIELDS[name]}")
        fields[name] = value
    try:
        return SlideInferenceSettings(**fields)
    except ValueError as exc:
        given_ids = ", ".join(f"bundle.{prefix}{k}" for k in given)
        raise ValueError(f"--conf {given_ids}: {exc}") from exc


def _contour(feature: Mapping[str, Any]) -> list[list[int]] | None:
    """A feature's outer ring in whole level-0 pixels, each vertex once; None if it degenerates."""
    ring = np.rint(np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)).astype(np.int64)
    keep = np.ones(len(ring), bool)
    keep[1:] = np.any(ring[1:] != ring[:-1], axis=1)
    ring = ring[keep]
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    return ring.tolist() if len(ring) >= 3 else None


def kept_features(
    features: Sequence[Mapping[str, Any]], min_poly_area: float = 0.0
) -> list[tuple[Mapping[str, Any], list[list[int]]]]:
    """``(feature, contour)`` for every GeoJSON feature whose polygon is at least ``min_poly_area``.

    Contours are MONAI Label's: ``[[x, y], ...]`` in whole level-0 pixels, the ring's closing point
    dropped (its writers list each vertex once) and vertices repeated after rounding merged.

    Args:
        features: the pipeline's GeoJSON features (outer rings in level-0 pixels).
        min_poly_area: drop polygons smaller than this many square level-0 pixels (the request's
            ``min_poly_area``, as MONAI Label's contour finder does).

    Returns:
        The kept pairs, in the features' order.
    """
    out = []
    for feature in features:
        contour = _contour(feature)
        if contour is not None and ring_area(np.asarray(contour, dtype=np.float64)) >= min_poly_area:
            out.append((feature, contour))
    return out


class NetworkBusy(RequestRefused):
    """The network is serving a whole slide: HTTP 503 (try again later)."""

    status_code = 503


class WholeSlideJobs:
    """Runs whole-slide requests one at a time and keeps their progress for ``/info/``.

    Args:
        settings: slide pipeline settings (:func:`wsi_settings`).
        max_tiles: tissue tiles one slide may need; more is refused with 413.
    """

    def __init__(self, settings: SlideInferenceSettings, max_tiles: int = DEFAULT_MAX_TILES) -> None:
        self.settings = settings
        self.max_tiles = int(max_tiles)
        self.lock = threading.Lock()
        self._state: dict[str, Any] = {"running": False}

    def status(self) -> dict[str, Any]:
        """A copy of the current job's state: image, tiles done / total, elapsed and ETA seconds."""
        state = dict(self._state)
        t0 = state.pop("_t0", None)
        if state.get("running") and t0 is not None:
            elapsed = time.perf_counter() - t0
            done, total = state["tiles_done"], state["tiles_total"]
            state["elapsed_s"] = round(elapsed, 1)
            state["eta_s"] = round(elapsed / done * (total - done), 1) if done and total else None
        return state

    def busy_message(self) -> str:
        """Why the network cannot take a request now (a 503's detail)."""
        state = self.status()
        if not state.get("running"):  # a region or stack request holds it (for seconds)
            return "the network is busy with another inference request; try again when it has finished"
        where = f"tiles {state.get('tiles_done', 0)}/{state.get('tiles_total', '?')}"
        return (
            f"the network is busy with a whole-slide inference of {state.get('image')!r} ({where}); "
            "try again when it has finished"
        )

    def run(
        self,
        get_network: Callable[[], torch.nn.Module],
        device: Any,
        slide_path: str | Path,
        image_id: str,
        request: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Segment the slide (or the request's region of it); one job at a time.

        Args:
            get_network: returns the served network (on ``device``, weights loaded); called once the
                job holds the network.
            device: torch device.
            slide_path: the datastore's slide file.
            image_id: its datastore id (for messages and the answer).
            request: the cleaned request (:func:`pathseqsam.label.requests.options.wsi_options`).

        Returns:
            ``{"features": GeoJSON features, "summary": the pipeline's summary, "region": [x, y, w, h]
            or None}``.

        Raises:
            NetworkBusy: another whole slide is running (503); RequestTooLarge: too many tissue tiles
                (413); RequestRefused: a region outside the slide, an unreadable slide (400).
        """
        if not self.lock.acquire(blocking=False):
            raise NetworkBusy(self.busy_message())
        try:
            self._state = {
                "running": True,
                "image": image_id,
                "tiles_done": 0,
                "tiles_total": None,
                "_t0": time.perf_counter(),
            }
            return self._run(get_network(), device, Path(slide_path), image_id, request)
        finally:
            self._state = {"running": False}
            self.lock.release()

    def _run(
        self,
        network: torch.nn.Module,
        device: Any,
        slide_path: Path,
        image_id: str,
        request: Mapping[str, Any],
    ) -> dict[str, Any]:
        location = list(request.get("location") or [0, 0])
        size = list(request.get("size") or [0, 0])
        region = None if sum(location) + sum(size) == 0 else [*location, *size]
        if region is not None and (size[0] <= 0 or size[1] <= 0):
            raise RequestRefused(
                f"request 'size' = {size}: expected a positive [width, height] in level-0 pixels, "
                "or 'location' and 'size' both [0, 0] for the whole slide"
            )
        t0 = time.perf_counter()
        last = [t0]

        def progress(done: int, total: int) -> None:
            self._state.update(tiles_done=done, tiles_total=total)
            now = time.perf_counter()
            if done == 1 or done == total or now - last[0] >= 5.0:
                rate = done / max(now - t0, 1e-9)
                logger.info(
                    "whole-slide inference of %s: tiles %d/%d, %.2f tiles/s, ETA %.0f s",
                    image_id,
                    done,
                    total,
                    rate,
                    (total - done) / rate,
                )
                last[0] = now

        with tempfile.TemporaryDirectory(prefix="pathseqsam_wsi_") as tmp:
            segmenter = SlideSegmenter(
                network,
                tmp,
                device=device,
                amp=str(device).startswith("cuda"),
                shard=False,
                settings=self.settings,
                max_tiles=self.max_tiles,
                write_images=False,  # the answer is the polygons: no mask.tif, no thumbnail
            )
            try:
                summary = segmenter.segment(slide_path, region=region, progress=progress)
            except SlideTooLarge as exc:
                raise RequestTooLarge(f"{exc} (--conf max_wsi_tiles)") from exc
            except SlideError as exc:
                raise RequestRefused(f"image {image_id!r}: {exc}") from exc
            folder = Path(tmp) / summary["name"]
            features = json.loads((folder / "glomeruli.geojson").read_text())["features"]
        logger.info(
            "whole-slide inference of %s: %d glomeruli, %d tiles, %.1f s",
            image_id,
            len(features),
            summary["tiles"],
            time.perf_counter() - t0,
        )
        return {"features": features, "summary": summary, "region": region}


def annotation_json(
    result: Mapping[str, Any], model: str, description: str, kept: Sequence[tuple[Any, list[list[int]]]]
) -> dict[str, Any]:
    """MONAI Label's WSI answer (what its ASAP/DSA writers read) from :meth:`WholeSlideJobs.run`'s result.

    Args:
        result: ``{"features", "summary", "region"}``.
        model: model name.
        description: the task's description.
        kept: the answer's polygons, :func:`kept_features` of ``result["features"]`` (the request's
            ``min_poly_area`` applied once, for this answer and :func:`write_output`'s file).

    Returns:
        ``{"name", "description", "model", "location", "size", "count", "annotations": [{"annotation":
        {"labels", "elements": [{"label", "contours"}]}}], "summary", "latencies"}``.
    """
    region, summary = result["region"], result["summary"]
    location, size = (
        (region[:2], region[2:]) if region else ([0, 0], [summary["width_px"], summary["height_px"]])
    )
    contours = [contour for _, contour in kept]
    total = float(summary["timings_s"].get("total_s", 0.0))
    return {
        "name": f"MONAILabel Annotations - {model} for {[*location, *size]}",
        "description": description,
        "model": model,
        "location": location,
        "size": size,
        "count": len(contours),
        "annotations": [
            {
                "annotation": {
                    "labels": {"glomerulus": list(GLOMERULUS_CLASS["color"])},
                    "elements": [{"label": "glomerulus", "contours": contours}],
                },
                "latencies": {"total": total, "pre": 0.0, "infer": total, "post": 0.0},
            }
        ],
        "summary": {
            k: summary[k]
            for k in ("tiles", "count", "tissue_mm2", "mpp_um", "read_level", "timings_s", "tiles_per_s")
        },
        "latencies": {"total": round(total, 2)},
    }


def write_output(
    answer: Mapping[str, Any], kept: Sequence[tuple[Mapping[str, Any], Any]], output: str
) -> str | None:
    """The answer file for ``output`` (a temporary file the endpoint deletes after sending), or None for json.

    ``asap`` and ``dsa`` are MONAI Label's own writers (``monailabel.utils.others.pathology``) on
    ``answer``; ``geojson`` is the pipeline's QuPath GeoJSON (level-0 pixels) of the ``kept`` features
    (:func:`kept_features`, the same polygons as ``answer``'s).
    """
    if output == "json":
        return None
    if output == "asap":
        from monailabel.utils.others.pathology import create_asap_annotations_xml

        return create_asap_annotations_xml(answer, "INFO")[0]
    if output == "dsa":
        from monailabel.utils.others.pathology import create_dsa_annotations_json

        return create_dsa_annotations_json(answer, "INFO")[0]
    if output == "geojson":
        chosen = [feature for feature, _ in kept]
        with tempfile.NamedTemporaryFile("w", suffix=".geojson", delete=False) as f:
            json.dump({"type": "FeatureCollection", "features": chosen}, f)
            return f.name
    raise RequestRefused(f"request 'output' = {output!r}: expected one of {list(WSI_OUTPUTS)}")
