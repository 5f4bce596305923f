"""``python -m reprlab`` (and ``torchrun -m reprlab``): the same as the ``reprlab`` command."""

import sys

from reprlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
