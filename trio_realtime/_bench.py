"""``python -m trio_realtime bench``: run the benchmark harness (``python -m benchmarks``).

The harness lives in the source checkout's ``benchmarks/`` package, next to this package; it is
not installed with the wheel. This wrapper finds it there and hands it the arguments.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["run_bench"]


def run_bench(argv: Sequence[str] = ()) -> int:
    """Run ``python -m benchmarks`` with ``argv`` (e.g. ``["--smoke"]``); return its exit status.

    Returns 2, with a message on stderr, when the harness is not available (an installed wheel
    without the source checkout).
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "_harness.py").is_file():
        print(
            "trio-realtime bench: the benchmark harness is part of the source checkout "
            "(benchmarks/ next to trio_realtime/), which this installation does not have",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # Imported by name so that type checkers do not follow it into benchmarks/.
    harness = importlib.import_module("benchmarks._harness")
    status: int = harness.main(list(argv))
    return status
