"""``python -m pathseqsam.synthetic``: write a synthetic serial-section dataset (see the generator module);
``python -m pathseqsam.synthetic slides --out DIR``: the bundle's demo whole slides (see the slides module)."""

import sys

if sys.argv[1:2] == ["slides"]:
    from pathseqsam.synthetic.slides import main as slides_main

    sys.exit(slides_main(sys.argv[2:]))

from pathseqsam.synthetic.generator import main

sys.exit(main())
