"""Deprecated alias: ``python -m pathseqsam.data.synthetic`` is now ``python -m pathseqsam.synthetic``.

Kept for one release (0.2.x) so existing scripts keep working; removed after that. This is the only
module of :mod:`pathseqsam.data` that imports :mod:`pathseqsam.synthetic` (the layer test allows it).
"""

from __future__ import annotations

import sys
import warnings

from pathseqsam.synthetic.generator import (  # noqa: F401  (re-exported for old imports)
    SYNTHETIC_META,
    generate_synthetic_dataset,
    main,
    synthetic_case_names,
)

_MESSAGE = (
    "pathseqsam.data.synthetic moved to pathseqsam.synthetic; use 'python -m pathseqsam.synthetic' "
    "(this alias goes away after release 0.2)"
)
warnings.warn(_MESSAGE, DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    print(f"warning: {_MESSAGE}", file=sys.stderr)
    sys.exit(main())
