"""Scenario 2: round trip of self-broadcasts at fixed rates, through the reference server.

Each client joins its own channel with ``self: true``, sends 100 B broadcasts at a fixed rate
(open loop: a send is never skipped; one more than a period late counts as a late send) and times
each from just before its send to its arrival, in one process. The reference server runs in the
harness process (the other core). The first ``warmup`` seconds of each rate are discarded;
samples of all repetitions are pooled before taking percentiles.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Final

import trio

from trio_realtime.server import serve_realtime

from ._common import Context, Result, fmt_ms, run_worker, status_cell

NAME: Final = "latency"
TITLE: Final = "2. Round trip of self-broadcasts through the reference server (100 B)"

RATES: Final = (100.0, 1000.0)
#: (reader kind, vsn); "candidate" only with --candidate.
CLIENTS: Final = (
    ("trio_realtime", "1.0.0"),
    ("trio_realtime", "2.0.0"),
    ("candidate", "1.0.0"),
    ("trio_websocket", "1.0.0"),
    ("realtime_py", "1.0.0"),
    ("realtime_js", "1.0.0"),
)
LABELS: Final = {
    "trio_realtime": "**trio_realtime**",
    "candidate": "trio_realtime candidate",
    "trio_websocket": "bare trio-websocket (+ json, by hand)",
    "realtime_py": "official `realtime` (PyPI)",
    "realtime_js": "official realtime-js (Node)",
}
PAYLOAD_SIZE: Final = 100


def key(kind: str, vsn: str) -> str:
    return f"{kind}@{vsn}"


def _skip(ctx: Context, kind: str) -> Result | None:
    if kind == "realtime_py" and importlib.util.find_spec("realtime") is None:
        return {"status": "n/a", "reason": "PyPI `realtime` is not installed"}
    if kind == "realtime_js" and ctx.node_cmd() is None:
        return {"status": "n/a", "reason": "node or tests/interop/js/node_modules missing"}
    return None


def _duration(ctx: Context) -> float:
    return ctx.duration * 1.5


async def run(ctx: Context) -> Result:
    clients = [(k, v) for k, v in CLIENTS if not (k == "candidate" and ctx.candidate is None)]
    pooled: dict[str, dict[float, list[int]]] = {}
    status: dict[str, Result] = {}
    extras: dict[str, dict[float, dict[str, int]]] = {}
    rates = ",".join(f"{r:g}" for r in RATES)
    duration = _duration(ctx)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_realtime, "127.0.0.1", 0)
        for rep in range(ctx.reps):
            order = clients[rep % len(clients):] + clients[: rep % len(clients)]
            for kind, vsn in order:
                k = key(kind, vsn)
                skip = _skip(ctx, kind)
                if skip is not None:
                    status[k] = skip
                    continue
                common = ["--url", server.url, "--vsn", vsn, "--size", str(PAYLOAD_SIZE),
                          "--warmup", str(ctx.warmup), "--duration", str(duration), "--rates", rates]
                if kind == "realtime_js":
                    cmd = ctx.node_cmd("--task", "rtt", *common)
                    assert cmd is not None
                else:
                    reader = "trio_realtime" if kind == "candidate" else kind
                    cmd = ctx.python_cmd("benchmarks._reader", reader, "--task", "rtt", *common)
                limit = len(RATES) * (ctx.warmup + duration + 3) + 30
                result = await run_worker(ctx, cmd, kill_after=limit, candidate=kind == "candidate")
                if result.get("status") != "ok":
                    status[k] = result
                    ctx.log(f"  latency rep {rep + 1}/{ctx.reps} {k:<22} {status_cell(result)[:160]}")
                    continue
                status.setdefault(k, {"status": "ok"})
                for r in result["rates"]:
                    pooled.setdefault(k, {}).setdefault(r["rate"], []).extend(r["rtts_us"])
                    e = extras.setdefault(k, {}).setdefault(r["rate"], {"lost": 0, "late_sends": 0})
                    e["lost"] += r["lost"]
                    e["late_sends"] += r["late_sends"]
                ctx.log(f"  latency rep {rep + 1}/{ctx.reps} {k:<22} " + ", ".join(
                    f"{r['rate']:g}/s p50 {fmt_ms(r['p50_ms'])} p99 {fmt_ms(r['p99_ms'])}"
                    for r in result["rates"]))
        nursery.cancel_scope.cancel()
    rows: dict[str, Any] = {}
    for kind, vsn in clients:
        k = key(kind, vsn)
        row: dict[str, Any] = {"kind": kind, "vsn": vsn, "status": status.get(k, {"status": "error"}),
                               "rates": {}}
        for rate, samples in pooled.get(k, {}).items():
            samples.sort()
            row["rates"][f"{rate:g}"] = {
                "samples": len(samples),
                **_percentiles_ms(samples),
                **extras[k][rate],
            }
        rows[k] = row
    return {"status": "ok", "reps": ctx.reps, "duration": duration, "warmup": ctx.warmup,
            "rates": [f"{r:g}" for r in RATES], "clients": rows}


def _percentiles_ms(sorted_us: list[int]) -> dict[str, float | None]:
    if not sorted_us:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(p: float) -> float:
        index = min(len(sorted_us) - 1, max(0, math.ceil(p / 100 * len(sorted_us)) - 1))
        return sorted_us[index] / 1000

    return {"p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99), "max_ms": sorted_us[-1] / 1000}


def percentile(result: Result, kind: str, vsn: str, rate: str, which: str) -> float | None:
    row = result.get("clients", {}).get(key(kind, vsn))
    if row is None:
        return None
    value: float | None = row["rates"].get(rate, {}).get(which)
    return value


def markdown(result: Result) -> list[str]:
    lines = [
        f"{result['duration']:g} s per rate after {result['warmup']:g} s warm-up, "
        f"{result['reps']} repetition(s) pooled; one client process at a time.",
        "",
        "| client | vsn | " + " | ".join(
            f"{r}/s p50 | p90 | p99" for r in result["rates"]) + " | lost |",
        "|---|---|" + "---:|---:|---:|" * len(result["rates"]) + "---:|",
    ]
    notes = []
    for row in result["clients"].values():
        cells = [LABELS[row["kind"]], row["vsn"]]
        if not row["rates"]:
            cells += ["—"] * (3 * len(result["rates"])) + ["—"]
            notes.append(f"{LABELS[row['kind']]} ({row['vsn']}): {status_cell(row['status'])}")
        else:
            lost = 0
            for rate in result["rates"]:
                r = row["rates"].get(rate, {})
                cells += [fmt_ms(r.get("p50_ms")), fmt_ms(r.get("p90_ms")), fmt_ms(r.get("p99_ms"))]
                lost += r.get("lost", 0)
            cells.append(str(lost))
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"* {n}" for n in notes)
    return lines


def chart(result: Result, plt: Any, path: Any) -> bool:
    rows = [r for r in result["clients"].values() if r["rates"]]
    if not rows:
        return False
    fig, axes = plt.subplots(1, len(result["rates"]), figsize=(6 * len(result["rates"]), 4.2),
                             squeeze=False)
    for ax, rate in zip(axes[0], result["rates"], strict=True):
        labels = [f"{r['kind']}\n{r['vsn']}" for r in rows]
        for i, which in enumerate(("p50_ms", "p90_ms", "p99_ms")):
            values = [r["rates"].get(rate, {}).get(which) or 0 for r in rows]
            ax.bar([j + i * 0.27 for j in range(len(rows))], values, 0.27, label=which[:3])
        ax.set_xticks([j + 0.27 for j in range(len(rows))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("round trip (ms)")
        ax.set_title(f"Self-broadcast round trip at {rate} msgs/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
