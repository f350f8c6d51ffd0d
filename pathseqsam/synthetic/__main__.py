"""``python -m pathseqsam.synthetic``: write a synthetic serial-section dataset (see the generator module)."""

import sys

from pathseqsam.synthetic.generator import main

sys.exit(main())
