#!/usr/bin/env python
"""Run, resume or price the mechanisms study (Eq. 1 and Eq. 2 against SAM2, in resumable cells).

See ``python scripts/study_mechanisms.py --help``, :mod:`pathseqsam.compare.study_cli` and
``docs/experiments/mechanisms/protocol.md``.
"""

from __future__ import annotations

import sys

from pathseqsam.compare.study_cli import main

if __name__ == "__main__":
    sys.exit(main())
