"""``python -m benchmarks``: run the harness (``--help`` lists the flags)."""

import sys

from ._harness import main

sys.exit(main())
