"""The machine/version header of every run."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ._common import ROOT

if TYPE_CHECKING:
    from pathlib import Path

PACKAGES = ("trio_realtime", "trio", "wsproto", "trio-websocket", "websockets", "realtime", "attrs")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _realtime_js_version(js_modules: Path | None) -> str | None:
    if js_modules is None:
        return None
    try:
        package = js_modules / "node_modules" / "@supabase" / "realtime-js" / "package.json"
        version: str = json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


def header(node: str | None, js_modules: Path | None, argv: list[str]) -> dict[str, Any]:
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions.update({name: _version(name) for name in PACKAGES})
    versions["node"] = _run([node, "--version"]) if node else None
    versions["realtime-js"] = _realtime_js_version(js_modules)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m benchmarks " + " ".join(argv),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": _loadavg(),
        },
        "versions": versions,
        "git": {
            "commit": commit,
            "modified_files": len(dirty.splitlines()) if dirty else 0,
        },
        "executable": sys.executable,
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def loadavg() -> list[float] | None:
    return _loadavg()
