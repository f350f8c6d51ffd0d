"""MONAI Label training task: the datastore's labelled images fine-tune the bundle.

:class:`PathSeqSAMTrainTask` extends MONAI Label's ``BundleTrainTask``, which runs the bundle's own
``configs/train.json`` (``monai.bundle.run``) with ``train#trainer#max_epochs`` from the request and a
``CheckpointLoader`` for the served ``models/model.pt`` prepended to ``train#handlers`` (``network``
and ``network_def`` exist in the config). What it changes:

* the request is cleaned against the typed whitelist (:func:`pathseqsam.label.requests.options.train_options`:
  ``max_epochs``, ``val_split``, ``device``); anything else is dropped, a wrong value is refused;
* a pyramidal slide's label is an ASAP XML file (what MONAI Label's pathology clients save, polygons
  in level-0 pixels): its annotated region is cut into patches at the bundle's working resolution
  (:mod:`pathseqsam.label.slides.label_patches`, one patch read at a time) that train like 2D patches; a
  slide is never read whole, nor as a stack. Every slide label is read before a run starts
  (:meth:`PathSeqSAMTrainTask.check_slide_labels`, called by the app's request check, so ``/train``
  answers 400 naming the label file and the parse error instead of failing in the background);
* the datastore's items reach the config parser only as the path of a datalist FILE that the server
  writes (``datalist`` override), never as override values: the parser evaluates strings starting
  with ``$``, ``@`` or ``%``, and file names (case names) are not code. Each item is a sequence item
  (a stack with its slice positions, or a 2D patch); the bundle repeats training cases
  ``train#windows_per_case`` times itself;
* at least one labelled image is always held out for validation (``val_split`` rounds to at least
  one; a datastore with fewer than two labelled images cannot train);
* checkpoints go to a staging folder (``models/.monailabel_train``), not over the served model: the
  served weights are validated first, and the run's best weights replace ``models/model.pt`` only
  when finished and strictly better on the held-out images (:mod:`pathseqsam.label.publish`);
* cases shorter than the training ``window`` (2D patches) force ``batch_size`` 1 when lengths differ,
  since a batch needs equally long windows;
* ``--conf bundle.<id> <value>`` server settings are passed on as overrides; training runs in one
  process (multi-GPU training: the bundle's ``torchrun`` command, see the bundle README).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pathseqsam.label import INSTALL_HINT

try:
    from fastapi import HTTPException
    from monailabel.tasks.train.bundle import BundleTrainTask
except ImportError as exc:  # pragma: no cover - exercised in the core environment's test
    raise ImportError(INSTALL_HINT) from exc

from pathseqsam.atomic import atomic_write_json
from pathseqsam.config_values import PARSER_PREFIXES
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.label.publish import publish_if_improved
from pathseqsam.label.requests.options import RequestRefused, clean_request, options_schema, train_options
from pathseqsam.label.sequence_io import sequence_item, sequence_length
from pathseqsam.label.slides.label_patches import SlideAnnotations, read_asap_annotations, slide_label_patches
from pathseqsam.label.slides.region import is_pyramidal_slide

__all__ = ["STAGING_DIR", "PathSeqSAMTrainTask", "split_for_validation"]

logger = logging.getLogger(__name__)

STAGING_DIR = ".monailabel_train"
"""Checkpoint folder of MONAI Label training runs, inside the bundle's ``models/``."""

_PARSER_PREFIXES = PARSER_PREFIXES


