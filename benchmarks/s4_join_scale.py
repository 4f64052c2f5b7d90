"""Scenario 4: join scale — N channels on one connection of our client.

One worker process per N, against a reference server (in the harness process) that allows that
many channels per socket. Two phases, each on a fresh connection:

1. **time**: N tasks each enter ``async with client.channel(f"join-{i}")`` at once; the time
   from the first task's start until the N-th join is acknowledged, and the RSS growth
   (``/proc/self/statm``) over the same span, divided by N (it includes each holding task).
2. **memory** (``tracemalloc``, which slows things, hence a separate phase): the Python memory
   held per joined channel, computed as (N tasks holding a joined channel - N tasks parked on
   an event, the same structure without the channel) / N — i.e. what the library keeps per
   channel, excluding the task that holds it. Both totals are reported too.

Worker: ``python -m benchmarks.s4_join_scale --url URL --channels N``
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
import tracemalloc
from typing import Any, Final

import trio

from ._common import Context, Result, run_worker, status_cell

NAME: Final = "join_scale"
TITLE: Final = "4. Join scale: N channels on one connection"

COUNTS: Final = (1000, 10_000)
SMOKE_COUNTS: Final = (20,)


async def run(ctx: Context) -> Result:
    from trio_realtime.server import ServerConfig, serve_realtime

    counts = SMOKE_COUNTS if ctx.smoke else COUNTS
    rows = []
    for n in counts:
        async with trio.open_nursery() as nursery:
            config = ServerConfig(max_channels_per_client=n + 10, send_queue_size=max(1000, 2 * n))
            server = await nursery.start(functools.partial(serve_realtime, config=config), "127.0.0.1", 0)
            cmd = ctx.python_cmd("benchmarks.s4_join_scale", "--url", server.url, "--channels", str(n))
            result = await run_worker(ctx, cmd, kill_after=120 + n / 50)
            result["channels"] = n
            rows.append(result)
            if result.get("status") == "ok":
                ctx.log(f"  join_scale N={n}: all joined in {result['join_seconds']:.3f} s, "
                        f"{result['tracemalloc_per_channel'] / 1024:.2f} KiB/channel (tracemalloc), "
                        f"{result['rss_per_channel'] / 1024:.2f} KiB/channel (RSS incl. task)")
            else:
                ctx.log(f"  join_scale N={n}: {status_cell(result)[:160]}")
            nursery.cancel_scope.cancel()
    return {"status": "ok", "rows": rows}


def markdown(result: Result) -> list[str]:
    lines = [
        "| channels | time to all joined | joins/s | leave all | per channel: tracemalloc "
        "(library) | tracemalloc incl. holding task | RSS incl. task |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['channels']} | {status_cell(r)} | | | | | |")
            continue
        lines.append(
            f"| {r['channels']:,} | {r['join_seconds']:.3f} s | {r['channels'] / r['join_seconds']:,.0f} | "
            f"{r['leave_seconds']:.3f} s | {r['tracemalloc_per_channel'] / 1024:.2f} KiB | "
            f"{r['tracemalloc_with_task_per_channel'] / 1024:.2f} KiB | "
            f"{r['rss_per_channel'] / 1024:.2f} KiB |"
        )
    return lines


# -- worker ----------------------------------------------------------------------------------


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _hold(client: Any, name: str, joined: list[int], all_joined: trio.Event,
                release: trio.Event, n: int) -> None:
    async with client.channel(name):
        joined[0] += 1
        if joined[0] == n:
            all_joined.set()
        await release.wait()


async def _park(ready: list[int], all_ready: trio.Event, release: trio.Event, n: int) -> None:
    ready[0] += 1
    if ready[0] == n:
        all_ready.set()
    await release.wait()


async def _join_all(
    url: str, n: int, prefix: str, measure: Any, on_joined: Any = None
) -> dict[str, float]:
    """Join n channels concurrently on a fresh connection; ``measure(phase)`` around it.

    ``on_joined(out)``, if given, is called once all are joined and measured (it may exit).
    """
    from trio_realtime import RealtimeConfig, open_realtime

    from ._reader import API_KEY

    out: dict[str, float] = {}
    config = RealtimeConfig(join_timeout=60.0)
    async with open_realtime(url, api_key=API_KEY, config=config) as client:
        joined = [0]
        all_joined = trio.Event()
        release = trio.Event()
        async with trio.open_nursery() as nursery:
            measure("before", out)
            t0 = time.perf_counter()
            for i in range(n):
                nursery.start_soon(_hold, client, f"{prefix}-{i}", joined, all_joined, release, n)
            await all_joined.wait()
            out["join_seconds"] = time.perf_counter() - t0
            await trio.sleep(0.05)
            measure("after", out)
            if on_joined is not None:
                on_joined(out)
            t1 = time.perf_counter()
            release.set()
        out["leave_seconds"] = time.perf_counter() - t1
    return out


async def _worker(args: argparse.Namespace) -> None:
    from ._reader import finish

    n = args.channels

    def rss_measure(phase: str, out: dict[str, float]) -> None:
        gc.collect()
        out[f"rss_{phase}"] = _rss()

    timing = await _join_all(args.url, n, "join", rss_measure)

    # Phase 2: tracemalloc, tasks alone first, then tasks holding channels.
    tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    ready = [0]
    all_ready = trio.Event()
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(_park, ready, all_ready, release, n)
        await all_ready.wait()
        gc.collect()
        tasks_only = tracemalloc.get_traced_memory()[0] - base
        release.set()

    def tm_measure(phase: str, out: dict[str, float]) -> None:
        gc.collect()
        out[f"tm_{phase}"] = tracemalloc.get_traced_memory()[0]

    def report(memory: dict[str, float]) -> None:
        # Leaving again under tracemalloc would only cost time: report and exit now.
        with_tasks = memory["tm_after"] - memory["tm_before"]
        finish({
            "status": "ok",
            "join_seconds": timing["join_seconds"],
            "leave_seconds": timing["leave_seconds"],
            "rss_per_channel": (timing["rss_after"] - timing["rss_before"]) / n,
            "tracemalloc_tasks_only_per_task": tasks_only / n,
            "tracemalloc_with_task_per_channel": with_tasks / n,
            "tracemalloc_per_channel": (with_tasks - tasks_only) / n,
        })

    await _join_all(args.url, n, "mem", tm_measure, report)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s4_join_scale")
    parser.add_argument("--url", required=True)
    parser.add_argument("--channels", type=int, default=1000)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    trio.run(_worker, args)


if __name__ == "__main__":
    main()
