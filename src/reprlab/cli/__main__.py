"""``python -m reprlab.cli``: the same as the ``reprlab`` command."""

import sys

from reprlab.cli import main

sys.exit(main())
