"""``python -m trio_realtime.server [--host H] [--port N] ...``: same as ``python -m trio_realtime serve``."""

import sys

from ._cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))
