#!/usr/bin/env python
"""Run, resume or report the whole-slide sequence benchmark (slide-coordinate memory against per-tile).

See ``python scripts/benchmark_wsi_sequence.py --help``, :mod:`pathseqsam.compare.wsi_sequence_cli`
and ``docs/experiments/wsi_sequence/protocol.md``.
"""

from __future__ import annotations

import sys

from pathseqsam.compare.wsi_sequence_cli import main

if __name__ == "__main__":
    sys.exit(main())
