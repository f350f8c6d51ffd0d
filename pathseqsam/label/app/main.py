"""MONAI Label app serving the PathSeqSAM bundle (loaded by ``monailabel start_server --app``).

Start it from the repository root (in the environment with the ``label`` extra)::

    monailabel start_server --app pathseqsam/label/app --studies <images folder> --conf models pathseqsam

Tasks, for model name ``pathseqsam`` (the ``models`` setting):

* infer ``pathseqsam``: automatic segmentation of every slice of an image (multi-page TIFF, NIfTI, or
  a 2D patch = a sequence of one slice);
* infer ``pathseqsam_interactive``: foreground/background clicks and/or a box on some slices,
  propagated through the sequence in both directions;
* train ``pathseqsam``: fine-tune the bundle on the datastore's labels.

Settings (``--conf KEY VALUE``): ``bundle`` (bundle folder, default the repository's ``bundle/``),
``bundle.<config id>`` (config overrides), ``z_spacing_um`` (see :mod:`pathseqsam.label.bundle`),
``skip_trainers`` (``true`` serves inference only). MONAI Label creates ``model/``, ``lib/``,
``logs/`` and ``bin/`` in this folder (ignored by git).
"""

from __future__ import annotations

import logging

import monailabel
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

import pathseqsam
from pathseqsam.label import LABELS
from pathseqsam.label.bundle import (
    bundle_overrides,
    inference_setting,
    resolve_bundle_dir,
    z_spacing_setting,
)
from pathseqsam.label.infer import PathSeqSAMInferTask
from pathseqsam.label.train import PathSeqSAMTrainTask

logger = logging.getLogger(__name__)

# MONAI Label's defaults plus the other spellings of TIFF stacks and JPEG patches
EXTENSIONS = [*settings.MONAI_LABEL_DATASTORE_FILE_EXT, "*.tiff", "*.ome.tif", "*.ome.tiff", "*.jpeg"]


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
        kwargs = {"overrides": self.overrides, "z_spacing_um": self.z_spacing_um}
        automatic = PathSeqSAMInferTask(self.bundle_dir, self.conf, interactive=False, **kwargs)
        interactive = PathSeqSAMInferTask(self.bundle_dir, self.conf, interactive=True, **kwargs)
        # one copy of the weights: the same template network and per-device cache
        interactive.network, interactive._networks = automatic.network, automatic._networks
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
