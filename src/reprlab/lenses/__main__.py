"""``python -m reprlab.lenses ...`` = ``reprlab lens ...`` (for ``torchrun -m``)."""

import sys

from reprlab.cli import main

sys.exit(main(["lens", *sys.argv[1:]]))
