"""The sans-IO core must stay sans-IO: no event loop, sockets, clocks or global randomness.

Two independent checks, because each one alone has a blind spot:

1. **Static (ast).** Every ``.py`` under ``trio_realtime/protocol`` is parsed and each
   ``import X`` / ``from X import ...`` is checked against a ban list (trio, trio_websocket,
   wsproto, socket, time, random, asyncio, anyio, threading, select, ssl, importlib). This
   catches a banned import even in code that is never executed at import time (inside a
   function, under ``TYPE_CHECKING``...). Relative imports that leave the package
   (``from .. import x``) are only allowed for the modules in ``_ALLOWED_PARENT_MODULES``, and
   those modules are scanned with the same rules, so the core cannot reach I/O through a
   sibling of the package.

2. **Dynamic (subprocess).** A fresh interpreter imports ``trio_realtime.protocol`` and we
   look at ``sys.modules``. The real ``trio_realtime/__init__.py`` is *not* executed: it
   will import the Trio client, which would load trio no matter how clean the core is. The
   subprocess instead registers a stub ``trio_realtime`` package whose ``__path__`` is the
   source directory, so only ``protocol/`` and what it imports get loaded. This catches
   imports hidden from the ast (``__import__``, third-party dependencies such as attrs that
   might pull in an event loop). The dynamic ban list is narrower than the static one:
   ``time`` is loaded by the interpreter at startup, and ``threading``/``importlib`` are
   loaded by the stdlib itself (``inspect``, ``weakref``...), so only modules that mean real
   I/O or a foreign event loop are banned there.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trio_realtime.protocol

PROTOCOL_DIR = Path(trio_realtime.protocol.__file__).resolve().parent
PACKAGE_DIR = PROTOCOL_DIR.parent

BANNED = frozenset(
    {
        "trio",
        "trio_websocket",
        "wsproto",
        "socket",
        "time",
        "random",
        "asyncio",
        "anyio",
        "threading",
        "select",
        "selectors",
        "ssl",
        "importlib",
    }
)

#: Modules of the parent package the core may import (relative ``from .. import``).
_ALLOWED_PARENT_MODULES = frozenset({"_errors", "_util"})

#: Loaded in a fresh interpreter by ``import trio_realtime.protocol`` = a real problem.
DYNAMIC_BANNED = frozenset(
    {
        "trio",
        "trio_websocket",
        "wsproto",
        "socket",
        "asyncio",
        "anyio",
        "select",
        "selectors",
        "ssl",
        "random",
        "outcome",
        "sniffio",
    }
)


def _protocol_files() -> list[Path]:
    files = sorted(PROTOCOL_DIR.rglob("*.py"))
    assert files, f"no sources found under {PROTOCOL_DIR}"
    return files


def banned_imports(source: str, filename: str, *, inside_protocol: bool) -> list[str]:
    """Return a description of every banned import in ``source``."""
    problems: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED:
                    problems.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                if module.split(".")[0] in BANNED:
                    problems.append(f"{filename}:{node.lineno}: from {module} import ...")
            elif inside_protocol and node.level >= 2:
                # Leaves trio_realtime.protocol: only whitelisted siblings.
                if node.level > 2:
                    problems.append(f"{filename}:{node.lineno}: relative import above trio_realtime")
                    continue
                targets = [module.split(".")[0]] if module else [a.name for a in node.names]
                for target in targets:
                    if target not in _ALLOWED_PARENT_MODULES:
                        problems.append(
                            f"{filename}:{node.lineno}: from {'.' * node.level}{module} import "
                            f"{target}: trio_realtime.{target} is outside the sans-IO core"
                        )
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "__import__":
                problems.append(f"{filename}:{node.lineno}: dynamic __import__()")
    return problems


@pytest.mark.parametrize("path", _protocol_files(), ids=lambda p: p.name)
def test_protocol_module_imports_nothing_banned(path: Path) -> None:
    assert banned_imports(path.read_text("utf-8"), path.name, inside_protocol=True) == []


@pytest.mark.parametrize("name", sorted(_ALLOWED_PARENT_MODULES))
def test_allowed_parent_modules_import_nothing_banned(name: str) -> None:
    path = PACKAGE_DIR / f"{name}.py"
    assert banned_imports(path.read_text("utf-8"), path.name, inside_protocol=False) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import trio", "import trio"),
        ("import trio.lowlevel as tl", "import trio.lowlevel"),
        ("import json, socket", "import socket"),
        ("from time import monotonic", "from time import"),
        ("from random import Random", "from random import"),
        ("from importlib import import_module", "from importlib import"),
        ("from asyncio.events import get_event_loop", "from asyncio.events import"),
        ("def f():\n    import ssl", "import ssl"),
        ("if TYPE_CHECKING:\n    from wsproto import WSConnection", "from wsproto import"),
        ("from .._client import RealtimeClient", "outside the sans-IO core"),
        ("from .. import _transport", "outside the sans-IO core"),
        ("from ... import x", "above trio_realtime"),
        ("m = __import__('trio')", "dynamic __import__"),
    ],
)
def test_checker_detects_banned_import(source: str, expected: str) -> None:
    """The checker itself can fail: each snippet must be reported."""
    problems = banned_imports(source, "snippet.py", inside_protocol=True)
    assert len(problems) == 1
    assert expected in problems[0]


@pytest.mark.parametrize(
    "source",
    [
        "import json",
        "from .._errors import LocalProtocolError",
        "from ._messages import Message",
        "import attrs",
        "from collections.abc import Mapping",
        "import timeit_is_not_time",
    ],
)
def test_checker_accepts_clean_import(source: str) -> None:
    assert banned_imports(source, "snippet.py", inside_protocol=True) == []


_SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    pkg = types.ModuleType("trio_realtime")
    pkg.__path__ = [sys.argv[1]]
    sys.modules["trio_realtime"] = pkg
    before = set(sys.modules)
    import trio_realtime.protocol
    print(json.dumps(sorted(set(sys.modules) - before)))
    """
)


def test_importing_protocol_loads_no_io_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_SCRIPT, str(PACKAGE_DIR)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(result.stdout)
    # The stub really did import the core (and not some installed copy elsewhere).
    assert "trio_realtime.protocol._connection" in loaded
    assert "trio_realtime._client" not in loaded
    offenders = sorted(m for m in loaded if m.split(".")[0] in DYNAMIC_BANNED)
    assert offenders == []
