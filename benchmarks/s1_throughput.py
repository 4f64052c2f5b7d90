"""Scenario 1: receive throughput of one subscriber, from the frame blaster.

For each repetition, every (vsn, size) cell runs every reader once, the order rotating from one
repetition to the next so no reader always goes first; a cell's number is the median of its
repetitions (the blaster-ceiling row runs in the first repetition only). Readers run one at a
time, each in its own process, on the other core from the blaster.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Final

import trio

from ._blaster import Blaster
from ._common import Context, Result, fmt_rate, median, run_worker, status_cell

NAME: Final = "throughput"
TITLE: Final = "1. Receive throughput, one subscriber, frame blaster (msgs/s)"

#: Readers, in table order. "candidate" appears only with --candidate.
READERS: Final = (
    "trio_realtime",
    "trio_realtime_batch",
    "candidate",
    "trio_websocket",
    "trio_websocket_64k",
    "websockets",
    "realtime_py",
    "realtime_js",
    "raw_socket",
)
LABELS: Final = {
    "trio_realtime": "**trio_realtime** (`async for`)",
    "trio_realtime_batch": "**trio_realtime** batch receive",
    "candidate": "trio_realtime candidate (`--candidate`)",
    "trio_websocket": "bare trio-websocket `get_message()` (4 KiB reads)",
    "trio_websocket_64k": "bare trio-websocket, 64 KiB reads",
    "websockets": "bare `websockets` `recv()` (asyncio)",
    "realtime_py": "official `realtime` (PyPI, asyncio)",
    "realtime_js": "official realtime-js (Node)",
    "raw_socket": "blaster ceiling (raw socket, no parsing)",
}


def _static_skip(ctx: Context, reader: str, vsn: str) -> Result | None:
    if reader == "realtime_py":
        if importlib.util.find_spec("realtime") is None:
            return {"status": "n/a", "reason": "PyPI `realtime` is not installed (pip install '.[interop]')"}
        if vsn != "1.0.0":
            return {"status": "n/a", "reason": "the PyPI client speaks vsn 1.0.0 only"}
    if reader == "realtime_js" and ctx.node_cmd() is None:
        return {"status": "n/a",
                "reason": "node or tests/interop/js/node_modules missing (bash scripts/bootstrap)"}
    if reader == "candidate" and ctx.candidate is None:
        return {"status": "skip"}
    return None


def _command(ctx: Context, reader: str, url: str, vsn: str, size: int) -> list[str] | None:
    common = ["--url", url, "--vsn", vsn, "--size", str(size),
              "--warmup", str(ctx.warmup), "--duration", str(ctx.duration)]
    if reader == "realtime_js":
        return ctx.node_cmd("--task", "throughput", *common)
    kind = "trio_realtime" if reader == "candidate" else reader
    return ctx.python_cmd("benchmarks._reader", kind, "--task", "throughput", *common)


async def run(ctx: Context) -> Result:
    blaster = Blaster()
    cells: dict[str, dict[str, Any]] = {}
    gave_up: dict[str, Result] = {}  # a reader that reported "unavailable" is not run again
    readers = [r for r in READERS if not (r == "candidate" and ctx.candidate is None)]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(blaster.serve)
        url = f"ws://127.0.0.1:{port}/realtime/v1"
        for rep in range(ctx.reps):
            order = readers[rep % len(readers):] + readers[: rep % len(readers)]
            for vsn in ctx.vsns:
                for size in ctx.sizes:
                    key = f"{vsn}/{size}"
                    cell = cells.setdefault(key, {"vsn": vsn, "size": size, "readers": {}})
                    for reader in order:
                        slot = cell["readers"].setdefault(reader, {"runs": [], "results": []})
                        skip = _static_skip(ctx, reader, vsn) or gave_up.get(reader)
                        if reader == "raw_socket" and rep > 0:
                            continue  # a sanity ceiling: once is enough
                        if skip is not None:
                            slot["status"] = skip
                            continue
                        cmd = _command(ctx, reader, url, vsn, size)
                        assert cmd is not None
                        result = await run_worker(
                            ctx, cmd, kill_after=ctx.warmup + ctx.duration + 30,
                            candidate=reader == "candidate",
                        )
                        slot["results"].append(result)
                        if result.get("status") == "ok":
                            slot["runs"].append(result["rate"])
                        elif result.get("status") == "unavailable":
                            gave_up[reader] = {"status": "not available yet",
                                               "reason": result.get("reason", "")}
                            slot["status"] = gave_up[reader]
                        ctx.log(f"  throughput rep {rep + 1}/{ctx.reps} vsn {vsn} {size:>6} B "
                                f"{reader:<20} {_short(result)}")
        nursery.cancel_scope.cancel()
    for cell in cells.values():
        for slot in cell["readers"].values():
            slot["median"] = median(slot["runs"])
            if slot["median"] is not None:
                slot["status"] = {"status": "ok"}
            elif "status" not in slot:
                last = slot["results"][-1] if slot["results"] else {"status": "error", "reason": "no run"}
                slot["status"] = last
            extras = [r for r in slot["results"] if r.get("status") == "ok" and "dropped" in r]
            if extras:
                slot["frames_rate"] = median([r["frames_rate"] for r in extras])
                slot["dropped"] = median([r["dropped"] for r in extras])
    return {"status": "ok", "reps": ctx.reps, "duration": ctx.duration, "warmup": ctx.warmup,
            "cells": cells}


def _short(result: Result) -> str:
    if result.get("status") == "ok":
        extra = ""
        if "dropped" in result:
            extra = f" (connection decoded {fmt_rate(result['frames_rate'])}/s, dropped {result['dropped']})"
        return f"{fmt_rate(result['rate'])} msgs/s{extra}"
    return status_cell(result)[:160]


def rate(result: Result, reader: str, vsn: str, size: int) -> float | None:
    """The median msgs/s of ``reader`` in a throughput result (None if not measured)."""
    cell = result.get("cells", {}).get(f"{vsn}/{size}")
    if cell is None:
        return None
    slot = cell["readers"].get(reader)
    return None if slot is None else slot.get("median")


def markdown(result: Result) -> list[str]:
    cells = list(result["cells"].values())
    if not cells:
        return ["(no cells)"]
    header = "| reader | " + " | ".join(
        f"vsn {c['vsn'][0]} · {_size(c['size'])}" for c in cells) + " |"
    lines = [
        f"Median of {result['reps']} interleaved runs of {result['duration']:g} s "
        f"(after {result['warmup']:g} s warm-up); one reader process at a time.",
        "",
        header,
        "|---|" + "---:|" * len(cells),
    ]
    readers = [r for r in READERS if any(r in c["readers"] for c in cells)]
    notes: list[str] = []
    for reader in readers:
        row = [LABELS[reader]]
        for c in cells:
            slot = c["readers"].get(reader)
            if slot is None:
                row.append("—")
            elif slot.get("median") is not None:
                text = fmt_rate(slot["median"])
                if slot.get("dropped"):
                    text += f" ({fmt_rate(slot['frames_rate'])} decoded, {fmt_rate(slot['dropped'])} dropped)"
                row.append(text)
            else:
                status = slot["status"]
                row.append(status.get("status", "error"))
                if status.get("reason"):
                    note = f"{LABELS[reader]}: {status_cell(status)}"
                    if note not in notes:
                        notes.append(note)
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines.append("")
        lines.extend(f"* {n}" for n in notes)
    lines.append("")
    lines.append("“decoded” is the rate at which our connection task decoded frames; “dropped” the "
                 "events its bounded subscription queue could not take (overflow policy `drop`) "
                 "during the measured seconds.")
    return lines


def _size(size: int) -> str:
    return f"{size // 1000} KB" if size >= 1000 and size % 1000 == 0 else f"{size} B"


def chart(result: Result, plt: Any, path: Any) -> bool:
    cells = list(result["cells"].values())
    readers = [r for r in READERS if r != "raw_socket" and any(
        c["readers"].get(r, {}).get("median") for c in cells)]
    if not cells or not readers:
        return False
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(cells)), 4.8))
    width = 0.8 / len(readers)
    for i, reader in enumerate(readers):
        values = [c["readers"].get(reader, {}).get("median") or 0 for c in cells]
        xs = [j + i * width for j in range(len(cells))]
        ax.bar(xs, values, width, label=reader)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cells))])
    ax.set_xticklabels([f"vsn {c['vsn']}\n{_size(c['size'])}" for c in cells])
    ax.set_yscale("log")
    ax.set_ylabel("messages / s (log)")
    ax.set_title("Receive throughput from the frame blaster (median)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
