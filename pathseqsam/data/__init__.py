"""Slice-sequence data: readers (KPIs, TIFF/NIfTI stacks), transforms and the synthetic generator."""
