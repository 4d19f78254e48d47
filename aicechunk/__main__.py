"""``python -m aicechunk``: the command line."""

import sys

from aicechunk.cli import main

sys.exit(main())
