"""Scenario 7: postgres_changes commit → event latency, from a real PostgreSQL.

The harness starts an embedded PostgreSQL (`open_embedded_postgres`: the machine's PostgreSQL
binaries and wal2json, `wal_level=logical`) and the reference server with `database_url`,
which captures changes by polling a wal2json slot every `postgres_poll_interval` (so a commit
waits on average half an interval for the next poll: with the default 25 ms that dominates, so
the last rate is repeated against a server polling every 2 ms, where the clients' own costs
show). Three reader processes each join a
channel with an INSERT binding on the benchmark table: our client
(`postgres_changes=[PostgresChanges(event="INSERT", table=...)]`, `async for`), the official
PyPI `realtime` client (asyncio, vsn 1.0.0, the only one it speaks) and realtime-js under Node
(vsn 2.0.0). They receive the **same inserts** concurrently (the server sends each change to the
three sockets one after the other; the join order rotates per rate). A psycopg connection in a
worker thread inserts rows at a fixed rate (open loop, autocommit: one INSERT = one
transaction); it records `time.monotonic_ns()` just before each INSERT and when its commit
returned, and each reader records arrivals on the same clock (CLOCK_MONOTONIC, shared by all
processes on Linux). Latency = arrival at the callback or `async for` minus the commit's
return, per row; a few warm-up rows before each rate are not counted.

Reader: ``python -m benchmarks.s7_postgres trio_realtime|realtime_py --url URL --table T --expect N``
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from typing import Any, Final

import trio

from ._common import Context, LineProcess, Result, fmt_ms, status_cell

NAME: Final = "postgres_changes"
TITLE: Final = "7. postgres_changes commit → event latency (p50/p99)"

#: (insert rate rows/s, rows, server poll interval in s or None for the default) per phase. The
#: last phase polls every 2 ms, so the clients' own delivery costs are not hidden by the poll.
PHASES: Final = ((100.0, 500, None), (1000.0, 3000, None), (1000.0, 3000, 0.002))
SMOKE_PHASES: Final = ((200.0, 40, None),)
#: Rows inserted (at WARM_RATE) before each phase and not counted.
WARM_ROWS: Final = 20
SMOKE_WARM_ROWS: Final = 5
WARM_RATE: Final = 100.0
READERS: Final = ("trio_realtime", "realtime_py", "realtime_js")
LABELS: Final = {
    "trio_realtime": "**trio_realtime** (`async for`)",
    "realtime_py": "official `realtime` (PyPI, asyncio)",
    "realtime_js": "official realtime-js (Node)",
}
TABLE: Final = "bench_changes"
#: A reader stops this long after its last change (it also stops once it has them all).
IDLE: Final = 2.0


async def run(ctx: Context) -> Result:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return {"status": "error", "reason": "psycopg is not installed: pip install -e '.[postgres]' "
                "(or bash scripts/bootstrap)"}
    from trio_realtime.server import EmbeddedPostgresError, open_embedded_postgres

    try:
        async with open_embedded_postgres() as pg:
            return await _run(ctx, pg)
    except EmbeddedPostgresError as exc:
        return {"status": "error", "reason": f"PostgreSQL could not be started: {exc}"}


async def _run(ctx: Context, pg: Any) -> Result:
    import psycopg

    from trio_realtime.server import ServerConfig, serve_realtime

    default_poll = ServerConfig().postgres_poll_interval
    phases = SMOKE_PHASES if ctx.smoke else PHASES
    warm = SMOKE_WARM_ROWS if ctx.smoke else WARM_ROWS
    rows: list[Result] = []
    inserts: list[Result] = []
    conn = await trio.to_thread.run_sync(functools.partial(psycopg.connect, pg.dsn, autocommit=True))
    try:
        await trio.to_thread.run_sync(
            conn.execute,
            f"create table public.{TABLE} (id int primary key, sent_ns bigint not null, body text not null)",
        )
        next_id = 1
        for index, (rate, count, poll) in enumerate(phases):
            config = ServerConfig() if poll is None else ServerConfig(postgres_poll_interval=poll)
            order = READERS[index % len(READERS):] + READERS[:index % len(READERS)]
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    functools.partial(serve_realtime, "127.0.0.1", 0, database_url=pg.dsn, config=config)
                )
                phase_rows, phase_insert = await _phase(
                    ctx, server.url, conn, order, next_id, warm, rate, count, config.postgres_poll_interval
                )
                nursery.cancel_scope.cancel()
            for r in (*phase_rows, phase_insert):
                r["poll_interval"] = config.postgres_poll_interval
            next_id += warm + count
            rows += phase_rows
            inserts.append(phase_insert)
    finally:
        await trio.to_thread.run_sync(conn.close)
    return {
        "status": "ok",
        "postgres_version": pg.version,
        "default_poll_interval": default_poll,
        "warm_rows": warm,
        "inserts": inserts,
        "rows": rows,
    }


def _reader_cmd(ctx: Context, kind: str, url: str, expect: int) -> list[str] | None:
    if kind == "realtime_js":
        return ctx.node_cmd("--task", "postgres", "--url", url, "--vsn", "2.0.0", "--table", TABLE,
                            "--expect", str(expect), "--idle", f"{IDLE:g}", "--lifetime-s", "300")
    return ctx.python_cmd("benchmarks.s7_postgres", kind, "--url", url, "--table", TABLE,
                          "--expect", str(expect))


async def _phase(
    ctx: Context, url: str, conn: Any, order: tuple[str, ...], first_id: int, warm: int,
    rate: float, count: int, poll: float,
) -> tuple[list[Result], Result]:
    """Start the readers (joined in ``order``), insert, collect; one row per reader."""
    results: dict[str, Result] = {}
    workers: dict[str, LineProcess] = {}
    expect = warm + count
    try:
        for kind in order:
            cmd = _reader_cmd(ctx, kind, url, expect)
            if cmd is None:
                results[kind] = {"status": "n/a", "reason": "Node or realtime-js is not installed "
                                 "(bash scripts/bootstrap)"}
                continue
            worker = workers[kind] = await LineProcess.start(ctx, cmd)
            try:
                with trio.fail_after(60):
                    ready = await worker.read_json()
            except (EOFError, trio.TooSlowError, ValueError) as exc:
                results[kind] = {"status": "error", "reason": f"no ready line: {exc or type(exc).__name__}"}
                continue
            if ready.get("type") != "ready":
                results[kind] = ready if ready.get("status") else {
                    "status": "error", "reason": f"unexpected line {ready}"}
        warm_log = await trio.to_thread.run_sync(_insert, conn, first_id, warm, WARM_RATE)
        log = await trio.to_thread.run_sync(_insert, conn, first_id + warm, count, rate)
        for kind, worker in workers.items():
            if kind in results:
                continue
            try:
                with trio.fail_after(IDLE + 60):
                    results[kind] = await worker.read_json()
            except (EOFError, trio.TooSlowError, ValueError) as exc:
                results[kind] = {"status": "error", "reason": str(exc) or type(exc).__name__}
    finally:
        for worker in workers.values():
            await worker.aclose()
    insert = _insert_summary(rate, count, log)
    rows = []
    for kind in READERS:
        r = results.get(kind, {"status": "error", "reason": "not run"})
        row: Result = {"reader": kind, "rate": rate, "rows": count, "join_position": order.index(kind) + 1}
        if r.get("status") == "ok":
            row.update(_latency(r, log, warm_log))
            row["version"] = r.get("version")
            row["vsn"] = r.get("vsn")
        else:
            row.update(status=r.get("status", "error"), reason=r.get("reason", ""))
        rows.append(row)
        head = f"  postgres_changes {rate:g}/s, poll {poll * 1000:g} ms, {kind}:"
        if row.get("status") == "ok":
            ctx.log(f"{head} p50 {fmt_ms(row['p50_ms'])}, p99 {fmt_ms(row['p99_ms'])}, lost {row['lost']}")
        else:
            ctx.log(f"{head} {status_cell(row)[:160]}")
    return rows, insert


def _insert(conn: Any, first_id: int, count: int, rate: float) -> dict[int, tuple[int, int]]:
    """Insert ``count`` rows at ``rate`` (open loop) in this worker thread.

    Returns id -> (monotonic ns just before the INSERT, monotonic ns when its commit returned).
    """
    out: dict[int, tuple[int, int]] = {}
    body = "x" * 64
    sql = f"insert into public.{TABLE} (id, sent_ns, body) values (%s, %s, %s)"
    mono = time.monotonic_ns
    start = time.perf_counter()
    for k in range(count):
        due = start + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        row_id = first_id + k
        sent = mono()
        conn.execute(sql, (row_id, sent, body), prepare=True)
        out[row_id] = (sent, mono())
    return out


def _insert_summary(rate: float, count: int, log: dict[int, tuple[int, int]]) -> Result:
    times = sorted(log.values())
    calls = sorted((done - sent) / 1e9 for sent, done in times)
    span = (times[-1][0] - times[0][0]) / 1e9 if len(times) > 1 else 0.0
    return {
        "rate": rate,
        "rows": count,
        "achieved_rate": (len(times) - 1) / span if span > 0 else None,
        "insert_p50_ms": _rank(calls, 50) * 1000 if calls else None,
        "insert_p99_ms": _rank(calls, 99) * 1000 if calls else None,
    }


def _rank(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def _latency(r: Result, log: dict[int, tuple[int, int]], warm_log: dict[int, tuple[int, int]]) -> Result:
    seen: set[int] = set()
    duplicates = 0
    from_commit: list[float] = []
    from_insert: list[float] = []
    for row_id, recv in zip(r["ids"], r["recv_ns"], strict=True):
        row_id = int(row_id)
        if row_id in seen:
            duplicates += 1
            continue
        seen.add(row_id)
        if row_id in log:
            sent, committed = log[row_id]
            from_commit.append((int(recv) - committed) / 1e9)
            from_insert.append((int(recv) - sent) / 1e9)
    from_commit.sort()
    from_insert.sort()
    out: Result = {
        "status": "ok",
        "received": len(from_commit),
        "lost": len(log) - len(from_commit),
        "warm_received": len(seen & warm_log.keys()),
        "duplicates": duplicates,
        "early": sum(1 for v in from_commit if v < 0),
    }
    for name, values in (("", from_commit), ("insert_", from_insert)):
        for p in (50, 90, 99):
            out[f"{name}p{p}_ms"] = _rank(values, p) * 1000 if values else None
        out[f"{name}max_ms"] = values[-1] * 1000 if values else None
    return out


def markdown(result: Result) -> list[str]:
    lines = [
        f"PostgreSQL {result['postgres_version']} (embedded); \"poll\": the server's "
        f"`postgres_poll_interval` (its default is {result['default_poll_interval'] * 1000:g} ms); "
        f"{result['warm_rows']} warm-up rows per rate not counted. \"join order\": the position in "
        "which the client joined, i.e. in which the server sends it each change.",
        "",
        "| client | vsn | poll | rate | rows | lost | p50 | p90 | **p99** | max | p50 from INSERT call | "
        "join order |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        head = f"| {LABELS[r['reader']]} |"
        poll = f"{r['poll_interval'] * 1000:g} ms"
        if r.get("status") != "ok":
            lines.append(f"{head} | {poll} | {r['rate']:g}/s | {r['rows']} | {status_cell(r)} | | | | | | |")
            continue
        lost = str(r["lost"]) + (f" (+{r['duplicates']} dup)" if r["duplicates"] else "")
        lines.append(
            f"{head} {r.get('vsn') or ''} | {poll} | {r['rate']:g}/s | {r['rows']} | {lost} | "
            f"{fmt_ms(r['p50_ms'])} | {fmt_ms(r['p90_ms'])} | **{fmt_ms(r['p99_ms'])}** | "
            f"{fmt_ms(r['max_ms'])} | {fmt_ms(r['insert_p50_ms'])} | {r['join_position']} |"
        )
    lines.append("")
    for ins in result["inserts"]:
        achieved = ins["achieved_rate"]
        head = f"* {ins['rate']:g} rows/s, poll {ins['poll_interval'] * 1000:g} ms:"
        if achieved is None:
            lines.append(f"{head} too few rows to measure the rate.")
            continue
        lines.append(f"{head} achieved {achieved:.0f} rows/s; INSERT + commit round trip p50 "
                     f"{fmt_ms(ins['insert_p50_ms'])}, p99 {fmt_ms(ins['insert_p99_ms'])}.")
    return lines


# -- readers -----------------------------------------------------------------------------------


async def _reader_trio_realtime(args: argparse.Namespace) -> None:
    from trio_realtime import PostgresChange, PostgresChanges, open_realtime

    from ._reader import API_KEY, emit, finish

    ids: list[int] = []
    recv: list[int] = []
    mono = time.monotonic_ns
    last = [0]
    binding = PostgresChanges(event="INSERT", schema="public", table=args.table)
    async with open_realtime(args.url, api_key=API_KEY) as client:
        # The block is entered once the server said "Subscribed to PostgreSQL".
        async with client.channel(f"pg-bench-{os.getpid()}", postgres_changes=[binding]) as sub:
            emit({"type": "ready"})
            async with trio.open_nursery() as nursery:

                async def idle_watch() -> None:
                    while True:
                        await trio.sleep(0.1)
                        if ids and mono() - last[0] > IDLE * 1e9:
                            nursery.cancel_scope.cancel()

                async def consume() -> None:
                    async for event in sub:
                        now = mono()
                        if type(event) is PostgresChange:
                            recv.append(now)
                            ids.append(event.record["id"])
                            last[0] = now
                            if len(ids) >= args.expect:
                                nursery.cancel_scope.cancel()

                nursery.start_soon(idle_watch)
                nursery.start_soon(consume)
    finish({"kind": "trio_realtime", "status": "ok", "version": _version("trio_realtime"), "vsn": "2.0.0",
            "ids": ids, "recv_ns": recv})


async def _reader_realtime_py(args: argparse.Namespace) -> None:
    import asyncio

    from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

    from ._reader import API_KEY, emit, finish

    ids: list[int] = []
    recv: list[int] = []
    mono = time.monotonic_ns
    last = [0]
    done = asyncio.Event()
    subscribed = asyncio.Event()
    system_ok = asyncio.Event()
    client = AsyncRealtimeClient(args.url, token=API_KEY)
    channel = client.channel(f"pg-bench-{os.getpid()}")

    def on_change(payload: Any) -> None:
        now = mono()
        recv.append(now)
        ids.append(payload["data"]["record"]["id"])
        last[0] = now
        if len(ids) >= args.expect:
            done.set()

    def on_system(payload: Any) -> None:
        # A dict in some versions of the library, a pydantic model in others.
        get = payload.get if isinstance(payload, dict) else functools.partial(getattr, payload)
        if get("extension", None) == "postgres_changes" and get("status", None) == "ok":
            system_ok.set()

    def on_status(status: Any, error: Exception | None) -> None:
        name = str(getattr(status, "value", status))
        if name == "SUBSCRIBED":
            subscribed.set()
        elif name in ("CHANNEL_ERROR", "TIMED_OUT"):
            finish({"kind": "realtime_py", "status": "error", "reason": f"{name}: {error}"})

    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert, on_change, table=args.table, schema="public"
    )
    channel.on_system(on_system)
    await channel.subscribe(on_status)
    await subscribed.wait()
    await system_ok.wait()
    emit({"type": "ready"})

    async def idle_watch() -> None:
        while not done.is_set():
            await asyncio.sleep(0.1)
            if ids and mono() - last[0] > IDLE * 1e9:
                done.set()

    watcher = asyncio.create_task(idle_watch())
    await done.wait()
    watcher.cancel()
    finish({"kind": "realtime_py", "status": "ok", "version": _version("realtime"), "vsn": "1.0.0",
            "ids": ids, "recv_ns": recv})


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s7_postgres")
    parser.add_argument("kind", choices=("trio_realtime", "realtime_py"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", default=TABLE)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--lifetime-s", type=float, default=300.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from urllib.parse import urlsplit

    from ._reader import finish

    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"refusing non-loopback URL {args.url}")
    if args.kind == "trio_realtime":
        try:
            trio.run(functools.partial(_with_lifetime, _reader_trio_realtime, args))
        except Exception as exc:
            finish({"kind": args.kind, "status": "error", "reason": f"{type(exc).__name__}: {exc}"})
    else:
        try:
            import realtime  # noqa: F401
        except ImportError:
            finish({"kind": args.kind, "status": "n/a",
                    "reason": "the PyPI realtime package is not installed"})
        import asyncio

        async def bounded() -> None:
            await asyncio.wait_for(_reader_realtime_py(args), args.lifetime_s)

        try:
            asyncio.run(bounded())
        except Exception as exc:
            finish({"kind": args.kind, "status": "error", "reason": f"{type(exc).__name__}: {exc}"})
    finish({"kind": args.kind, "status": "error", "reason": "the reader ended without a result"})


async def _with_lifetime(fn: Any, args: argparse.Namespace) -> None:
    with trio.move_on_after(args.lifetime_s):
        await fn(args)


if __name__ == "__main__":
    main()