def split_for_validation(
    datalist: list[dict[str, Any]], val_split: float, group_key: str = "source"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out the last ``round(n * val_split)`` labelled images (at least one, at most ``n - 1``).

    The unit is the labelled image, not the item: a whole slide's label becomes many patch items, all
    with the slide as their ``group_key``, and they go to training or to validation together (patches
    of one slide on both sides would judge the model on tissue it was trained on).

    Args:
        datalist: items, in the datastore's order; items of one image carry the same ``group_key``
            (an item without it is an image of its own).
        val_split: fraction of images held out, in [0, 1).
        group_key: the item key naming the labelled image an item comes from.

    Returns:
        ``(train, validation)``, both non-empty.

    Raises:
        RequestRefused: fewer than two labelled images.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for i, item in enumerate(datalist):
        groups.setdefault(item.get(group_key, ("item", i)), []).append(item)
    n = len(groups)
    if n < 2:
        raise RequestRefused(
            f"training needs at least 2 labelled images (the datastore has {n}): one to train on and "
            "one held out to judge the model before it replaces the served one"
        )
    n_val = min(max(1, round(n * val_split)), n - 1)
    ordered = list(groups.values())
    return [x for g in ordered[: n - n_val] for x in g], [x for g in ordered[n - n_val :] for x in g]


class PathSeqSAMTrainTask(BundleTrainTask):
    """Fine-tune the PathSeqSAM bundle on the datastore's labels.

    Args:
        bundle_dir: bundle folder (``configs/train.json``; the served ``models/model.pt``).
        conf: MONAI Label app settings.
        overrides: bundle config overrides (``{id: value}``) for every training run.
        z_spacing_um: slice spacing for stacks without spacing metadata.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        conf: Mapping[str, str],
        overrides: Mapping[str, Any] | None = None,
        z_spacing_um: float = 1.0,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.z_spacing_um = float(z_spacing_um)
        super().__init__(str(bundle_dir), dict(conf), load_strict=True)
        epochs = self._setting("train#trainer#max_epochs")
        self.options = train_options(epochs if isinstance(epochs, int) else 40)
        self._datalist_path: Path | None = None

    @property
    def staging_dir(self) -> Path:
        return Path(self.bundle_path) / "models" / STAGING_DIR

    def _setting(self, key: str) -> Any:
        """A raw (unparsed) config value, after the server's overrides."""
        return self.overrides[key] if key in self.overrides else self.bundle_config.get(key)

    def config(self) -> dict[str, Any]:
        """The options panel of MONAI Label clients: the whitelist's advertised options only."""
        return {name: o.advertised() for name, o in self.options.items() if o.advertise}

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["request_options"] = options_schema(self.options)
        return info

    def clean(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request reduced to whitelisted values (defaults filled in) plus its ``model``."""
        clean = clean_request(request, self.options, keep=("model",), where="train request")
        defaults = {name: o.default for name, o in self.options.items()}
        return {**defaults, **clean}

    def __call__(self, request: Mapping[str, Any], datastore: Any) -> dict[str, Any]:
        try:
            clean = self.clean(request)
        except RequestRefused as exc:
            logger.warning("PathSeqSAM training refused: %s", exc)
            raise HTTPException(status_code=exc.status_code, detail=str(exc)) from exc
        # fixed by the server, never by the request: the served weights, one process, no tracking
        clean.update(pretrained=True, multi_gpu=False, model_filename="model.pt", run_id="run", tracking="")
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="pathseqsam_train_") as tmp:
            self._datalist_path = Path(tmp) / "datalist.json"
            try:
                super().__call__(clean, datastore)
            except RequestRefused as exc:  # raised while building the datalist (too few or bad labels)
                logger.warning("PathSeqSAM training refused (%d): %s", exc.status_code, exc)
                raise HTTPException(status_code=exc.status_code, detail=str(exc)) from exc
            finally:
                self._datalist_path = None
        served = Path(self.bundle_path) / "models" / self.const.model_pytorch()
        return publish_if_improved(self.staging_dir, served)

    def _fetch_datalist(self, request: Mapping[str, Any], datastore: Any) -> list[dict[str, Any]]:
        items = super()._fetch_datalist(request, datastore)
        if not items:
            raise RequestRefused(
                "the datastore has no labelled images: save at least two labels (final) before training"
            )
        if self._datalist_path is None:
            raise RuntimeError("PathSeqSAMTrainTask._fetch_datalist outside __call__")
        out: list[dict[str, Any]] = []
        for d in items:
            if is_pyramidal_slide(d["image"]):  # one slide, many patches: split together, by slide
                out.extend(
                    {**p, "source": str(d["image"])} for p in self._slide_patches(d["image"], d["label"])
                )
            else:
                try:
                    out.append(sequence_item(d["image"], d["label"], z_spacing_um=self.z_spacing_um))
                except SequenceDataError as exc:  # names the file and what was expected
                    raise RequestRefused(f"a labelled image cannot be used for training: {exc}") from exc
        return out

    def check_slide_labels(self, datastore: Any) -> int:
        """Read the saved label of every labelled slide of ``datastore``, before a run is started.

        Training runs in a background process after ``/train`` has answered; a label it cannot read
        would only fail there. The app calls this from its request check instead.

        Args:
            datastore: MONAI Label datastore (``datalist()``: the labelled images' files).

        Returns:
            The number of slide labels read.

        Raises:
            RequestRefused: (400) a slide label that is not a readable ASAP XML file; the message
                names the label file and the parse error.
        """
        n = 0
        for d in datastore.datalist():
            if d and is_pyramidal_slide(d["image"]):
                self._slide_label(d["image"], d["label"])
                n += 1
        return n

    @staticmethod
    def _slide_label(image: str, label: str) -> SlideAnnotations:
        """A slide's ASAP XML label, read; anything else is refused (400) naming the label file."""
        name = Path(image).name
        if not str(label).lower().endswith(".xml"):
            raise RequestRefused(
                f"{label}: the label of slide {name} must be an ASAP XML file (polygons in level-0 "
                "pixels, as MONAI Label's QuPath and DSA clients save them); a whole slide is never read as "
                "one image"
            )
        try:
            return read_asap_annotations(label)
        except SequenceDataError as exc:  # names the file and the parse error
            raise RequestRefused(f"the label of slide {name} cannot be used for training: {exc}") from exc
        except OSError as exc:
            raise RequestRefused(f"{label}: the label of slide {name} cannot be read ({exc})") from exc

    def _slide_patches(self, image: str, label: str) -> list[dict[str, Any]]:
        """A whole slide's region label (ASAP XML) as patches at the working resolution."""
        self._slide_label(image, label)
        model_mpp_um, image_size = float(self._setting("model_mpp_um")), int(self._setting("image_size"))
        patches = Path(self._datalist_path).parent / "slide_patches" / Path(image).name.split(".")[0]
        try:
            return slide_label_patches(image, label, patches, model_mpp_um, image_size)
        except SequenceDataError as exc:  # a region outside the slide, too many patches
            raise RequestRefused(f"slide {Path(image).name} cannot be used for training: {exc}") from exc

    def _partition_datalist(
        self, datalist: list[dict[str, Any]], request: Mapping[str, Any], shuffle: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        train, val = split_for_validation(datalist, float(request["val_split"]))
        images = len({item.get("source", i) for i, item in enumerate(datalist)})
        logger.info(
            "%d labelled images (%d items): %d items to train on, %d held out for validation "
            "(split by image: a slide's patches stay on one side)",
            images,
            len(datalist),
            len(train),
            len(val),
        )
        return train, val

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if self._datalist_path is None:
            raise RuntimeError("PathSeqSAMTrainTask._update_overrides outside __call__")
        train = overrides.pop(self.const.key_train_dataset_data())
        val = overrides.pop(self.const.key_validate_dataset_data())
        atomic_write_json(self._datalist_path, {"training": train, "validation": val})
        overrides.update(self.overrides)
        # Only server-made values from here on; the datastore's items travel in the file.
        datalist, staging = str(self._datalist_path), str(self.staging_dir)
        for value in (datalist, staging):
            if value.startswith(_PARSER_PREFIXES):
                raise RuntimeError(f"{value}: a server path must not start with {_PARSER_PREFIXES}")
        overrides["datalist"] = datalist
        overrides["ckpt_dir"] = staging
        overrides["resume"] = False
        handlers = copy.deepcopy(overrides[self.const.key_train_handlers()])
        handlers.append(
            {
                "_target_": "pathseqsam.label.publish.ServedModelGate",
                "validator": "@validate#evaluator",
                "record_dir": staging,
            }
        )
        overrides[self.const.key_train_handlers()] = handlers
        window = int(self._setting("window"))
        lengths = {min(sequence_length(item), window) for item in train}
        if len(lengths) > 1:
            logger.info("training windows of different lengths %s: batch_size 1", sorted(lengths))
            overrides["batch_size"] = 1
        return overrides
