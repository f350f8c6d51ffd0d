"""Whole-slide images: read a pyramidal slide, segment its tissue tiles, stitch, write and score.

One job per module, in the order a slide goes through them:

* :mod:`pathseqsam.wsi.reader`: open a slide (OpenSlide formats, pyramidal or flat TIFF) with its
  micrometres per pixel; regions and the overview at any resolution;
* :mod:`pathseqsam.wsi.tiles`: the tissue mask and the grid of tissue tiles, in the order the
  sequence model reads them;
* :mod:`pathseqsam.wsi.segment`: :class:`~pathseqsam.wsi.segment.SlideSegmenter`, the sequence pass
  of the network over the tiles, and :class:`~pathseqsam.wsi.segment.SlideInferenceSettings`;
* :mod:`pathseqsam.wsi.stitch`: disk-backed blending of overlapping tiles into the slide mask;
* :mod:`pathseqsam.wsi.outputs`: the pyramidal mask, QuPath GeoJSON polygons, the overview picture;
* :mod:`pathseqsam.wsi.metrics`: slide Dice and object F1 in bounded memory;
* :mod:`pathseqsam.wsi.evaluate`: a folder of slides with reference masks, scored;
* :mod:`pathseqsam.wsi.kpis`: the KPIs 2024 Task 2 layout (``<class>/<id>_wsi.tiff`` +
  ``<id>_mask.tiff``).

Layer: beside :mod:`pathseqsam.engine` (it uses ``data``, ``modeling`` and the root utilities, never
the Ignite glue), so a slide job runs without an Ignite engine.
"""

from __future__ import annotations
