"""Render one run as Markdown (``latest.md``) and PNG charts."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _targets, s1_throughput, s2_latency
from ._common import status_cell

if TYPE_CHECKING:
    from pathlib import Path


def _scenario_module(name: str) -> Any:
    from ._harness import SCENARIOS

    for _, module, *_ in SCENARIOS.values():
        if module is not None and module.NAME == name:
            return module
    return None


def markdown(run: dict[str, Any], json_name: str, charts: list[str], chart_note: str) -> str:
    h = run["header"]
    v = h["versions"]
    s = h["settings"]
    lines = [
        "# trio_realtime benchmarks",
        "",
    ]
    if s["smoke"]:
        lines += ["> **SMOKE RUN** — a fraction of a second per scenario, to prove the harness works. "
                  "The numbers mean nothing.", ""]
    lines += [
        f"* **When / what**: {h['date']}, commit `{(h['git']['commit'] or 'unknown')[:12]}`"
        + (f" + {h['git']['modified_files']} modified files" if h["git"]["modified_files"] else ""),
        f"* **Machine**: {h['machine']['cpu']}, {h['machine']['cores']} cores, {h['machine']['platform']}; "
        f"load average {h['machine']['loadavg_start']} at start, {h['machine']['loadavg_end']} at end",
        f"* **Versions**: Python {v['python']}, trio {v['trio']}, wsproto {v['wsproto']}, "
        f"trio-websocket {v['trio-websocket']}, websockets {v['websockets']}, "
        f"realtime (PyPI) {v['realtime']}, "
        f"Node {v['node']}, realtime-js {v['realtime-js']}",
        f"* **Settings**: {s['duration']:g} s measured per run after {s['warmup']:g} s warm-up, "
        f"{s['reps']} repetition(s), payload sizes {', '.join(map(str, s['sizes']))} B; loopback only",
        f"* **Reproduce**: `{h['command'].strip()}` ({h['elapsed_seconds']:g} s); raw results: `{json_name}`",
        "",
        "## Targets (issue 6)",
        "",
        *_targets.markdown(run["targets"]),
        "",
        "Margin: the distance from the goal relative to the goal; positive is headroom, negative is "
        "how far short of (≥ goals) or over (≤ goals) it the measurement is.",
        "",
    ]
    for name, result in run["scenarios"].items():
        lines += [f"## {result['title']}", ""]
        module = _scenario_module(name)
        if result.get("status") != "ok" or module is None:
            lines += [f"**{status_cell(result)}**", ""]
            continue
        description = _description(module)
        if description:
            lines += [description, ""]
        lines += [*module.markdown(result), ""]
    lines += ["## Charts", ""]
    lines += [f"![{c}]({c})" for c in charts] or [chart_note]
    lines.append("")
    return "\n".join(lines)


def _description(module: Any) -> str:
    """The second paragraph of a scenario module's docstring, as one Markdown line."""
    paragraphs = (module.__doc__ or "").strip().split("\n\n")
    if len(paragraphs) < 2:
        return ""
    return " ".join(paragraphs[1].split()).replace("``", "`")


def charts(run: dict[str, Any], out: Path) -> tuple[list[str], str]:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return [], "charts skipped: matplotlib is not installed (pip install '.[bench]')"
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    written = []
    prefix = "smoke-" if run["header"]["settings"]["smoke"] else "latest-"
    for module in (s1_throughput, s2_latency):
        result = run["scenarios"].get(module.NAME)
        if result is None or result.get("status") != "ok":
            continue
        name = f"{prefix}{module.NAME}.png"
        if module.chart(result, plt, out / name):
            written.append(name)
    return written, "charts: " + ", ".join(written) if written else "no chart had data"
