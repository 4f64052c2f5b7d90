"""The benchmark harness works end to end: ``python -m benchmarks --smoke`` (no speed checks).

Runs every scenario for a fraction of a second in a subprocess, as CI and a user would, and
checks that the JSON and Markdown results were written, that every scenario (1-8) reported,
and that nothing in them failed. Readers that cannot run here (an official client that is not
installed, a feature not built yet) report ``n/a`` or ``not available yet``, which is fine; our
own client's rows in scenarios 6 and 7 must be measured (scenario 7 needs PostgreSQL and
wal2json, like the postgres tests: a missing one fails, never skips).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Generous: the smoke takes ~15 s on 2 cores; this only catches a hang.
TIMEOUT = 150


def _errors(node: Any, path: str = "") -> list[str]:
    """Every ``{"status": "error", ...}`` anywhere in the results, with where it is."""
    found = []
    if isinstance(node, dict):
        if node.get("status") == "error":
            found.append(f"{path}: {node.get('reason')}")
        for key, value in node.items():
            found += _errors(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _errors(value, f"{path}[{i}]")
    return found


def test_smoke_run_writes_results_for_every_scenario(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    runs = list(tmp_path.glob("run-*.json"))
    assert len(runs) == 1, sorted(p.name for p in tmp_path.iterdir())
    run = json.loads(runs[0].read_text())
    scenarios = run["scenarios"]
    assert sorted(r["number"] for r in scenarios.values()) == list(range(1, 9))
    for name, result in scenarios.items():
        assert result["status"] in ("ok", "not available yet"), (name, result)
    groups, pg = scenarios["groups"], scenarios["postgres_changes"]
    assert groups["status"] == "ok", groups
    assert groups["switch"]["status"] == "ok", groups["switch"]
    assert [r["subscribers"] for r in groups["rows"] if r["status"] == "ok"] == [1, 2], groups["rows"]
    assert pg["status"] == "ok", pg
    ours = [r for r in pg["rows"] if r["reader"] == "trio_realtime"]
    assert [r["status"] for r in ours] == ["ok"], ours
    assert ours[0]["lost"] == 0, ours
    assert _errors(scenarios) == []

    header = run["header"]
    for key in ("python", "trio", "wsproto", "websockets"):
        assert header["versions"][key]
    assert header["machine"]["cores"] >= 1
    assert run["targets"], "the targets table is empty"

    md = (tmp_path / "latest.md").read_text()
    assert "SMOKE RUN" in md
    assert "## Targets (issue 6)" in md
    for result in scenarios.values():
        assert f"## {result['title']}" in md
