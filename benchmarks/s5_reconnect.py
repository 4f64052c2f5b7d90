"""Scenario 5: reconnect — 100 channels joined, the server drops every socket, time to rejoin all.

The worker (our client) joins N channels on one connection and says ``ready``; the harness calls
``server.disconnect_all()`` (what the official server does on a config change: a ``system``
message, then close 1012) and reads the worker's timestamps of each channel's
``ChannelErrored`` and ``Rejoined`` events. Times are ``time.monotonic()`` (CLOCK_MONOTONIC,
shared by both processes on Linux) relative to the ``disconnect_all()`` call.

Two client configurations: the default reconnect backoff (1 s ceiling with full jitter, from a
seeded RNG — what users get), and a 10 ms backoff without jitter (the rejoin machinery itself).

Worker: ``python -m benchmarks.s5_reconnect --url URL --channels N --backoff default|fast``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any, Final

import trio

from ._common import Context, LineProcess, Result, status_cell

NAME: Final = "reconnect"
TITLE: Final = "5. Reconnect: N channels joined, server disconnects everyone, time until all rejoined"

CHANNELS: Final = 100
SMOKE_CHANNELS: Final = 5
VARIANTS: Final = ("default", "fast")
SEED: Final = 1234


async def run(ctx: Context) -> Result:
    from trio_realtime.server import serve_realtime

    n = SMOKE_CHANNELS if ctx.smoke else CHANNELS
    rows = []
    for variant in VARIANTS:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_realtime, "127.0.0.1", 0)
            cmd = ctx.python_cmd("benchmarks.s5_reconnect", "--url", server.url, "--channels", str(n),
                                 "--backoff", variant)
            row: Result = {"variant": variant, "channels": n}
            worker = await LineProcess.start(ctx, cmd)
            try:
                with trio.fail_after(60):
                    ready = await worker.read_json()
                    if ready.get("type") != "ready":
                        raise EOFError(f"unexpected line {ready}")
                    t_cut = time.monotonic()
                    await server.disconnect_all()
                    t_closed = time.monotonic()
                    result = await worker.read_json()
                if result.get("status") != "ok":
                    row.update(result)
                else:
                    row.update(
                        status="ok",
                        all_closed=t_closed - t_cut,
                        first_errored=min(result["errored"]) - t_cut if result["errored"] else None,
                        first_rejoined=min(result["rejoined"]) - t_cut,
                        all_rejoined=max(result["rejoined"]) - t_cut,
                        rejoin_spread=max(result["rejoined"]) - min(result["rejoined"]),
                        reconnects=result["reconnects"],
                    )
            except (EOFError, trio.TooSlowError, ValueError) as exc:
                row.update(status="error", reason=str(exc) or type(exc).__name__)
            finally:
                await worker.aclose()
                nursery.cancel_scope.cancel()
        rows.append(row)
        if row.get("status") == "ok":
            ctx.log(f"  reconnect ({variant} backoff): all {n} rejoined after {row['all_rejoined']:.3f} s "
                    f"(first {row['first_rejoined']:.3f} s)")
        else:
            ctx.log(f"  reconnect ({variant} backoff): {status_cell(row)[:160]}")
    return {"status": "ok", "rows": rows}


def markdown(result: Result) -> list[str]:
    lines = [
        "| client backoff | channels | sockets closed | first ChannelErrored | first Rejoined | "
        "all Rejoined | spread |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"default": "default (≤ 1 s, full jitter, seeded)", "fast": "10 ms, no jitter"}
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {names[r['variant']]} | {r['channels']} | {status_cell(r)} | | | | |")
            continue
        lines.append(
            f"| {names[r['variant']]} | {r['channels']} | {r['all_closed'] * 1000:.1f} ms | "
            f"{_ms(r['first_errored'])} | {r['first_rejoined'] * 1000:.1f} ms | "
            f"**{r['all_rejoined'] * 1000:.1f} ms** | {r['rejoin_spread'] * 1000:.1f} ms |"
        )
    lines.append("")
    lines.append("Times from the `disconnect_all()` call.")
    return lines


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


# -- worker ----------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> None:
    from trio_realtime import (
        BackoffPolicy,
        ChannelErrored,
        RealtimeConfig,
        Rejoined,
        open_realtime,
    )

    from ._reader import API_KEY, finish

    if args.backoff == "fast":
        backoff = BackoffPolicy(base=0.01, factor=2.0, cap=1.0, jitter=False)
        config = RealtimeConfig(reconnect_backoff=backoff, rng=random.Random(SEED))
    else:
        config = RealtimeConfig(rng=random.Random(SEED))
    n = args.channels
    errored: dict[int, float] = {}
    rejoined: dict[int, float] = {}
    joined = [0]
    all_joined = trio.Event()
    all_rejoined = trio.Event()

    async def hold(client: Any, i: int) -> None:
        async with client.channel(f"reconnect-{i}") as sub:
            joined[0] += 1
            if joined[0] == n:
                all_joined.set()
            async for event in sub:
                if isinstance(event, ChannelErrored) and i not in errored:
                    errored[i] = time.monotonic()
                elif isinstance(event, Rejoined) and i not in rejoined:
                    rejoined[i] = time.monotonic()
                    if len(rejoined) == n:
                        all_rejoined.set()

    async with open_realtime(args.url, api_key=API_KEY, config=config) as client:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(hold, client, i)
            await all_joined.wait()
            print(json.dumps({"type": "ready"}), flush=True)
            with trio.move_on_after(30):
                await all_rejoined.wait()
            if len(rejoined) < n:
                finish({"status": "error", "reason": f"only {len(rejoined)} of {n} rejoined within 30 s"})
            finish({
                "status": "ok",
                "errored": list(errored.values()),
                "rejoined": list(rejoined.values()),
                "reconnects": client.statistics().reconnects,
            })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s5_reconnect")
    parser.add_argument("--url", required=True)
    parser.add_argument("--channels", type=int, default=CHANNELS)
    parser.add_argument("--backoff", choices=VARIANTS, default="default")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    trio.run(_worker, args)


if __name__ == "__main__":
    main()
