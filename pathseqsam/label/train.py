"""MONAI Label training task: the datastore's labelled images fine-tune the bundle.

:class:`PathSeqSAMTrainTask` extends MONAI Label's ``BundleTrainTask``, which runs the bundle's own
``configs/train.json`` (``monai.bundle.run``) with ``train#dataset#data`` and ``validate#dataset#data``
set to the datastore's images and labels, ``train#trainer#max_epochs`` from the request, and a
``CheckpointLoader`` for ``models/model.pt`` prepended to ``train#handlers`` (``network`` and
``network_def`` exist in the config). The bundle's validation keeps the best model in
``models/model.pt``, which the inference tasks reload. What it adds:

* each datastore item becomes a sequence item (a stack with its slice positions, or a 2D patch);
* every training case is repeated ``train#windows_per_case`` times, as in the bundle's own datalist;
* a split with no validation items validates on the training items (so ``model.pt`` is written);
* cases shorter than the training ``window`` (2D patches) force ``batch_size`` 1 when lengths differ,
  since a batch needs equally long windows;
* ``--conf bundle.<id> <value>`` server settings are passed on as overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pathseqsam.label import INSTALL_HINT

try:
    from monailabel.tasks.train.bundle import BundleTrainTask
except ImportError as exc:  # pragma: no cover - exercised in the core environment's test
    raise ImportError(INSTALL_HINT) from exc

from pathseqsam.label.sequence_io import sequence_item, sequence_length

__all__ = ["PathSeqSAMTrainTask"]

logger = logging.getLogger(__name__)


class PathSeqSAMTrainTask(BundleTrainTask):
    """Fine-tune the PathSeqSAM bundle on the datastore's labels.

    Args:
        bundle_dir: bundle folder (``configs/train.json``; checkpoints go to ``models/``).
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

    def _setting(self, key: str) -> Any:
        """A raw (unparsed) config value, after the server's overrides."""
        return self.overrides[key] if key in self.overrides else self.bundle_config.get(key)

    def _fetch_datalist(self, request: Mapping[str, Any], datastore: Any) -> list[dict[str, Any]]:
        items = super()._fetch_datalist(request, datastore)
        if not items:
            raise ValueError(
                "the datastore has no labelled images: save at least one label (final) before training"
            )
        return [sequence_item(d["image"], d["label"], z_spacing_um=self.z_spacing_um) for d in items]

    def _partition_datalist(
        self, datalist: list[dict[str, Any]], request: Mapping[str, Any], shuffle: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        train, val = super()._partition_datalist(datalist, request, shuffle)
        if not val:
            logger.warning(
                "no validation items (%d labelled, val_split %s): validating on the training items",
                len(datalist),
                request.get("val_split"),
            )
            val = list(train)
        return train, val

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update(self.overrides)
        train = overrides[self.const.key_train_dataset_data()]
        window = int(self._setting("window"))
        lengths = {min(sequence_length(item), window) for item in train}
        if len(lengths) > 1:
            logger.info("training windows of different lengths %s: batch_size 1", sorted(lengths))
            overrides["batch_size"] = 1
        overrides[self.const.key_train_dataset_data()] = train * int(self._setting("train#windows_per_case"))
        return overrides
