"""Synthetic kidney cortex: serial sections with exact glomerulus masks, for demos, tests and comparisons.

Nothing here reads a user's file; real data lives in :mod:`pathseqsam.data`.

Modules:

* :mod:`~pathseqsam.synthetic.generator`: whole datasets in every layout the readers accept
  (``python -m pathseqsam.synthetic --out DIR``);
* :mod:`~pathseqsam.synthetic.tissue`: the 3D tissue model (compartments, glomeruli) and its stain rendering;
* :mod:`~pathseqsam.synthetic.degrade`: section damage (folds, tears, blur, stain and exposure faults);
* :mod:`~pathseqsam.synthetic.dials`: the mechanisms study's dials (spacing, damage bursts,
  misregistration), each with a null setting and its own random stream;
* :mod:`~pathseqsam.synthetic.contact_sheet`: one picture of a case's sections with their masks.
"""

from __future__ import annotations

from pathseqsam.synthetic.contact_sheet import save_contact_sheet
from pathseqsam.synthetic.generator import (
    SYNTHETIC_CLASS,
    SYNTHETIC_META,
    generate_synthetic_dataset,
    main,
    synthetic_case_names,
)
from pathseqsam.synthetic.tissue import Compartment

__all__ = [
    "SYNTHETIC_CLASS",
    "SYNTHETIC_META",
    "Compartment",
    "generate_synthetic_dataset",
    "main",
    "save_contact_sheet",
    "synthetic_case_names",
]
