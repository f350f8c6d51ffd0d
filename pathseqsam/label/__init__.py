"""MONAI Label integration: serve the PathSeqSAM bundle for automatic and interactive segmentation.

The MONAI Label app lives in ``pathseqsam/label/app`` (its ``main.py`` is what ``monailabel
start_server --app`` loads); it builds the bundle's own ``network_def`` from ``bundle/configs`` and
loads ``bundle/models/model.pt``. Modules:

* :mod:`pathseqsam.label.bundle`: find the bundle, server-level config overrides;
* :mod:`pathseqsam.label.sequence_io`: an image file (stack or 2D patch) as a sequence item, masks
  written back in the image's own format;
* :mod:`pathseqsam.label.requests.region`: the pathology convention of a region (``location``, ``size``) of a
  larger image;
* :mod:`pathseqsam.label.requests.prompts`: MONAI Label clicks and boxes as PathSeqSAM prompts;
* :mod:`pathseqsam.label.propagation`: segment from prompted slices in both directions;
* :mod:`pathseqsam.label.requests.options`: the typed whitelist of request options (checked and advertised);
* :mod:`pathseqsam.label.publish`: a trained model replaces the served one only when it validates
  better on held-out images;
* :mod:`pathseqsam.label.slides.region`: regions of pyramidal slides at any level;
  :mod:`pathseqsam.label.slides.wsi_job`: whole-slide requests through the bundle's slide pipeline (one at
  a time, tile cap, progress, MONAI Label's answer formats); :mod:`pathseqsam.label.slides.label_patches`:
  a slide's ASAP XML label cut into training patches at the working resolution;
* :mod:`pathseqsam.label.infer`, :mod:`pathseqsam.label.train`: the MONAI Label tasks (the infer
  task checks the served weights against the network: 503 naming the file until they fit);
* :mod:`pathseqsam.label.server.patches`: the one entry point that changes MONAI Label's running
  server, behind one check of MONAI Label's version: :mod:`pathseqsam.label.server.guards` (request
  checks before MONAI Label's own endpoint code) and :mod:`pathseqsam.label.server.wsi_route` (its
  whole-slide routes served off the event loop).

Only those last modules (tasks and server) import ``monailabel`` (the ``label`` extra); the rest
runs in the core environment.
"""

from __future__ import annotations

__all__ = ["INSTALL_HINT", "LABELS"]

INSTALL_HINT = (
    "MONAI Label is not installed: it is an optional extra that pins numpy below 2, so install it in "
    "its own environment: python3 -m venv .venv-label && .venv-label/bin/pip install torch==2.14.1 "
    "torchvision==0.29.1 setuptools wheel && SAM2_BUILD_CUDA=0 .venv-label/bin/pip install "
    '--no-build-isolation -e ".[label]"'
)

# MONAI Label label names -> values written into the returned masks.
LABELS = {"glomerulus": 1}
