"""Inference outputs: per-slice mask and overlay PNGs, stack files for stack inputs, a summary JSON."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from pathseqsam.atomic import atomic_write_json
from pathseqsam.data.stacks import is_nifti_path, is_tiff_path, save_stack
from pathseqsam.engine.output_names import UniqueNames
from pathseqsam.visualize import denormalise, overlay, save_rgb

__all__ = ["SaveSequencePredictiond"]


def _stem(name: str) -> str:
    name = Path(name).name
    for suffix in (".nii.gz", ".ome.tif", ".ome.tiff", ".tiff", ".tif", ".jpeg", ".jpg", ".png", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class SaveSequencePredictiond(MapTransform):
    """Write a decollated sequence's binary prediction ``[1, N, H, W]`` to disk (a postprocessing step).

    The prediction is expected on the input's own pixel grid (after ``RestoreInputGridd``). For case
    ``c`` and slice ``s`` (file name without extension): ``<output_dir>/<c>/<s>_mask.png`` (0/255) and
    ``<s>_overlay.png`` (contours on the image; ground truth in yellow when the item has a label). When
    the input was one stack file (item key ``image_source`` ending in ``.tif``/``.tiff``/``.nii``/
    ``.nii.gz``), the masks are also written as one stack of the same kind, ``<c>/<c>_mask.ome.tif``
    (with the input's pixel size) or ``<c>/<c>_mask.nii.gz`` (with the input's affine).
    ``<output_dir>/summary.json`` holds ``model_mpp_um``, every case written so far (input, pixel
    size, slices with foreground fraction, object count and files) and the ``skipped`` inputs
    (:meth:`record_skipped`). All files are written atomically.

    Case and slice names come from the data, so they are made safe file names first
    (:func:`~pathseqsam.engine.output_names.safe_component`: ``../x`` cannot leave ``output_dir``),
    and a name already written by this writer gets a suffix (``c_2``; within a case ``s_2``) instead of
    replacing the earlier output; the summary then lists the case under that name, with its
    ``case`` as given.

    Args:
        keys: the prediction key.
        output_dir: destination folder.
        image_key: normalised image key (for overlays).
        label_key: ground-truth key (optional, drawn when present).
        overlays: also write overlay PNGs.
        model_mpp_um: the network's working resolution, recorded in the summary.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "outputs/inference",
        image_key: str = "image",
        label_key: str = "label",
        overlays: bool = True,
        model_mpp_um: float | None = None,
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.image_key, self.label_key, self.overlays = image_key, label_key, overlays
        self.model_mpp_um = model_mpp_um
        self.summary: dict[str, Any] = {}
        self._cases = UniqueNames("case")
        self.skipped: list[dict[str, str]] = []

    def record_skipped(self, skipped: list[dict[str, str]]) -> None:
        """Set the inputs a folder scan left out (``{"file", "reason"}``) and write the summary now.

        Args:
            skipped: the scan's list (see :func:`pathseqsam.engine.inference_inputs`).
        """
        self.skipped = [dict(s) for s in skipped]
        self._write_summary()

    def _write_summary(self) -> None:
        atomic_write_json(
            self.output_dir / "summary.json",
            {"model_mpp_um": self.model_mpp_um, "cases": self.summary, "skipped": self.skipped},
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._write(d, key)
        return d

    def _write(self, d: dict, key: Hashable) -> None:
        pred = np.asarray(torch.as_tensor(d[key]).detach().cpu())[0] > 0.5  # [N, H, W]
        n = pred.shape[0]
        given = str(d.get("case", "sequence"))
        names = list(d.get("slice_names") or [f"slice{i:04d}" for i in range(n)])
        if len(names) != n:
            raise ValueError(f"case {given!r}: {len(names)} slice names for {n} predicted slices")
        case = self._cases(given, fallback="sequence")
        stems = UniqueNames(f"case {case!r} slice")
        case_dir = self.output_dir / case
        case_dir.mkdir(parents=True, exist_ok=True)
        image = d.get(self.image_key)
        label = d.get(self.label_key)
        mpp = d.get("mpp_um")
        mpp = None if mpp is None else float(torch.as_tensor(mpp))
        slices = []
        for t, name in enumerate(names):
            stem = stems(_stem(name), fallback=f"slice{t:04d}")
            mask_path = save_rgb(pred[t].astype(np.uint8) * 255, case_dir / f"{stem}_mask.png")
            entry = {
                "slice": name,
                "mask": str(mask_path.relative_to(self.output_dir)),
                "foreground_fraction": float(pred[t].mean()),
                "objects": int(ndimage.label(pred[t])[1]),
            }
            if self.overlays and image is not None:
                truth = None if label is None else np.asarray(torch.as_tensor(label)[0, t].cpu()) > 0.5
                ov = overlay(denormalise(torch.as_tensor(image)[:, t]), pred[t], truth)
                entry["overlay"] = str(
                    save_rgb(ov, case_dir / f"{stem}_overlay.png").relative_to(self.output_dir)
                )
            slices.append(entry)
        source = d.get("image_source") or ""
        record: dict[str, Any] = {
            "case": given,
            "input": str(
                d.get("input") or (source if isinstance(source, str) else Path(str(source[0])).parent)
            ),
            "mpp_um": mpp,
            "size": [int(v) for v in pred.shape[1:]],
            "slices": slices,
        }
        source = str(source) if isinstance(source, (str, os.PathLike)) else ""
        if is_tiff_path(source) or is_nifti_path(source):
            record["stack"] = str(
                self._write_stack(pred, case_dir, case, source, mpp).relative_to(self.output_dir)
            )
        self.summary[case] = record
        self._write_summary()

    @staticmethod
    def _write_stack(pred: np.ndarray, case_dir: Path, case: str, source: str, mpp: float | None) -> Path:
        masks = pred.astype(np.uint8) * 255
        if is_nifti_path(source):
            return save_stack(case_dir / f"{case}_mask.nii.gz", masks, affine_like=source)
        return save_stack(case_dir / f"{case}_mask.ome.tif", masks, xy_spacing_um=mpp)
