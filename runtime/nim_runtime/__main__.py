"""``python -m nim_runtime``: the same as the ``nim-runtime`` console script."""

import sys

from nim_runtime.cli import main

sys.exit(main())
