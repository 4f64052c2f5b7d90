"""Scenario 8: the reference server's own fan-out capacity — deliveries/s to N raw clients.

The reference server runs alone in the harness process. One worker process (asyncio +
``websockets``, the fastest Python reader, so the clients are not the bottleneck) holds N
subscriber connections and one publisher connection, all vsn 1.0.0 on one topic. The publisher
keeps at most ``WINDOW`` broadcasts in flight (sent but not yet received by the slowest
subscriber), which keeps every server send queue far below its limit while never letting the
server idle. The harness reports the server process's CPU use over the measured seconds: near
100 % means the server is the bottleneck.

Worker: ``python -m benchmarks.s8_server_fanout --url URL --clients N ...``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Final

import trio

from ._common import Context, LineProcess, Result, fmt_rate, status_cell

NAME: Final = "server_fanout"
TITLE: Final = "8. Reference server fan-out capacity (deliveries/s to N raw clients)"

CLIENTS: Final = (1, 10, 100)
SMOKE_CLIENTS: Final = (2,)
WINDOW: Final = 200
PAYLOAD_SIZE: Final = 100


async def run(ctx: Context) -> Result:
    from trio_realtime.server import serve_realtime

    rows = []
    for n in SMOKE_CLIENTS if ctx.smoke else CLIENTS:
        row: Result = {"clients": n}
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_realtime, "127.0.0.1", 0)
            cmd = ctx.python_cmd("benchmarks.s8_server_fanout", "--url", server.url, "--clients", str(n),
                                 "--warmup", str(ctx.warmup), "--duration", str(ctx.duration))
            worker = await LineProcess.start(ctx, cmd)
            try:
                with trio.fail_after(ctx.warmup + ctx.duration + 60):
                    start = await worker.read_json()
                    if start.get("type") != "start":
                        raise EOFError(f"unexpected line {start}")
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    result = await worker.read_json()
                    cpu1, wall1 = time.process_time(), time.perf_counter()
                row.update(result)
                if result.get("status") == "ok":
                    row["server_cpu"] = (cpu1 - cpu0) / (wall1 - wall0)
            except (EOFError, trio.TooSlowError, ValueError) as exc:
                row.update(status="error", reason=str(exc) or type(exc).__name__)
            finally:
                await worker.aclose()
                nursery.cancel_scope.cancel()
        rows.append(row)
        if row.get("status") == "ok":
            ctx.log(f"  server_fanout N={n}: {fmt_rate(row['deliveries_per_s'])} deliveries/s "
                    f"(server CPU {row['server_cpu']:.0%}, clients' CPU {row['client_cpu']:.0%})")
        else:
            ctx.log(f"  server_fanout N={n}: {status_cell(row)[:160]}")
    return {"status": "ok", "window": WINDOW, "rows": rows}


def markdown(result: Result) -> list[str]:
    lines = [
        "| raw clients | deliveries/s | broadcasts in/s | server CPU | clients' CPU |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['clients']} | {status_cell(r)} | | | |")
            continue
        lines.append(f"| {r['clients']} | **{fmt_rate(r['deliveries_per_s'])}** | "
                     f"{fmt_rate(r['publishes_per_s'])} | {r['server_cpu']:.0%} | {r['client_cpu']:.0%} |")
    lines.append("")
    lines.append(f"vsn 1.0.0, {PAYLOAD_SIZE} B payloads, at most {result['window']} broadcasts in flight.")
    return lines


# -- worker (asyncio) -------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    from ._frames import client_broadcast_push, client_join_frame, payloads
    from ._reader import finish, ws_url

    topic = "realtime:capacity"
    url = ws_url(args.url, "1.0.0")
    counts = [0] * args.clients
    progress = asyncio.Event()

    async def subscribe(i: int, ws: Any) -> None:
        async for _ in ws:
            counts[i] += 1
            if not counts[i] & 31:
                progress.set()

    subs = []
    for _ in range(args.clients):
        ws = await connect(url, compression=None, max_size=None)
        await ws.send(client_join_frame("1.0.0", topic))
        await ws.recv()  # join reply
        subs.append(ws)
    pub = await connect(url, compression=None, max_size=None)
    await pub.send(client_join_frame("1.0.0", topic))
    await pub.recv()
    tasks = [asyncio.create_task(subscribe(i, ws)) for i, ws in enumerate(subs)]
    frames = [client_broadcast_push(topic, "1", None, body) for body in payloads(PAYLOAD_SIZE, 512)]
    sent = 0
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    measuring = False
    t0 = 0.0
    d0 = s0 = 0
    c0 = 0.0
    while True:
        while sent - min(counts) >= args.window:
            progress.clear()
            await progress.wait()
        await pub.send(frames[sent % len(frames)])
        sent += 1
        if not sent & 63:
            now = loop.time()
            if not measuring and now - t_start >= args.warmup:
                measuring = True
                print(json.dumps({"type": "start"}), flush=True)
                t0, d0, s0 = time.perf_counter(), sum(counts), sent
                c0 = time.process_time()
            elif measuring and now - t_start >= args.warmup + args.duration:
                break
    t1, d1, s1 = time.perf_counter(), sum(counts), sent
    c1 = time.process_time()
    for task in tasks:
        task.cancel()
    finish({
        "status": "ok",
        "deliveries_per_s": (d1 - d0) / (t1 - t0),
        "publishes_per_s": (s1 - s0) / (t1 - t0),
        "client_cpu": (c1 - c0) / (t1 - t0),
    })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s8_server_fanout")
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=WINDOW, help="broadcasts in flight at most")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(_worker(args))


if __name__ == "__main__":
    main()
