"""What PathSeqSAM changes in the running MONAI Label (FastAPI) server. Needs the ``label`` extra."""

from __future__ import annotations
