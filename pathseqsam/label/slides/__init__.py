"""Slide jobs behind MONAI Label: a region of a pyramidal slide, the whole-slide job, and the
training patches cut from a slide's ASAP XML label. They call :mod:`pathseqsam.wsi`."""

from __future__ import annotations
