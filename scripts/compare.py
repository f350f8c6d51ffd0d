#!/usr/bin/env python
"""Train and evaluate PathSeqSAM, its baselines and ablations with one budget; write report.md/.csv and plots.

See ``python scripts/compare.py --help`` and :mod:`pathseqsam.compare.cli`.
"""

from __future__ import annotations

import sys

from pathseqsam.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
