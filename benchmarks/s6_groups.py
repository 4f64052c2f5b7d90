"""Scenario 6: active-group switch vs leave+join, and the cost of each extra shared-topic subscriber.

Our client against the reference server (in the harness process), each part in its own worker
process. **(a) Switching groups**: one subscription for all groups with
`open_active_router` over it: the time of `router.switch_active(g)` (synchronous, no
network) and of entering `async with router.view(g)` (switch + bind, one checkpoint), cycling
through 8 groups on an idle connection; versus the channel-per-group way: leaving one channel
(`client.channel(...)` exit, which waits for the leave reply) and joining the next (enter,
which waits for the join reply), during which the app receives nothing. **(b) Shared-topic
subscribers**: N subscriptions to one topic on one client (same configuration, so one server
join), each drained by its own task (`async for`), while a separate publisher process (bare
`websockets`, pre-encoded vsn 1.0.0 pushes) broadcasts 100 B messages at a fixed rate; the
subscriber process reports delivered events/s and its CPU time (`time.process_time`) per
delivery and per published message; the marginal cost of each extra subscriber is the growth
of CPU per message over N = 1, divided by N - 1. **(c) Memory** per extra subscriber on an
already joined topic (tracemalloc: M tasks each holding one more subscription, minus M tasks
parked without one, divided by M).

Workers: ``python -m benchmarks.s6_groups switch|subscribers|publish --url URL ...``
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import sys
import time
import tracemalloc
from contextlib import AsyncExitStack
from typing import Any, Final

import trio

from ._common import Context, LineProcess, Result, fmt_ms, fmt_rate, run_worker, status_cell

NAME: Final = "groups"
TITLE: Final = "6. Active-group switch vs leave+join, cost of each extra shared-topic subscriber"

#: Groups the switches cycle through.
GROUPS: Final = 8
#: (switch_active calls, view entries, leave+join cycles, extra subscribers for memory)
COUNTS: Final = (20_000, 5_000, 300, 1_000)
SMOKE_COUNTS: Final = (500, 200, 10, 20)
#: Shared-topic subscriber counts.
SUBSCRIBERS: Final = (1, 2, 4, 8, 16)
SMOKE_SUBSCRIBERS: Final = (1, 2)
#: Publish rate (msgs/s) of the shared-topic part.
RATE: Final = 2000.0
SMOKE_RATE: Final = 500.0
PAYLOAD_SIZE: Final = 100
SHARED_TOPIC: Final = "shared"
#: Seconds the subscriber worker waits for stragglers after the last expected publish.
STRAGGLERS: Final = 3.0


async def run(ctx: Context) -> Result:
    from trio_realtime.server import ServerConfig, serve_realtime

    switches, views, cycles, extra = SMOKE_COUNTS if ctx.smoke else COUNTS
    rate = SMOKE_RATE if ctx.smoke else RATE
    duration = ctx.duration * 2
    async with trio.open_nursery() as nursery:
        config = ServerConfig(max_channels_per_client=1000, send_queue_size=10_000)
        server = await nursery.start(functools.partial(serve_realtime, config=config), "127.0.0.1", 0)

        cmd = ctx.python_cmd(
            "benchmarks.s6_groups", "switch", "--url", server.url, "--switches", str(switches),
            "--views", str(views), "--cycles", str(cycles), "--extra", str(extra),
        )
        switch = await run_worker(ctx, cmd, kill_after=120)
        _log_switch(ctx, switch)

        rows = []
        for n in SMOKE_SUBSCRIBERS if ctx.smoke else SUBSCRIBERS:
            row = await _shared_topic(ctx, server.url, n, rate, duration)
            rows.append(row)
            if row.get("status") == "ok":
                ctx.log(f"  shared topic N={n}: {fmt_rate(row['deliveries_per_s'])} deliveries/s, "
                        f"{row['cpu_per_delivery'] * 1e6:.1f} µs CPU/delivery, "
                        f"{row['cpu_per_message'] * 1e6:.1f} µs CPU/message, lost {row['lost']}")
            else:
                ctx.log(f"  shared topic N={n}: {status_cell(row)[:160]}")
        nursery.cancel_scope.cancel()
    slope = _marginal_cpu(rows)
    if slope is not None:
        ctx.log(f"  shared topic: {slope * 1e6:.1f} µs CPU per extra subscriber per message (slope)")
    return {
        "status": "ok",
        "marginal_cpu_per_message": slope,
        "groups": GROUPS,
        "switch": switch,
        "rate": rate,
        "duration": duration,
        "warmup": ctx.warmup,
        "payload_size": PAYLOAD_SIZE,
        "rows": rows,
    }


async def _shared_topic(ctx: Context, url: str, n: int, rate: float, duration: float) -> Result:
    total = max(1, round(rate * (ctx.warmup + duration)))
    skip = round(rate * ctx.warmup)
    row: Result = {"subscribers": n, "rate": rate}
    sub_cmd = ctx.python_cmd(
        "benchmarks.s6_groups", "subscribers", "--url", url, "--subscribers", str(n),
        "--rate", f"{rate:g}", "--count", str(total), "--skip", str(skip),
    )
    pub_cmd = ctx.python_cmd(
        "benchmarks.s6_groups", "publish", "--url", url, "--rate", f"{rate:g}", "--count", str(total),
    )
    worker = await LineProcess.start(ctx, sub_cmd)
    publisher: list[Result] = []

    async def publish() -> None:
        publisher.append(await run_worker(ctx, pub_cmd, kill_after=total / rate + 60))

    try:
        with trio.fail_after(total / rate + STRAGGLERS + 60):
            ready = await worker.read_json()
            if ready.get("type") != "ready":
                raise EOFError(f"unexpected line {ready}")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                result = await worker.read_json()
        row.update(result)
        if publisher and publisher[0].get("status") != "ok":
            row.update(status="error", reason=f"publisher: {status_cell(publisher[0])}")
        elif publisher:
            row["late_sends"] = publisher[0]["late_sends"]
    except (EOFError, trio.TooSlowError, ValueError) as exc:
        row.update(status="error", reason=str(exc) or type(exc).__name__)
    finally:
        await worker.aclose()
    return row


def _log_switch(ctx: Context, r: Result) -> None:
    if r.get("status") != "ok":
        ctx.log(f"  switch: {status_cell(r)[:160]}")
        return
    sa = r["switch_active"]
    ctx.log(f"  switch_active: median {_us(sa['p50'])}, p99 {_us(sa['p99'])}; "
            f"view entry: median {_us(r['view']['p50'])}; leave+join: median "
            f"{_us(r['leave_join']['p50'])}, p99 {_us(r['leave_join']['p99'])}")
    ctx.log(f"  memory per extra subscriber: {r['tracemalloc_per_subscriber'] / 1024:.2f} KiB (library), "
            f"{r['tracemalloc_with_task_per_subscriber'] / 1024:.2f} KiB with the holding task")


def _us(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-5:
        return f"{seconds * 1e6:.2f} µs"
    return fmt_ms(seconds * 1000)


def markdown(result: Result) -> list[str]:
    lines: list[str] = []
    s = result["switch"]
    if s.get("status") != "ok":
        lines += [f"Switching: **{status_cell(s)}**", ""]
    else:
        lines += [
            f"**(a) Switching between {result['groups']} groups** (idle connection; the worker's "
            "`time.perf_counter_ns()` around each call):",
            "",
            "| how | samples | median | p90 | p99 | max | network round trips |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        names = (
            ("switch_active", "**`router.switch_active(g)`** (one subscription, active router)", "0"),
            ("view", "`async with router.view(g)` entry (switch + bind)", "0"),
            ("add_subscriber", "adding a subscriber to an already joined topic (`client.channel` "
             "enter, shared join)", "0"),
            ("leave_join", "**leave one channel + join the next** (`client.channel` exit + enter)", "2"),
            ("leave", "… of which the leave (exit, waits for the reply)", "1"),
            ("join", "… of which the join (enter, waits for the reply)", "1"),
        )
        for key, label, trips in names:
            d = s[key]
            lines.append(f"| {label} | {d['n']:,} | {_us(d['p50'])} | {_us(d['p90'])} | {_us(d['p99'])} | "
                         f"{_us(d['max'])} | {trips} |")
        ratio = s["leave_join"]["p50"] / s["switch_active"]["p50"] if s["switch_active"]["p50"] else math.inf
        lines += [
            "",
            f"Median leave+join / median `switch_active`: **{ratio:,.0f}x**. During a leave+join the "
            "app receives nothing for either group; the router keeps its one join, so nothing is missed.",
            "",
        ]
    lines += [
        f"**(b) N subscriptions to one topic on one client** (one server join), publisher at "
        f"{result['rate']:g} msgs/s of {result['payload_size']} B for {result['duration']:g} s "
        f"after {result['warmup']:g} s warm-up; CPU is the subscriber process's:",
        "",
        "| N subscribers | deliveries/s (expected) | lost | CPU load | CPU per delivery | "
        "CPU per published message | + per extra subscriber, per message |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r for r in result["rows"] if r.get("status") == "ok" and r["subscribers"] == 1), None)
    for r in result["rows"]:
        n = r["subscribers"]
        if r.get("status") != "ok":
            lines.append(f"| {n} | {status_cell(r)} | | | | | |")
            continue
        extra = "—"
        if base is not None and n > 1:
            extra = f"{(r['cpu_per_message'] - base['cpu_per_message']) / (n - 1) * 1e6:.1f} µs"
        lines.append(
            f"| {n} | {fmt_rate(r['deliveries_per_s'])} ({fmt_rate(r['expected_per_s'])}) | {r['lost']} | "
            f"{r['cpu_load']:.0%} | {r['cpu_per_delivery'] * 1e6:.1f} µs | "
            f"{r['cpu_per_message'] * 1e6:.1f} µs | {extra} |"
        )
    slope = result.get("marginal_cpu_per_message")
    if slope is not None:
        lines += ["", f"Least-squares slope of CPU per published message over N: **{slope * 1e6:.1f} µs per "
                  "extra subscriber per message** (the fan-out inside the client: one queue put and one "
                  "task wake-up per subscriber; the frame is read and decoded once)."]
    if s.get("status") == "ok":
        lines += [
            "",
            f"**(c) Memory per extra subscriber** on a joined topic ({s['extra']:,} extra subscriptions, "
            f"tracemalloc): **{s['tracemalloc_per_subscriber'] / 1024:.2f} KiB** in the library, "
            f"{s['tracemalloc_with_task_per_subscriber'] / 1024:.2f} KiB with the task holding it "
            f"(a parked task alone: {s['tracemalloc_task_only'] / 1024:.2f} KiB).",
        ]
    return lines


def _marginal_cpu(rows: list[Result]) -> float | None:
    """The least-squares slope of CPU seconds per published message against N (None if < 2 points)."""
    points = [(int(r["subscribers"]), float(r["cpu_per_message"])) for r in rows if r.get("status") == "ok"]
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    num = sum((n - mean_n) * (c - mean_c) for n, c in points)
    den = sum((n - mean_n) ** 2 for n, _ in points)
    return num / den


# -- workers -----------------------------------------------------------------------------------


def _summary(samples: list[float]) -> dict[str, Any]:
    """n, p50/p90/p99/max (nearest rank) of ``samples`` in seconds."""
    values = sorted(samples)
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}

    def rank(p: float) -> float:
        return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]

    return {"n": len(values), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": values[-1]}


async def _switch_worker(args: argparse.Namespace) -> None:
    from trio_realtime import RealtimeConfig, group_by_field, open_active_router, open_realtime

    from ._reader import API_KEY, finish

    groups = [f"g{i}" for i in range(GROUPS)]
    perf_ns = time.perf_counter_ns
    out: dict[str, Any] = {"status": "ok", "extra": args.extra}
    async with open_realtime(args.url, api_key=API_KEY, config=RealtimeConfig()) as client:
        # (a) one subscription for every group, routed by the active router.
        async with client.channel("all-groups") as sub, open_active_router(
            sub, group_of=group_by_field()
        ) as router:
            for i in range(min(1000, args.switches)):  # warm-up
                router.switch_active(groups[i % GROUPS])
            samples = []
            for i in range(args.switches):
                group = groups[i % GROUPS]
                t0 = perf_ns()
                router.switch_active(group)
                samples.append((perf_ns() - t0) / 1e9)
            out["switch_active"] = _summary(samples)
            router.switch_active(None)
            samples = []
            for i in range(args.views):
                group = groups[i % GROUPS]
                t0 = perf_ns()
                async with router.view(group):
                    samples.append((perf_ns() - t0) / 1e9)
            out["view"] = _summary(samples)

        # The channel-per-group way: leave one channel, join the next.
        leave, join, both = [], [], []
        cm = client.channel(f"group-{groups[0]}")
        await cm.__aenter__()
        try:
            for i in range(1, args.cycles + 1):
                t0 = perf_ns()
                await cm.__aexit__(None, None, None)
                t1 = perf_ns()
                cm = client.channel(f"group-{groups[i % GROUPS]}")
                await cm.__aenter__()
                t2 = perf_ns()
                leave.append((t1 - t0) / 1e9)
                join.append((t2 - t1) / 1e9)
                both.append((t2 - t0) / 1e9)
        finally:
            await cm.__aexit__(None, None, None)
        out["leave"], out["join"], out["leave_join"] = _summary(leave), _summary(join), _summary(both)

        # (c) time and memory per extra subscriber on an already joined topic.
        async with client.channel(SHARED_TOPIC):
            adds = []
            async with AsyncExitStack() as stack:
                for _ in range(args.extra):
                    t0 = perf_ns()
                    await stack.enter_async_context(client.channel(SHARED_TOPIC))
                    adds.append((perf_ns() - t0) / 1e9)
            out["add_subscriber"] = _summary(adds)
            out.update(await _extra_subscriber_memory(client, args.extra))
    finish(out)


async def _extra_subscriber_memory(client: Any, m: int) -> dict[str, float]:
    """tracemalloc of m tasks holding one more subscription each, minus m parked tasks."""
    release = trio.Event()
    count = [0]
    all_in = trio.Event()

    async def park() -> None:
        count[0] += 1
        if count[0] == m:
            all_in.set()
        await release.wait()

    async def hold() -> None:
        async with client.channel(SHARED_TOPIC):
            count[0] += 1
            if count[0] == m:
                all_in.set()
            await release.wait()

    tracemalloc.start()
    try:
        measured = {}
        for name, fn in (("parked", park), ("holding", hold)):
            count[0] = 0
            all_in = trio.Event()
            release = trio.Event()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            async with trio.open_nursery() as nursery:
                for _ in range(m):
                    nursery.start_soon(fn)
                await all_in.wait()
                gc.collect()
                measured[name] = tracemalloc.get_traced_memory()[0] - before
                release.set()
    finally:
        tracemalloc.stop()
    return {
        "tracemalloc_task_only": measured["parked"] / m,
        "tracemalloc_with_task_per_subscriber": measured["holding"] / m,
        "tracemalloc_per_subscriber": (measured["holding"] - measured["parked"]) / m,
    }


async def _subscribers_worker(args: argparse.Namespace) -> None:
    import json

    from trio_realtime import Broadcast, RealtimeConfig, open_realtime

    from ._reader import API_KEY, finish

    n, total, skip = args.subscribers, args.count, args.skip
    expected = n * total
    state = {"delivered": 0, "t0": 0.0, "cpu0": 0.0, "d0": 0, "t1": 0.0, "cpu1": 0.0, "d1": 0}
    started = [False]
    first = trio.Event()
    done = trio.Event()

    async def consume(sub: Any) -> None:
        async for event in sub:
            if type(event) is Broadcast:
                state["delivered"] += 1
                first.set()
                seq = event.payload["i"]
                if not started[0] and seq >= skip:
                    started[0] = True
                    state.update(t0=time.perf_counter(), cpu0=time.process_time(), d0=state["delivered"])
                if state["delivered"] >= expected:
                    state.update(t1=time.perf_counter(), cpu1=time.process_time(), d1=state["delivered"])
                    done.set()

    async with open_realtime(args.url, api_key=API_KEY, config=RealtimeConfig()) as client:
        async with trio.open_nursery() as nursery:
            subs = []
            for _ in range(n):
                subs.append(await nursery.start(_hold_subscription, client))
            for sub in subs:
                nursery.start_soon(consume, sub)
            print(json.dumps({"type": "ready"}), flush=True)
            with trio.move_on_after(total / args.rate + 30):  # the first message
                await first.wait()
            with trio.move_on_after(total / args.rate + STRAGGLERS):
                await done.wait()
            if not done.is_set():
                state.update(t1=time.perf_counter(), cpu1=time.process_time(), d1=state["delivered"])
            stats = client.statistics()
            if not started[0] or state["t1"] <= state["t0"]:
                finish({"status": "error", "reason": f"only {state['delivered']} of {expected} deliveries"})
            seconds = state["t1"] - state["t0"]
            deliveries = state["d1"] - state["d0"]
            cpu = state["cpu1"] - state["cpu0"]
            finish({
                "status": "ok",
                "deliveries_per_s": deliveries / seconds,
                "expected_per_s": args.rate * n,
                "lost": expected - state["delivered"],
                "dropped": stats.dropped_events,
                "server_joins": stats.channels,
                "subscriptions": stats.subscriptions,
                "cpu_load": cpu / seconds,
                "cpu_per_delivery": cpu / deliveries,
                "cpu_per_message": cpu / deliveries * n,
                "measured_seconds": seconds,
            })


async def _hold_subscription(
    client: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    async with client.channel(SHARED_TOPIC) as sub:
        task_status.started(sub)
        await trio.sleep_forever()


async def _publish_worker(args: argparse.Namespace) -> None:
    """Bare ``websockets`` publisher: pre-encoded vsn 1.0.0 pushes at a fixed rate (open loop)."""
    import asyncio

    from websockets.asyncio.client import connect

    from ._frames import client_broadcast_push, client_join_frame, payloads
    from ._reader import finish, ws_url

    topic = f"realtime:{SHARED_TOPIC}"
    frames = [client_broadcast_push(topic, "1", None, body) for body in payloads(PAYLOAD_SIZE, args.count)]
    loop = asyncio.get_running_loop()
    late = 0
    async with connect(ws_url(args.url, "1.0.0"), compression=None, max_size=None) as ws:
        await ws.send(client_join_frame("1.0.0", topic))
        await ws.recv()  # the join reply
        start = loop.time()
        for seq, frame in enumerate(frames):
            due = start + seq / args.rate
            now = loop.time()
            if now < due:
                await asyncio.sleep(due - now)
            elif now - due > 1 / args.rate:
                late += 1
            await ws.send(frame)
        await asyncio.sleep(0.2)  # let the last frames leave before the process exits
    finish({"status": "ok", "sent": len(frames), "late_sends": late})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s6_groups")
    parser.add_argument("part", choices=("switch", "subscribers", "publish"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--switches", type=int, default=COUNTS[0])
    parser.add_argument("--views", type=int, default=COUNTS[1])
    parser.add_argument("--cycles", type=int, default=COUNTS[2])
    parser.add_argument("--extra", type=int, default=COUNTS[3])
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--skip", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from urllib.parse import urlsplit

    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"refusing non-loopback URL {args.url}")
    if args.part == "publish":
        import asyncio

        asyncio.run(_publish_worker(args))
    else:
        trio.run(_switch_worker if args.part == "switch" else _subscribers_worker, args)


if __name__ == "__main__":
    main()
