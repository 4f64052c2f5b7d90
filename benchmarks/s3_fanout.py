"""Scenario 3: fan-out through the reference server — 1 publisher, K subscribers over C connections.

One worker process holds the publisher (its own connection) and the C subscriber connections
(our client, vsn 2.0.0), each with K/C subscriptions on the same topic. The publisher sends
100 B broadcasts at a fixed rate; each subscriber timestamps arrivals, so the fan-out latency
(publish call → subscriber's ``async for``) is measured in one process. The reference server runs
in the harness process.

K > C needs several subscriptions to one topic on one connection (shared topics, a seed
feature): until the client allows it, those rows say "not available yet".

Worker: ``python -m benchmarks.s3_fanout --url URL --subscribers K --connections C --rate R ...``
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from contextlib import AsyncExitStack
from typing import Any, Final

import trio

from ._common import Context, Result, fmt_ms, fmt_rate, run_worker, status_cell
from ._frames import EVENT, payloads

NAME: Final = "fanout"
TITLE: Final = "3. Fan-out through the reference server (1 publisher, K subscribers, C connections)"

#: (subscribers K, connections C, publish rate msgs/s)
CONFIGS: Final = ((10, 10, 1000.0), (100, 100, 100.0), (100, 10, 100.0))
SMOKE_CONFIGS: Final = ((2, 2, 200.0), (4, 2, 200.0))
PAYLOAD_SIZE: Final = 100


async def run(ctx: Context) -> Result:
    from trio_realtime.server import ServerConfig, serve_realtime

    configs = SMOKE_CONFIGS if ctx.smoke else CONFIGS
    rows = []
    async with trio.open_nursery() as nursery:
        config = ServerConfig(max_channels_per_client=1000, send_queue_size=10_000)
        server = await nursery.start(functools.partial(serve_realtime, config=config), "127.0.0.1", 0)
        for k, c, rate in configs:
            cmd = ctx.python_cmd(
                "benchmarks.s3_fanout", "--url", server.url, "--subscribers", str(k),
                "--connections", str(c), "--rate", f"{rate:g}", "--warmup", str(ctx.warmup),
                "--duration", str(ctx.duration * 2),
            )
            result = await run_worker(ctx, cmd, kill_after=ctx.duration * 2 + ctx.warmup + 60)
            result.update(subscribers=k, connections=c, rate=rate)
            rows.append(result)
            if result.get("status") == "ok":
                ctx.log(f"  fanout K={k} C={c} {rate:g}/s: {fmt_rate(result['deliveries_per_s'])} "
                        f"deliveries/s, p50 {fmt_ms(result['p50_ms'])} p99 {fmt_ms(result['p99_ms'])}")
            else:
                ctx.log(f"  fanout K={k} C={c}: {status_cell(result)[:160]}")
        nursery.cancel_scope.cancel()
    return {"status": "ok", "rows": rows}


def markdown(result: Result) -> list[str]:
    lines = [
        "| K subscribers | C connections | publish rate | deliveries/s (expected) | lost | "
        "p50 | p90 | p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        head = f"| {r['subscribers']} | {r['connections']} | {r['rate']:g}/s |"
        if r.get("status") == "ok":
            lines.append(
                f"{head} {fmt_rate(r['deliveries_per_s'])} ({fmt_rate(r['expected_per_s'])}) | "
                f"{r['lost']} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p90_ms'])} | {fmt_ms(r['p99_ms'])} |"
            )
        else:
            lines.append(f"{head} {status_cell(r)} | | | | |")
    return lines


# -- worker ----------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> None:
    from trio_realtime import (
        Broadcast,
        BroadcastConfig,
        LocalProtocolError,
        RealtimeConfig,
        open_realtime,
    )

    from ._reader import API_KEY, finish, percentiles

    per_conn = math.ceil(args.subscribers / args.connections)
    total = max(1, round(args.rate * (args.warmup + args.duration)))
    skip = round(args.rate * args.warmup)
    sent = [0.0] * total
    latencies: list[float] = []
    received = [0]
    bodies = payloads(PAYLOAD_SIZE, total)
    expected = [math.inf]
    all_arrived = trio.Event()

    async def consume(sub: Any) -> None:
        async for event in sub:
            if type(event) is Broadcast:
                now = time.perf_counter()
                received[0] += 1
                seq = event.payload["i"]
                if seq >= skip:
                    latencies.append(now - sent[seq])
                    if len(latencies) >= expected[0]:
                        all_arrived.set()

    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        subs = []
        try:
            for _ in range(args.connections):
                client = await stack.enter_async_context(
                    open_realtime(args.url, api_key=API_KEY, config=RealtimeConfig())
                )
                for _ in range(per_conn):
                    if len(subs) == args.subscribers:
                        break
                    subs.append(await stack.enter_async_context(client.channel("fanout")))
        except LocalProtocolError as exc:
            finish({"status": "not available yet",
                    "reason": f"{per_conn} subscriptions to one topic on one connection: {exc}"})
        publisher = await stack.enter_async_context(open_realtime(args.url, api_key=API_KEY))
        pub = await stack.enter_async_context(
            publisher.channel("fanout", broadcast=BroadcastConfig(receive_own=False))
        )
        for sub in subs:
            nursery.start_soon(consume, sub)
        start = trio.current_time()
        t_measure = 0.0
        r_measure = 0
        for seq in range(total):
            due = start + seq / args.rate
            if trio.current_time() < due:
                await trio.sleep_until(due)
            if seq == skip:
                t_measure, r_measure = time.perf_counter(), received[0]
            sent[seq] = time.perf_counter()
            await pub.send_broadcast(EVENT, bodies[seq])
        t_end, r_end = time.perf_counter(), received[0]
        expected[0] = (total - skip) * len(subs)
        if len(latencies) >= expected[0]:
            all_arrived.set()
        with trio.move_on_after(3):
            await all_arrived.wait()
        latencies.sort()
        seconds = t_end - t_measure
        finish({
            "status": "ok",
            "deliveries_per_s": (r_end - r_measure) / seconds if seconds > 0 else 0.0,
            "expected_per_s": args.rate * len(subs),
            "lost": (total - skip) * len(subs) - len(latencies),
            **percentiles(latencies),
        })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_fanout")
    parser.add_argument("--url", required=True)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    trio.run(_worker, args)


if __name__ == "__main__":
    main()
